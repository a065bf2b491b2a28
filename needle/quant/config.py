"""QConfig: what to quantize how (observers, granularity, bit widths, dtypes)."""
import json
from dataclasses import asdict, dataclass, field, fields

from . import reference as R

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
GRANULARITIES = ("per_channel", "per_tensor")
ACTIVATION_DTYPES = ("uint8", "int8")


@dataclass(frozen=True)
class QConfig:
    """Quantization settings.

    Weights are symmetric with zero point 0 in the reduced signed range
    [-(2^(b-1) - 1), 2^(b-1) - 1] (int8: [-127, 127]), ``weight_bits`` b in 2..8, stored as
    int8, one scale per output channel (``"per_channel"``) or one per layer (``"per_tensor"``).
    Activations are affine per tensor in ``activation_dtype`` (uint8 [0, 255] or int8
    [-128, 127]), using ``activation_bits`` (2..8, default 8) of that type: uint8 4-bit is
    [0, 15], int8 4-bit [-8, 7]. ``activation_observer`` / ``weight_observer`` pick the range estimator
    ("minmax", "moving_average", "percentile", "mse"); ``observer_args`` passes keyword
    arguments to the activation observer (e.g. ``{"percentile": 99.9}``).
    """

    activation_observer: str = "minmax"
    weight_observer: str = "minmax"
    weight_granularity: str = "per_channel"
    weight_bits: int = 8
    activation_dtype: str = "uint8"
    observer_args: dict = field(default_factory=dict)
    activation_bits: int = 8

    def __post_init__(self):
        for name, value, allowed in (
                ("activation_observer", self.activation_observer, OBSERVERS),
                ("weight_observer", self.weight_observer, OBSERVERS),
                ("weight_granularity", self.weight_granularity, GRANULARITIES),
                ("activation_dtype", self.activation_dtype, ACTIVATION_DTYPES)):
            if value not in allowed:
                raise ValueError(f"QConfig.{name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.weight_bits, int) or not 2 <= self.weight_bits <= 8:
            raise ValueError(f"QConfig.weight_bits must be an int in [2, 8], got "
                             f"{self.weight_bits!r}")
        if not isinstance(self.activation_bits, int) or not 2 <= self.activation_bits <= 8:
            raise ValueError(f"QConfig.activation_bits must be an int in [2, 8], got "
                             f"{self.activation_bits!r}")
        if not isinstance(self.observer_args, dict):
            raise TypeError(f"QConfig.observer_args must be a dict, got "
                            f"{type(self.observer_args).__name__}")
        self.make_activation_observer()  # rejects observer_args the observer does not take

    # ranges ----------------------------------------------------------------------------------
    def weight_qrange(self):
        """(qmin, qmax) of the weights: symmetric reduced signed range of weight_bits."""
        return R.qrange("int8", self.weight_bits, reduced_range=True)

    def activation_qrange(self):
        """(qmin, qmax) of the activations: activation_bits of activation_dtype."""
        return R.qrange(self.activation_dtype, self.activation_bits)

    def activation_clamp_bits(self):
        """activation_bits when below 8 (the integer modules then clamp to that range), else
        None (the dtype's own range)."""
        return None if self.activation_bits == 8 else self.activation_bits

    # observers -------------------------------------------------------------------------------
    def make_activation_observer(self):
        from .observers import make_observer
        return make_observer(self.activation_observer, dtype=self.activation_dtype,
                             scheme="affine", bits=self.activation_bits, **self.observer_args)

    def make_weight_observer(self, axis=None):
        """Observer for a weight whose output channels run along ``axis``."""
        from .observers import make_observer
        axis = axis if self.weight_granularity == "per_channel" else None
        return make_observer(self.weight_observer, dtype="int8", scheme="symmetric", axis=axis,
                             bits=self.weight_bits, reduced_range=True)

    # serialization ---------------------------------------------------------------------------
    def to_dict(self):
        return asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown QConfig fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))
