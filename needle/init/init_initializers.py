"""Weight initializers (Glorot/Xavier and He/Kaiming, uniform and normal).

``fan_in``/``fan_out`` set the scale; the shape is ``(fan_in, fan_out)`` unless ``shape=`` is
given (convolution weights pass ``shape=(K, K, Cin, Cout)`` with ``fan_in = Cin * K * K``).
Extra keywords (``device``, ``dtype``, ``requires_grad``) go to ``rand``/``randn``.
"""
import math

from .init_basic import rand, randn

__all__ = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]

_GAINS = {"relu": math.sqrt(2.0), "linear": 1.0, "tanh": 5.0 / 3.0}


def _gain(nonlinearity):
    if nonlinearity not in _GAINS:
        raise ValueError(f"unsupported nonlinearity {nonlinearity!r}; expected one of {sorted(_GAINS)}")
    return _GAINS[nonlinearity]


def xavier_uniform(fan_in, fan_out, gain=1.0, shape=None, **kwargs):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    shape = (fan_in, fan_out) if shape is None else shape
    return rand(*shape, low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, shape=None, **kwargs):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    shape = (fan_in, fan_out) if shape is None else shape
    return randn(*shape, mean=0.0, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """U(-b, b) with b = gain * sqrt(3 / fan_in) (gain sqrt(2) for relu)."""
    bound = _gain(nonlinearity) * math.sqrt(3.0 / fan_in)
    shape = (fan_in, fan_out) if shape is None else shape
    return rand(*shape, low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """N(0, std^2) with std = gain / sqrt(fan_in)."""
    std = _gain(nonlinearity) / math.sqrt(fan_in)
    shape = (fan_in, fan_out) if shape is None else shape
    return randn(*shape, mean=0.0, std=std, **kwargs)
