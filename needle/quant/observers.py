"""Observers: estimate the real range [lo, hi] of a tensor and turn it into qparams.

Every observer is fed float arrays with ``observe(x)`` (a needle Tensor, NDArray or numpy
array) and answers ``range()`` -> (lo, hi) and ``qparams()`` -> (scale, zero_point) through
:func:`needle.quant.reference.choose_qparams`. With ``axis`` set, statistics are kept per channel
along that axis (lo, hi and the qparams are 1-D arrays), otherwise per tensor.

* MinMaxObserver               the running minimum and maximum
* MovingAverageMinMaxObserver  exponential moving averages of each batch's min and max
* PercentileObserver           the p-th and (100 - p)-th percentiles of a sample of the values
* MSEObserver                  the clipping range (a shrunk min/max) minimizing the mean squared
                               quantization error of a sample of the values
"""
import numpy as np

from . import reference as R

__all__ = ["Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
           "MSEObserver", "make_observer"]


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


class Observer:
    """Base class: holds the quantization target and turns a range into qparams.

    dtype, scheme, bits, reduced_range: the target (see ``reference.choose_qparams``).
    axis: channel axis for per-channel statistics, or None for per tensor.
    """

    def __init__(self, dtype="uint8", scheme="affine", axis=None, bits=None,
                 reduced_range=False):
        R.qrange(dtype, bits, reduced_range)  # validates
        if scheme not in ("affine", "symmetric"):
            raise ValueError(f"scheme must be 'affine' or 'symmetric', got {scheme!r}")
        self.dtype, self.scheme, self.axis = dtype, scheme, axis
        self.bits, self.reduced_range = bits, reduced_range
        self.num_batches = 0

    def observe(self, x):
        """Update the statistics with a batch ``x`` (float data of any shape)."""
        x = _to_numpy(x)
        if self.axis is not None and not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{type(self).__name__}: axis {self.axis} out of range for shape "
                             f"{x.shape}")
        self._observe(x)
        if x.size:  # a batch without values is not counted
            self.num_batches += 1

    def _observe(self, x):
        raise NotImplementedError

    def range(self):
        """(lo, hi): floats per tensor, 1-D float arrays per channel."""
        if self.num_batches == 0:
            raise RuntimeError(f"{type(self).__name__} has observed no data; run calibration "
                               f"first")
        lo, hi = self._range()
        if self.axis is None:
            return float(lo[0]), float(hi[0])
        return lo, hi

    def _range(self):
        raise NotImplementedError

    def qparams(self):
        """(scale float32, zero_point int32) for the observed range."""
        lo, hi = self.range()
        return R.choose_qparams(lo, hi, self.scheme, self.dtype, self.bits, self.reduced_range)

    def __repr__(self):
        where = "per tensor" if self.axis is None else f"axis={self.axis}"
        return f"{type(self).__name__}({self.dtype}, {self.scheme}, {where})"


class MinMaxObserver(Observer):
    """lo = the smallest value seen, hi = the largest (per channel with ``axis``)."""

    def _observe(self, x):
        """Widen the running range with batch ``x`` and return the batch as rows x channels.

        x: float32 numpy array of any shape; ``self.axis`` (None, or an in-range axis, possibly
        negative) says which axis holds the channels. ``self.lo`` / ``self.hi`` are float32
        arrays of shape (C,): C = x.shape[axis], or 1 per tensor; the first counted batch
        (``self.num_batches == 0``) sets them, later ones only widen them. Returns x as a
        float32 [rows, C] array whose column c holds every value of channel c (rows in any
        order), or None (and
        changes nothing) when x holds no values.
        """
        ### BEGIN SOLUTION
        if x.size == 0:
            return None
        if self.axis is None:
            x2d = x.reshape(-1, 1)
        else:
            x2d = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis])
        lo, hi = x2d.min(axis=0), x2d.max(axis=0)
        if self.num_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        return x2d
        ### END SOLUTION

    def _range(self):
        return self.lo, self.hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """lo <- lo + c * (batch_min - lo) (same for hi); the first batch sets lo and hi."""

    def __init__(self, *args, averaging_constant=0.01, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _observe(self, x):
        # this batch's own range, from a fresh min/max observer with the same channel axis
        batch = MinMaxObserver(axis=self.axis)
        x2d = batch._observe(x)
        if x2d is None:
            return None
        if self.num_batches == 0:
            self.lo, self.hi = batch.lo, batch.hi
        else:
            c = self.averaging_constant
            self.lo = self.lo + c * (batch.lo - self.lo)
            self.hi = self.hi + c * (batch.hi - self.hi)
        return x2d


class _SampleObserver(MinMaxObserver):
    """Keeps min/max plus a random sample (at most ``max_samples`` rows per batch)."""

    def __init__(self, *args, max_samples=4096, seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_samples = max_samples
        self._rng = np.random.default_rng(seed)
        self._samples = []

    def _observe(self, x):
        x2d = super()._observe(x)
        if x2d is None:
            return None
        if x2d.shape[0] > self.max_samples:
            idx = self._rng.choice(x2d.shape[0], self.max_samples, replace=False)
            x2d = x2d[idx]
        self._samples.append(np.array(x2d, dtype=np.float32))
        return x2d

    def samples(self):
        """Every sampled row so far: float32 [rows, C]."""
        return np.concatenate(self._samples, axis=0)


class PercentileObserver(_SampleObserver):
    """lo, hi = the (100 - p)-th and p-th percentiles of the sampled values (default 99.99)."""

    def __init__(self, *args, percentile=99.99, **kwargs):
        super().__init__(*args, **kwargs)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _range(self):
        s = self.samples()
        lo = np.percentile(s, 100 - self.percentile, axis=0)
        hi = np.percentile(s, self.percentile, axis=0)
        return lo.astype(np.float32), hi.astype(np.float32)


class MSEObserver(_SampleObserver):
    """Search the clipping range minimizing the quantization MSE.

    Candidates are ``[a * lo, a * hi]`` for ``num_candidates`` values of a in
    [min_fraction, 1] (lo, hi the observed min/max); for each channel the candidate whose
    fake-quantized sample has the smallest mean squared error against the sample wins.
    """

    def __init__(self, *args, num_candidates=50, min_fraction=0.2, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_candidates = num_candidates
        self.min_fraction = min_fraction

    def _range(self):
        """(lo, hi): float64 arrays of shape (C,), the best candidate range of each channel."""
        ### BEGIN SOLUTION
        s = self.samples()
        lo_all, hi_all = self.lo.astype(np.float64), self.hi.astype(np.float64)
        best_err = np.full(s.shape[1], np.inf)
        best_lo, best_hi = lo_all.copy(), hi_all.copy()
        for a in np.linspace(self.min_fraction, 1.0, self.num_candidates):
            lo, hi = lo_all * a, hi_all * a
            scale, zp = R.choose_qparams(lo, hi, self.scheme, self.dtype, self.bits,
                                         self.reduced_range)
            deq = R.fake_quantize(s, scale, zp, self.dtype, axis=1, bits=self.bits,
                                  reduced_range=self.reduced_range)
            err = ((deq.astype(np.float64) - s) ** 2).mean(axis=0)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_lo = np.where(better, lo, best_lo)
            best_hi = np.where(better, hi, best_hi)
        return best_lo, best_hi
        ### END SOLUTION


_REGISTRY = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
             "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(name, **kwargs):
    """An observer by name ("minmax", "moving_average", "percentile", "mse")."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown observer {name!r}; choose one of {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"observer {name!r} does not accept these arguments: {e}") from None
