"""Outliers: channel ranges, per-tensor W8A8 (static), SmoothQuant scale migration."""
import numpy as np
import pytest

import needle as ndl
from needle.apps.models import LanguageModel
from needle.quant import reference as R
from needle.quant.lm import perplexity, quantize_lm
from needle.quant.smooth import (StaticInt8Matrix, channel_ranges, quantize_lm_w8a8,
                                 with_outlier_channel)


def tiny_lm(seed=0):
    np.random.seed(seed)
    return LanguageModel(16, 20, 24, 1, "lstm", device=ndl.cpu_numpy()).eval()


def test_smoothquant_scales_formula_and_invariance():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    a = np.array([1.0, 100.0, 0.0, 4.0])
    s = R.smoothquant_scales(a, w, alpha=0.5)
    wmax = np.abs(w).max(axis=0)
    np.testing.assert_allclose(s[[0, 1, 3]], np.sqrt(a[[0, 1, 3]]) / np.sqrt(wmax[[0, 1, 3]]),
                               rtol=1e-6)
    assert s[2] == 1.0
    x = rng.standard_normal((3, 4)) * a
    np.testing.assert_allclose((x / s) @ (w * s).T, x @ w.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        R.smoothquant_scales(a, w, 1.5)
    with pytest.raises(ValueError, match=r"\[K\]"):
        R.smoothquant_scales(a[:3], w)


@pytest.mark.parametrize("smooth", [False, True])
def test_static_matrix_is_the_reference_composition(smooth):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((9, 12)).astype(np.float32)
    x = rng.standard_normal((5, 12)).astype(np.float32)
    x[:, 3] *= 40
    lo, hi = x.min(axis=0), x.max(axis=0)
    s = R.smoothquant_scales(np.maximum(-lo, hi), w) if smooth else None
    m = StaticInt8Matrix(w, lo, hi, s, device=ndl.cpu_numpy())
    xs = x if s is None else x * (np.float32(1) / s)
    ws = w if s is None else w * s[None, :]
    s_w, _ = R.choose_qparams(ws.min(), ws.max(), "symmetric", "int8", reduced_range=True)
    w_q = R.quantize(ws, s_w, 0, "int8", reduced_range=True)
    s_x, zp = R.choose_qparams(float((lo if s is None else lo / s).min()),
                               float((hi if s is None else hi / s).max()), "affine", "uint8")
    acc = R.qgemm_reference(R.quantize(xs, s_x, zp, "uint8"), w_q, zp, out_dtype="int32")
    per_channel = np.float32(s_x) * np.full(9, s_w, np.float32)
    assert np.array_equal(m.matmul(x), acc.astype(np.float32) * per_channel)


def test_outlier_twin_computes_the_same_function_and_smoothing_recovers_it():
    model = tiny_lm()
    ids = list(np.random.default_rng(0).integers(0, 20, 800))
    twin = with_outlier_channel(model, 3, 64.0)
    x = ndl.Tensor(np.array(ids[:40], np.float32).reshape(5, 8), device=ndl.cpu_numpy())
    np.testing.assert_array_equal(model(x)[0].numpy(), twin(x)[0].numpy())
    r = channel_ranges(twin, ids)
    am = r["layer0.W_ih"]["absmax"]
    assert am[3] > 20 * np.median(am)
    f = perplexity(twin, ids)
    plain = perplexity(quantize_lm_w8a8(twin, r, None), ids)
    smooth = perplexity(quantize_lm_w8a8(twin, r, 0.5), ids)
    assert abs(smooth - f) < 0.5 * abs(plain - f)
