"""Bias correction: undo the mean shift that weight quantization adds to each layer's output.

Quantizing a weight W to W_q = W + E changes a layer's pre-activation output by E x. Rounding
errors do not average out per output channel: for channel c the expected shift is

    shift[c] = E_x[(E x)[c]] = sum_j E[j, c] * mean(x_j)

(for a convolution, j runs over the kernel window (kh, kw, c_in) and mean(x_j) is the mean of
the zero-padded input at that window offset over every output position). With few weight
levels and inputs of non-zero mean (everything after a ReLU) the shift is a visible bias that
the next layer amplifies. Bias correction (Nagel et al. 2019, "Data-free quantization through
weight equalization and bias correction", section 4.2) subtracts it: b' = b - shift, with the
input means measured on calibration data. The layers are corrected in order, each with the
inputs it sees once every layer before it has quantized weights and corrected biases (the
empirical variant: errors that upstream layers pass on are corrected too).

    prepared = prepare(model, config)
    correct_bias(prepared, calibration_batches)   # before calibrate: ranges see the new biases
    calibrate(prepared, calibration_batches)
    qmodel = convert(prepared)

The weights are quantized exactly as ``convert`` will (``convert.quantize_weight``), so the
shift removed is the one the integer model has.
"""
import numpy as np

from ..autograd import Tensor
from . import reference as R
from .convert import PreparedModel, calibrate, quantize_weight
from .fuse import FusedConv2d, FusedLinear

__all__ = ["correct_bias", "window_means"]


def window_means(x, kernel_size, stride, padding):
    """Mean of the zero-padded input at each kernel offset, over every output position.

    x: float array (N, C, H, W). Returns float64 (K, K, C): entry [kh, kw, c] is the mean of
    x_pad[n, c, oh * stride + kh, ow * stride + kw] over n, oh, ow, for the output size
    Ho = (H + 2 padding - K) // stride + 1 (Wo likewise) of needle's convolution.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 4:
        raise ValueError(f"window_means expects (N, C, H, W) inputs, got shape {x.shape}")
    n, c, h, w = x.shape
    k, s, p = kernel_size, stride, padding
    ho, wo = _out_size(h, k, s, p), _out_size(w, k, s, p)
    if ho < 1 or wo < 1:
        raise ValueError(f"a {k}x{k} kernel with padding {p} does not fit a {h}x{w} input")
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.empty((k, k, c))
    for kh in range(k):
        for kw in range(k):
            win = xp[:, :, kh:kh + s * (ho - 1) + 1:s, kw:kw + s * (wo - 1) + 1:s]
            out[kh, kw] = win.mean(axis=(0, 2, 3))
    return out


def _out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


class _InputMeans:
    """Running mean of what one fused layer sees (window means for a conv, features for a
    linear layer), weighted by the number of output positions of each batch."""

    def __init__(self, layer):
        self.layer, self.total, self.weight = layer, None, 0

    def __call__(self, x):
        a = x.numpy()
        if isinstance(self.layer, FusedConv2d):
            k, s, p = self.layer.kernel_size, self.layer.stride, self.layer.padding
            m = window_means(a, k, s, p)
            count = a.shape[0] * _out_size(a.shape[2], k, s, p) * _out_size(a.shape[3], k, s, p)
        else:
            m, count = a.astype(np.float64).mean(axis=0), a.shape[0]
        self.total = m * count if self.total is None else self.total + m * count
        self.weight += count

    def mean(self):
        return self.total / self.weight


class _StopForward(Exception):
    """Raised once the layer being corrected has recorded its input: the rest of the
    forward pass is not needed."""


class _FloatRunner:
    """What ``calibrate`` runs here: the fused float model alone (no input observer), up to
    the layer being corrected."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        try:
            self.model(x)
        except _StopForward:
            pass


def correct_bias(prepared, loader, num_batches=None, progress=False):
    """Subtract each fused Conv / Linear layer's expected weight-quantization shift from its
    bias, in place (see the module docstring).

    prepared: a :class:`~needle.quant.convert.PreparedModel` (its config says how the weights
    will be quantized); loader, num_batches: calibration batches as for ``calibrate``.
    Returns {layer name: float64 shift (C_out,)} (the amounts subtracted). One pass over the
    batches per layer; observers record nothing; the float weights are left as they were.
    """
    if not isinstance(prepared, PreparedModel):
        raise TypeError(f"correct_bias needs a PreparedModel (from prepare()), got "
                        f"{type(prepared).__name__}")
    layers = [(name, m) for name, m in prepared.model.named_modules()
              if isinstance(m, (FusedConv2d, FusedLinear))]
    if not layers:
        raise ValueError("the prepared model has no fused Conv / Linear layer to correct")
    observed = prepared.observed_modules()
    saved = [(m, m.observer) for _, m in observed]
    floats = []  # (layer, float weight Tensor): restored at the end
    device = next(iter(prepared.model.parameters())).device
    shifts = {}
    try:
        for _, m in observed:
            m.observer = None
        for name, m in layers:
            # the inputs this layer sees once every layer before it is quantized and corrected
            means = _InputMeans(m)
            m.forward = _recording(m, means)
            try:
                calibrate(_FloatRunner(prepared.model), loader, num_batches, device=device,
                          progress=progress)
            finally:
                m.__dict__.pop("forward", None)
            w = m.weight.numpy()
            axis = w.ndim - 1   # output channels last: Conv (K, K, C_in, C_out), Linear (in, out)
            w_q, s_w = quantize_weight(w, prepared.config, axis=axis)
            w_deq = R.dequantize(w_q, s_w, 0, axis=axis)
            mean = means.mean()
            shift = np.tensordot(mean, w_deq.astype(np.float64) - w.astype(np.float64),
                                 axes=mean.ndim)
            bias = m.bias.numpy()
            new = (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(np.float32)
            m.bias.data = Tensor(new, device=m.bias.device, requires_grad=False)
            floats.append((m, m.weight.data))
            m.weight.data = Tensor(w_deq, device=m.weight.device, requires_grad=False)
            shifts[name] = shift
    finally:
        for m, w in floats:
            m.weight.data = w
        for m, obs in saved:
            m.observer = obs
    return shifts


def _recording(layer, means):
    def forward(x):
        means(x)
        raise _StopForward
    return forward
