"""Dynamic int8 matrices: weights per-channel int8 prepared once, activations quantized on
every call from the range they hold (no calibration), integer GEMM through ``kernels.qgemm``.

    m = DynamicInt8Matrix.from_float(w)      # w float32 [N, K]
    y = m.matmul(x)                          # x float32 [M, K] -> float32 [M, N]

Bit for bit ``reference.dynamic_linear_reference``: ``matmul`` is that function itself, with
the kernel's integer GEMM (whose int32 accumulator is exact) passed in as its ``gemm``.
"""
import copy

import numpy as np

from ..backend_ndarray import NDArray, default_device
from ..nn.nn_basic import Module
from . import kernels
from . import reference as R

__all__ = ["FloatMatrix", "DynamicInt8Matrix", "DynamicQuantizedLinear", "quantize_dynamic"]


class FloatMatrix:
    """The float32 baseline with the same interface: ``matmul(x) = x @ W^T`` in numpy."""

    kind = "float32"

    def __init__(self, w):
        self.w = np.ascontiguousarray(w, np.float32)
        self.wt = np.ascontiguousarray(self.w.T)
        self.n, self.k = self.w.shape

    @property
    def nbytes(self):
        return self.w.nbytes

    def matmul(self, x):
        return np.asarray(x, np.float32) @ self.wt


class DynamicInt8Matrix:
    """W [N, K] as int8 per output channel (``w_q`` int8 [N, K], ``scale`` float32 [N])."""

    kind = "int8-dynamic"

    def __init__(self, w_q, scale, device=None):
        self.w_q = np.ascontiguousarray(w_q, np.int8)
        self.scale = np.ascontiguousarray(scale, np.float32)
        self.n, self.k = self.w_q.shape
        if self.scale.shape != (self.n,):
            raise ValueError(f"dynamic int8: scale must be [{self.n}], got {self.scale.shape}")
        self.device = default_device() if device is None else device
        self.packed = kernels.PackedWeights(NDArray(self.w_q, device=self.device, dtype="int8"))

    @classmethod
    def from_float(cls, w, device=None):
        w = w.numpy() if hasattr(w, "numpy") else np.asarray(w)
        return cls(*R.dynamic_weight(w), device=device)

    @property
    def nbytes(self):
        return self.w_q.nbytes + self.scale.nbytes

    def matmul(self, x):
        """float32 numpy [M, N] of x float [M, K]."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.k:
            raise ValueError(f"dynamic int8 matmul: x must be [M, {self.k}], got {x.shape}")
        return R.dynamic_linear_reference(x, self.w_q, self.scale, gemm=self._kernel_gemm)

    def _kernel_gemm(self, xq, zero_point):
        """int32 [M, N] accumulator of uint8 codes xq [M, K] through ``kernels.qgemm``."""
        return kernels.qgemm(NDArray(xq, device=self.device, dtype="uint8"), self.packed,
                             int(zero_point), None, None, None, out_dtype="int32").numpy()


class DynamicQuantizedLinear(Module):
    """Dynamic int8 twin of an ``nn.Linear`` (inference only).

    forward(x Tensor (..., in_features)) -> Tensor (..., out_features) float32 on x's device:
    the weight is int8 per output channel (prepared once), x is quantized per call over its
    range, then ``DynamicInt8Matrix.matmul`` plus the float bias.
    """

    def __init__(self, linear, device=None):
        super().__init__()
        w = linear.weight.numpy()                        # (in, out)
        self.in_features, self.out_features = w.shape
        self.matrix = DynamicInt8Matrix.from_float(w.T, device=device)
        self.bias = (np.zeros(self.out_features, np.float32) if linear.bias is None
                     else linear.bias.numpy().reshape(-1).astype(np.float32))

    def forward(self, x):
        from ..autograd import Tensor
        a = x.numpy() if hasattr(x, "numpy") else np.asarray(x, np.float32)
        if a.shape[-1] != self.in_features:
            raise ValueError(f"DynamicQuantizedLinear expects inputs with last dimension "
                             f"{self.in_features}, got shape {a.shape}")
        y = self.matrix.matmul(a.reshape(-1, self.in_features)) + self.bias
        y = y.reshape(a.shape[:-1] + (self.out_features,))
        return Tensor(y, device=getattr(x, "device", None), requires_grad=False)

    def __repr__(self):
        return f"DynamicQuantizedLinear({self.in_features}, {self.out_features})"


def quantize_dynamic(model, device=None):
    """A copy of ``model`` whose every ``nn.Linear`` is a :class:`DynamicQuantizedLinear`
    (inference only): the Linears of an MLP, and the q/k/v/out projections of
    ``nn.AttentionLayer`` and ``nn.TransformerLayer``, as PyTorch's ``quantize_dynamic`` does.

    Everything else (LayerNorm, the attention softmax, embeddings) stays float32 and is shared
    with ``model``, which is left unchanged. The copy is in eval mode.
    """
    from ..nn.nn_basic import Linear
    if not isinstance(model, Module):
        raise TypeError(f"quantize_dynamic needs a needle Module, got {type(model).__name__}")

    def convert(value):
        if isinstance(value, Linear):
            return DynamicQuantizedLinear(value, device=device)
        if isinstance(value, Module):
            twin = copy.copy(value)
            twin.__dict__ = {k: convert(v) for k, v in value.__dict__.items()}
            return twin
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v) for v in value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(model).eval()
