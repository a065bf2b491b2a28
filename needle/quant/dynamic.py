"""Dynamic int8 matrices: weights per-channel int8 prepared once, activations quantized on
every call from the range they hold (no calibration), integer GEMM through ``kernels.qgemm``.

    m = DynamicInt8Matrix.from_float(w)      # w float32 [N, K]
    y = m.matmul(x)                          # x float32 [M, K] -> float32 [M, N]

Bit for bit ``reference.dynamic_linear_reference``: ``matmul`` is that function itself, with
the kernel's integer GEMM (whose int32 accumulator is exact) passed in as its ``gemm``.

``quantize_dynamic(model)`` puts these matrices into a copy of a model: every ``nn.Linear``
becomes a :class:`DynamicQuantizedLinear`, every ``nn.LSTM`` a :class:`DynamicQuantizedLSTM`
and every bare ``nn.LSTMCell`` a :class:`DynamicQuantizedLSTMCell` (W_ih and W_hh int8, the
biases and the gate math float32, the loop of ``needle.quant.recurrent``).
"""
import copy

import numpy as np

from ..backend_ndarray import NDArray, default_device
from ..nn.nn_basic import Module
from . import kernels
from . import reference as R
from .recurrent import lstm_cell_arrays, lstm_layer_inference

__all__ = ["FloatMatrix", "DynamicInt8Matrix", "DynamicQuantizedLinear", "DynamicQuantizedLSTMCell",
           "DynamicQuantizedLSTM", "quantize_dynamic"]


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


def _array(x):
    """float32 numpy of a Tensor or an array."""
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float32)


def _states(h, shape, owner):
    """(h0, c0) float32 numpy of ``shape`` from None or a pair (entries None mean zeros)."""
    if h is None:
        h = (None, None)
    if not isinstance(h, (tuple, list)) or len(h) != 2:
        raise ValueError(f"{owner}: h must be None or a pair (h0, c0), got {type(h).__name__}")
    out = []
    for name, s in zip(("h0", "c0"), h):
        a = np.zeros(shape, np.float32) if s is None else _array(s)
        if a.shape != shape:
            raise ValueError(f"{owner}: {name} must have shape {shape}, got {a.shape}")
        out.append(a)
    return out


def _tensor(a, like):
    from ..autograd import Tensor
    return Tensor(a, device=getattr(like, "device", None), requires_grad=False)


class DynamicQuantizedLSTMCell(Module):
    """Dynamic int8 twin of an ``nn.LSTMCell`` (inference only).

    ``w_ih`` [4H, I] and ``w_hh`` [4H, H] are :class:`DynamicInt8Matrix` (prepared once),
    ``bias`` float32 [4H] is bias_ih + bias_hh (zeros without bias); gates i, f, g, o.
    forward(X Tensor (bs, input_size), h=None or (h0, c0) each (bs, hidden_size))
    -> (h', c') float32 Tensors (bs, hidden_size) on X's device.
    """

    def __init__(self, cell, device=None):
        super().__init__()
        w_ih, w_hh, self.bias = lstm_cell_arrays(cell)
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.w_ih = DynamicInt8Matrix.from_float(w_ih, device=device)
        self.w_hh = DynamicInt8Matrix.from_float(w_hh, device=device)

    def run(self, X, h, c):
        """X float32 numpy (T, bs, I), h, c (bs, H) -> (out (T, bs, H), h_T, c_T)."""
        return lstm_layer_inference(X, h, c, self.w_ih, self.w_hh, self.bias)

    def forward(self, X, h=None):
        x = _array(X)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"DynamicQuantizedLSTMCell input must have shape "
                             f"(bs, {self.input_size}), got {x.shape}")
        h0, c0 = _states(h, (x.shape[0], self.hidden_size), "DynamicQuantizedLSTMCell")
        _, h1, c1 = self.run(x[None], h0, c0)
        return _tensor(h1, X), _tensor(c1, X)

    def __repr__(self):
        return f"DynamicQuantizedLSTMCell({self.input_size}, {self.hidden_size})"


class DynamicQuantizedLSTM(Module):
    """Dynamic int8 twin of an ``nn.LSTM`` (inference only): ``lstm_cells[k]`` are
    :class:`DynamicQuantizedLSTMCell`, one per layer.

    forward(X Tensor (seq_len, bs, input_size), h=None or (h0, c0) each (num_layers, bs,
    hidden_size)) -> (output (seq_len, bs, hidden_size), (h_n, c_n) each (num_layers, bs,
    hidden_size)), float32 Tensors on X's device, like ``nn.LSTM``.
    """

    def __init__(self, lstm, device=None):
        super().__init__()
        self.input_size, self.hidden_size = lstm.input_size, lstm.hidden_size
        self.num_layers = lstm.num_layers
        self.lstm_cells = [DynamicQuantizedLSTMCell(c, device=device) for c in lstm.lstm_cells]

    def forward(self, X, h=None):
        x = _array(X)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"DynamicQuantizedLSTM input must have shape "
                             f"(seq_len, bs, {self.input_size}), got {x.shape}")
        h0, c0 = _states(h, (self.num_layers, x.shape[1], self.hidden_size),
                         "DynamicQuantizedLSTM")
        hs, cs = [], []
        for k, cell in enumerate(self.lstm_cells):
            x, h_k, c_k = cell.run(x, h0[k], c0[k])
            hs.append(h_k)
            cs.append(c_k)
        return _tensor(x, X), (_tensor(np.stack(hs), X), _tensor(np.stack(cs), X))

    def __repr__(self):
        return (f"DynamicQuantizedLSTM({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers})")


def quantize_dynamic(model, device=None):
    """A copy of ``model`` with dynamic int8 matrices (inference only), as PyTorch's
    ``quantize_dynamic`` does: every ``nn.Linear`` becomes a :class:`DynamicQuantizedLinear`
    (the Linears of an MLP, the q/k/v/out projections of ``nn.AttentionLayer`` and
    ``nn.TransformerLayer``), every ``nn.LSTM`` a :class:`DynamicQuantizedLSTM` and every
    bare ``nn.LSTMCell`` a :class:`DynamicQuantizedLSTMCell`. An LSTM ``LanguageModel`` so
    converted gives the logits of ``quantize_lm(model, weights="int8")`` bit for bit.

    Everything else (LayerNorm, the attention softmax, embeddings, ``nn.RNN``) stays float32
    and is shared with ``model``, which is left unchanged. The copy is in eval mode.
    """
    from ..nn.nn_basic import Linear
    from ..nn.nn_sequence import LSTM, LSTMCell
    if not isinstance(model, Module):
        raise TypeError(f"quantize_dynamic needs a needle Module, got {type(model).__name__}")
    # the quantized twins, checked before the generic Module copy recurses into their children
    twins = ((Linear, DynamicQuantizedLinear), (LSTM, DynamicQuantizedLSTM),
             (LSTMCell, DynamicQuantizedLSTMCell))

    def convert(value):
        for float_type, twin_type in twins:
            if isinstance(value, float_type):
                return twin_type(value, device=device)
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
