"""Activation outliers in the language model and the SmoothQuant remedy.

* :func:`channel_ranges` runs the float model over some text and records, for every matrix
  (``layer{k}.W_ih``, ``layer{k}.W_hh``, ``linear``), the per-input-channel min, max and
  max |x| of the activations it multiplies.
* :class:`StaticInt8Matrix` is per-tensor W8A8: int8 weights with one scale per matrix, uint8
  activations with one calibrated range per matrix (static, like the CNN path), integer GEMM
  through ``kernels.qgemm``; with ``smooth`` (SmoothQuant factors s [K]) the activations are
  divided by s before quantization and the weight columns multiplied by s.
* :func:`quantize_lm_w8a8` builds a QuantizedLanguageModel of such matrices.
* :func:`with_outlier_channel` rescales one embedding channel by ``factor`` and the matching
  W_ih row by 1/factor: the float model computes the same function, but one activation channel
  becomes an outlier, as transformers' residual streams develop in training. The trained LSTM
  itself has none (its h lies in (-1, 1) by construction), so the study uses this model to
  show the breakage and the recovery.
"""
import numpy as np

from ..autograd import Tensor
from ..backend_ndarray import NDArray, default_device
from . import kernels
from . import reference as R
from .lm import QuantizedLanguageModel, quantize_lm

__all__ = ["channel_ranges", "StaticInt8Matrix", "quantize_lm_w8a8", "with_outlier_channel",
           "outlier_study"]


class _Recorder:
    def __init__(self, inner):
        self.inner, self.lo, self.hi = inner, None, None

    def matmul(self, x):
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        return self.inner.matmul(x)


