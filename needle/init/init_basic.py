"""Tensor creators. Random ones draw from numpy's global RNG (``np.random.seed`` applies).

Every creator takes ``*shape`` (or one tuple), and the keywords ``device`` (default
``needle.default_device()``), ``dtype`` (default ``"float32"``; ``"float64"`` where the device
holds it, with values drawn and scaled in float64) and ``requires_grad`` (default False).
"""
import numpy as np

import needle as ndl
from ..backend_ndarray import NDArray, default_device

__all__ = ["rand", "randn", "constant", "ones", "zeros", "randb", "one_hot", "zeros_like",
           "ones_like"]


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def _dtype(dtype):
    # "bool" masks (the course's randb) are stored as float32 zeros and ones
    return "float32" if dtype in ("bool", bool, np.bool_) else dtype


def _draw_dtype(dtype):
    """Random values are drawn and scaled in float64 for float64 tensors, else in float32."""
    return "float64" if _dtype(dtype) in ("float64", np.float64) else "float32"


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False):
    """Uniform samples in [low, high)."""
    device = default_device() if device is None else device
    array = device.rand(*_shape(shape), dtype=_draw_dtype(dtype)) * (high - low) + low
    return ndl.Tensor(array, device=device, dtype=_dtype(dtype), requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False):
    """Normal samples with the given mean and standard deviation."""
    device = default_device() if device is None else device
    array = device.randn(*_shape(shape), dtype=_draw_dtype(dtype)) * std + mean
    return ndl.Tensor(array, device=device, dtype=_dtype(dtype), requires_grad=requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False):
    """A tensor filled with ``c``."""
    device = default_device() if device is None else device
    array = device.full(_shape(shape), c, dtype=_dtype(dtype))
    return ndl.Tensor(array, device=device, dtype=_dtype(dtype), requires_grad=requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="float32", requires_grad=False):
    """Bernoulli(p) samples as 0.0 / 1.0 (1 with probability ``p``)."""
    device = default_device() if device is None else device
    array = device.rand(*_shape(shape), dtype=_draw_dtype(dtype)) <= p
    return ndl.Tensor(array, device=device, dtype=_dtype(dtype), requires_grad=requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False):
    """Rows of the n x n identity picked by the integer labels ``i`` (Tensor, NDArray, numpy
    or list): shape ``i.shape + (n,)``."""
    device = default_device() if device is None else device
    if isinstance(i, (ndl.Tensor, NDArray)):
        i = i.numpy()
    labels = np.asarray(i)
    if labels.dtype.kind == "f":
        if not np.all(labels == np.rint(labels)):
            raise ValueError("one_hot: labels must be whole numbers")
    return ndl.Tensor(device.one_hot(n, labels.astype("int32"), dtype=_dtype(dtype)),
                      device=device, requires_grad=requires_grad)


def zeros_like(array, *, device=None, requires_grad=False):
    device = device if device else array.device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False):
    device = device if device else array.device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)
