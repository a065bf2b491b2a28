"""The Python side of the int8 kernels: weight packing and the integer GEMM call.

``qgemm`` runs on the device of its input. Every backend module is expected to provide
``qpack_weights`` and ``qgemm`` (docs/ARCHITECTURE.md, "Integer GEMM backend call"); when a
backend lacks them, or ``NEEDLE_QUANT_REFERENCE=1`` is set, the numpy reference
(``reference.qgemm_reference``) computes the same integers on the host instead (with a
one-time warning for a missing kernel).
"""
import os
import warnings

import numpy as np

from ..backend_ndarray import NDArray
from . import reference as R

__all__ = ["PackedWeights", "qgemm", "has_native_qgemm"]

_warned = set()


def _force_reference():
    return os.environ.get("NEEDLE_QUANT_REFERENCE", "") not in ("", "0")


def has_native_qgemm(device):
    """True when ``device``'s backend module provides qpack_weights and qgemm."""
    mod = getattr(device, "mod", None)
    return mod is not None and hasattr(mod, "qgemm") and hasattr(mod, "qpack_weights")


def _use_backend(device):
    if _force_reference():
        return False
    if has_native_qgemm(device):
        return True
    if device.name not in _warned:
        _warned.add(device.name)
        warnings.warn(f"the {device.name} backend has no qgemm kernel; needle.quant falls back "
                      f"to the numpy reference (slow, same results)", RuntimeWarning,
                      stacklevel=3)
    return False


class PackedWeights:
    """int8 weights [N, K] (output channels x reduction) plus their per-device packed form.

    w: NDArray int8 [N, K]. ``colsum`` (int32 [N]) is computed once; ``packed(device)`` calls
    the backend's ``qpack_weights`` the first time a device asks.
    """

    def __init__(self, w):
        if w.dtype != "int8" or w.ndim != 2:
            raise TypeError(f"PackedWeights needs int8 [N, K] weights, got {w.dtype} {w.shape}")
        self.w = w.compact()
        self.n, self.k = w.shape
        self.w_numpy = self.w.numpy()
        self.colsum = R.weight_colsum(self.w_numpy)
        self._packed = {}
        self._params = {}

    def packed(self, device):
        if device not in self._packed:
            w = self.w.to(device).compact()
            self._packed[device] = device.qpack_weights(w._handle, self.n, self.k)
        return self._packed[device]

    def params(self, device, **arrays):
        """int32 NDArrays [N] of the per-channel vectors on ``device``. They are cached under
        their values (dtype, shape and bytes), never under their names alone, so a call with
        another bias, multiplier or shift always gets its own vectors."""
        out = {}
        for name, a in arrays.items():
            v = _channel_vector(name, a, self.n)
            key = (device, name, v.tobytes())
            if key not in self._params:
                if len(self._params) >= _MAX_CACHED_PARAMS:
                    self._params.pop(next(iter(self._params)))  # oldest first
                self._params[key] = NDArray(v, device=device, dtype="int32")
            out[name] = self._params[key]
        return out


#: per PackedWeights: enough for a layer's few parameter sets, bounded for callers that vary them
_MAX_CACHED_PARAMS = 64


def _channel_vector(name, a, n):
    """``a`` as a C-contiguous int32 numpy vector of length n; raises on other lengths, on
    values outside int32 and on non-integer input (instead of wrapping or truncating)."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"qgemm: {name} must hold integers, got dtype {arr.dtype}")
    if arr.size != n:
        raise ValueError(f"qgemm: {name} has {arr.size} values, expected n = {n}")
    if arr.size and arr.dtype != np.int32:
        info = np.iinfo(np.int32)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"qgemm: {name} values [{lo}, {hi}] are outside the int32 range")
    return np.ascontiguousarray(arr.reshape(n), dtype=np.int32)


def qgemm(a, weights, a_zero_point, bias, multiplier, shift, out_zero_point=0, relu=False,
          out_dtype="uint8"):
    """``out[M, N]`` = the integer GEMM of activations ``a`` with ``weights``.

    a: NDArray uint8/int8 [M, K]; weights: PackedWeights [N, K]; bias, multiplier, shift:
    int32 numpy arrays [N] (multiplier/shift unused for int32 output); out_dtype
    "uint8" | "int8" | "int32". See ``reference.qgemm_reference`` for the arithmetic.
    Returns an NDArray [M, N] of out_dtype on a's device.
    """
    if a.ndim != 2 or a.shape[1] != weights.k:
        raise ValueError(f"qgemm: activations {a.shape} do not match weights "
                         f"[{weights.n}, {weights.k}]")
    m, n, k = a.shape[0], weights.n, weights.k
    device = a.device
    if multiplier is None:
        multiplier = np.zeros(n, np.int32)
        shift = np.zeros(n, np.int32)
    bias = np.zeros(n, np.int32) if bias is None else _channel_vector("bias", bias, n)
    multiplier = _channel_vector("multiplier", multiplier, n)
    shift = _channel_vector("shift", shift, n)
    if _use_backend(device):
        a = a.compact()
        out = NDArray.make((m, n), device=device, dtype=out_dtype)
        p = weights.params(device, colsum=weights.colsum, bias=bias, multiplier=multiplier,
                           shift=shift)
        device.qgemm(a._handle, weights.packed(device), out._handle, m, n, k,
                     int(a_zero_point), p["colsum"]._handle, p["bias"]._handle,
                     p["multiplier"]._handle, p["shift"]._handle, int(out_zero_point),
                     bool(relu))
        return out
    out = R.qgemm_reference(a.numpy(), weights.w_numpy, int(a_zero_point), bias, multiplier,
                            shift, int(out_zero_point), bool(relu), out_dtype,
                            colsum=weights.colsum)
    return NDArray(out, device=device, dtype=out_dtype)