def channel_ranges(model, ids, batch_size=8):
    """{matrix name: {"lo", "hi", "absmax"} float32 [K]} of the activations entering every
    matrix of an LSTM LanguageModel over token ids (a list), in columns of ``batch_size``."""
    q = quantize_lm(model, "float32")
    rec = {name: _Recorder(m) for name, m in q.matrices.items()}
    q.layers = [(rec[f"layer{i}.W_ih"], rec[f"layer{i}.W_hh"], b)
                for i, (_, _, b) in enumerate(q.layers)]
    q.linear_matrix = rec["linear"]
    ids = np.asarray(ids)
    ids = ids[:len(ids) // batch_size * batch_size].reshape(batch_size, -1).T
    q.forward_numpy(ids)
    return {n: {"lo": r.lo, "hi": r.hi, "absmax": np.maximum(-r.lo, r.hi)}
            for n, r in rec.items()}


class StaticInt8Matrix:
    """Per-tensor W8A8 of W [N, K]: calibrated activation range [x_lo, x_hi] (per channel,
    float32 [K]), optional SmoothQuant factors ``smooth`` [K]."""

    kind = "int8-static"

    def __init__(self, w, x_lo, x_hi, smooth=None, device=None):
        w = np.asarray(w, np.float32)
        self.n, self.k = w.shape
        self.smooth = None if smooth is None else np.asarray(smooth, np.float32)
        if self.smooth is not None:
            w = w * self.smooth[None, :]
            self.inv_smooth = (np.float32(1.0) / self.smooth).astype(np.float32)
            x_lo, x_hi = x_lo * self.inv_smooth, x_hi * self.inv_smooth
        s_w, zp_w = R.choose_qparams(w.min(), w.max(), "symmetric", "int8", reduced_range=True)
        self.w_q = R.quantize(w, s_w, zp_w, "int8", reduced_range=True)
        self.w_scale = np.full(self.n, s_w, np.float32)
        self.x_scale, self.x_zp = R.choose_qparams(float(np.min(x_lo)), float(np.max(x_hi)),
                                                   "affine", "uint8")
        self.device = default_device() if device is None else device
        self.packed = kernels.PackedWeights(NDArray(self.w_q, device=self.device, dtype="int8"))

    @property
    def nbytes(self):
        return self.w_q.nbytes + 4 + (0 if self.smooth is None else self.smooth.nbytes)

    def matmul(self, x):
        x = np.asarray(x, np.float32)
        if self.smooth is not None:
            x = x * self.inv_smooth
        xq = R.quantize(x, self.x_scale, self.x_zp, "uint8")
        acc = kernels.qgemm(NDArray(xq, device=self.device, dtype="uint8"), self.packed,
                            int(self.x_zp), None, None, None, out_dtype="int32").numpy()
        return acc.astype(np.float32) * (np.float32(self.x_scale) * self.w_scale)[None, :]


def quantize_lm_w8a8(model, ranges, alpha=None, device=None):
    """QuantizedLanguageModel with per-tensor W8A8 matrices calibrated on ``ranges`` (from
    :func:`channel_ranges`); ``alpha`` not None applies SmoothQuant with that alpha."""
    q = quantize_lm(model, "float32", device=device)

    def static(name, m):
        r = ranges[name]
        s = None if alpha is None else R.smoothquant_scales(r["absmax"], m.w, alpha)
        return StaticInt8Matrix(m.w, r["lo"], r["hi"], s, device)

    layers = [(static(f"layer{i}.W_ih", a), static(f"layer{i}.W_hh", b), bias)
              for i, (a, b, bias) in enumerate(q.layers)]
    return QuantizedLanguageModel(q.embedding_table, layers, static("linear", q.linear_matrix),
                                  q.linear_bias, "int8-static", device=device)


def with_outlier_channel(model, channel, factor):
    """A copy of an LSTM LanguageModel with embedding column ``channel`` multiplied by
    ``factor`` and row ``channel`` of the first layer's W_ih divided by it (the same function
    in exact arithmetic)."""
    from ..apps.models import LanguageModel
    dev = model.linear.weight.device
    twin = LanguageModel(model.embedding_size, model.output_size, model.hidden_size,
                         model.num_layers, "lstm", device=dev)
    twin.load_state_dict(model.state_dict())
    emb = model.embedding.weight.numpy().copy()
    w_ih = model.seq_model.lstm_cells[0].W_ih.numpy().copy()
    emb[:, channel] *= np.float32(factor)
    w_ih[channel, :] /= np.float32(factor)
    twin.embedding.weight.data = Tensor(emb, device=dev, requires_grad=False)
    twin.seq_model.lstm_cells[0].W_ih.data = Tensor(w_ih, device=dev, requires_grad=False)
    return twin.eval()


def outlier_study(model, calib_ids, test_ids, factor=32.0, alpha=0.5, device=None, say=print):
    """Per-channel ranges, per-tensor W8A8 with and without SmoothQuant, on the trained model
    and on its outlier twin. Returns {"ranges": {...}, "perplexity": {model: {variant: ppl}}}."""
    from .lm import perplexity
    ranges = channel_ranges(model, calib_ids)
    summary = {n: {"channels": int(r["absmax"].size), "max": float(r["absmax"].max()),
                   "median": float(np.median(r["absmax"])),
                   "max_over_median": float(r["absmax"].max() / max(np.median(r["absmax"]),
                                                                    1e-12))}
               for n, r in ranges.items()}
    channel = int(np.argmax(ranges["layer0.W_ih"]["absmax"]))
    twin = with_outlier_channel(model, channel, factor)
    out = {}
    for label, m in (("trained", model), (f"outlier x{factor:g} (channel {channel})", twin)):
        r = channel_ranges(m, calib_ids)
        say(f"  {label}: float, per-tensor W8A8, W8A8 + SmoothQuant (alpha {alpha})")
        out[label] = {
            "float": perplexity(m, test_ids, device=device),
            "w8a8_per_tensor": perplexity(quantize_lm_w8a8(m, r, None, device), test_ids,
                                          device=device),
            "w8a8_smoothquant": perplexity(quantize_lm_w8a8(m, r, alpha, device), test_ids,
                                           device=device),
            "embedding_max_over_median": float(r["layer0.W_ih"]["absmax"].max() /
                                               np.median(r["layer0.W_ih"]["absmax"]))}
    return {"ranges": summary, "perplexity": out, "alpha": alpha, "factor": factor,
            "channel": channel}
