"""Bias correction (needle/quant/bias_correction.py) against a float64 numpy reference."""
import numpy as np
import pytest

from needle import nn
from needle.quant import QConfig, calibrate, prepare
from needle.quant import reference as R
from needle.quant.bias_correction import correct_bias, window_means
from needle.quant.convert import quantize_weight
from needle.quant.fuse import FusedConv2d, FusedLinear

from quant_helpers import DEV, randomize_bn, tensor


def _conv64(x, w, b, stride, pad, relu):
    """float64 NCHW convolution, weight (K, K, C_in, C_out), by explicit windows."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nchwij,ijcd->ndhw", win, w) + b.reshape(1, -1, 1, 1)
    return np.maximum(y, 0) if relu else y


def _layer64(m, x, w, b):
    if isinstance(m, FusedConv2d):
        return _conv64(x, w, b, m.stride, m.padding, m.relu)
    y = x.reshape(len(x), -1) @ w + b.reshape(1, -1)
    return np.maximum(y, 0) if m.relu else y


def _model():
    np.random.seed(3)
    return randomize_bn(nn.Sequential(
        nn.Conv(2, 4, 3, stride=2, device=DEV), nn.BatchNorm2d(4, device=DEV), nn.ReLU(),
        nn.Conv(4, 3, 3, device=DEV), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 9, 5, device=DEV)),
        seed=4)


def test_window_means_is_the_mean_of_every_window():
    x = np.random.default_rng(0).normal(1.0, 1.0, (3, 2, 7, 6))
    for k, s, p in ((3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 2, 2)):
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        want = win.mean(axis=(0, 2, 3)).transpose(1, 2, 0)   # (K, K, C)
        np.testing.assert_allclose(window_means(x, k, s, p), want, rtol=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        window_means(x, 9, 1, 0)
    with pytest.raises(ValueError, match="shape"):
        window_means(x[0], 3, 1, 1)


def test_correct_bias_matches_the_float64_reference():
    cfg = QConfig(weight_bits=3, weight_granularity="per_tensor")
    prepared = prepare(_model(), cfg)
    layers = [m for _, m in prepared.model.named_modules() if isinstance(m, (FusedConv2d, FusedLinear))]
    assert len(layers) == 3
    W = [m.weight.numpy().astype(np.float64) for m in layers]
    B = [m.bias.numpy().astype(np.float64).reshape(-1) for m in layers]
    Q = [R.dequantize(*quantize_weight(m.weight.numpy(), cfg, m.weight.ndim - 1), 0,
                      axis=m.weight.ndim - 1).astype(np.float64) for m in layers]
    rng = np.random.default_rng(1)
    batches = [rng.normal(0.3, 1.0, (6, 2, 6, 6)).astype(np.float32) for _ in range(2)]
    x64 = np.concatenate(batches).astype(np.float64)

    shifts = correct_bias(prepared, batches)

    # reference: layer i sees the inputs of the model whose earlier layers have quantized
    # weights and corrected biases; its shift is the mean of (conv(x, Q) - conv(x, W))
    want_b = []
    for i, m in enumerate(layers):
        h = x64
        for j in range(i):
            h = _layer64(layers[j], h, Q[j], want_b[j])
        zero = np.zeros_like(B[i])
        plain = dict(stride=getattr(m, "stride", 1), pad=getattr(m, "padding", 0), relu=False)
        if isinstance(m, FusedConv2d):
            diff = _conv64(h, Q[i] - W[i], zero, **plain).mean(axis=(0, 2, 3))
        else:
            diff = (h.reshape(len(h), -1) @ (Q[i] - W[i])).mean(axis=0)
        name = [n for n, mm in prepared.model.named_modules() if mm is m][0]
        np.testing.assert_allclose(shifts[name], diff, rtol=1e-4, atol=1e-6)
        want_b.append(B[i] - diff)
        np.testing.assert_allclose(m.bias.numpy().reshape(-1), want_b[i], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(m.weight.numpy(), W[i].astype(np.float32))  # float kept
    assert any(np.abs(s).max() > 1e-3 for s in shifts.values())  # 3-bit weights: real shifts


def test_correct_bias_leaves_observers_and_checks_input():
    prepared = prepare(_model(), QConfig(weight_bits=4))
    xs = [np.random.default_rng(2).normal(size=(4, 2, 6, 6)).astype(np.float32)]
    correct_bias(prepared, xs)
    assert prepared.input_observer.num_batches == 0
    assert all(m.observer.num_batches == 0 for _, m in prepared.observed_modules())
    assert all("forward" not in m.__dict__ for _, m in prepared.model.named_modules())
    calibrate(prepared, xs, progress=False)   # the pipeline goes on as usual
    assert prepared.input_observer.num_batches == 1
    with pytest.raises(TypeError, match="PreparedModel"):
        correct_bias(_model(), xs)
    with pytest.raises(ValueError, match="no data"):
        correct_bias(prepare(_model()), [])
    with pytest.raises(ValueError, match="no fused Conv"):
        correct_bias(prepare(nn.Sequential(nn.ReLU())), xs)
