"""Dynamic int8 matrices and the quantized language model (int8 / int4 / float32 paths)."""
import json

import numpy as np
import pytest

import needle as ndl
from needle.apps.models import LanguageModel
from needle.quant import reference as R
from needle.quant.dynamic import DynamicInt8Matrix, DynamicQuantizedLinear, quantize_dynamic
from needle.quant.lm import load_quantized_lm, quantize_lm, save_quantized_lm
from needle.serialization import SerializationError, load_numpy

DEVICES = [ndl.cpu_numpy()] + ([ndl.cpu()] if ndl.cpu().enabled() else [])
# the integer GEMM of the CUDA backend too (skipped without a GPU)
GEMM_DEVICES = DEVICES + [pytest.param(ndl.cuda(), id="cuda", marks=pytest.mark.skipif(
    not ndl.cuda().enabled(), reason="no CUDA GPU"))]


@pytest.mark.parametrize("device", GEMM_DEVICES, ids=lambda d: d.name)
@pytest.mark.parametrize("m,n,k", [(1, 5, 7), (8, 33, 128), (3, 512, 32)])
def test_dynamic_matrix_is_bit_exact(device, m, n, k):
    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = (rng.standard_normal((m, k)) * 3 + 1).astype(np.float32)
    mat = DynamicInt8Matrix.from_float(w, device=device)
    got = mat.matmul(x)
    want = R.dynamic_linear_reference(x, *R.dynamic_weight(w))
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=0.05, atol=0.05 * np.abs(x).max() * np.abs(w).max())


def test_dynamic_weight_is_per_channel_symmetric():
    w = np.array([[1.0, -2.0], [0.1, 0.05]], np.float32)
    w_q, s = R.dynamic_weight(w)
    assert w_q.tolist() == [[64, -127], [127, 64]]
    np.testing.assert_allclose(s, [2.0 / 127, 0.1 / 127], rtol=1e-6)


def test_dynamic_linear_uses_the_observed_range():
    x = np.array([[-1.0, 0.0, 3.0]], np.float32)
    seen = []

    def gemm(xq, zp):
        seen.append((xq.copy(), zp))
        return (xq.astype(np.int64) - zp) @ np.eye(3, dtype=np.int64)

    y = R.dynamic_linear_reference(x, np.eye(3, dtype=np.int8), np.ones(3, np.float32), gemm)
    (xq, zp), = seen
    assert xq.dtype == np.uint8 and xq[0, 0] == 0 and xq[0, 2] == 255 and xq[0, 1] == zp
    s = np.float32(4.0 / 255)
    assert y.dtype == np.float32 and np.array_equal(y, (xq.astype(np.int64) - zp).astype(np.float32) * s)
    with pytest.raises(ValueError, match="non-finite"):
        R.dynamic_linear_reference(np.array([[np.nan, 0, 0]], np.float32),
                                   np.eye(3, dtype=np.int8), np.ones(3, np.float32))


def test_dynamic_linear_epilogue_order_and_empty_input():
    rng = np.random.default_rng(3)
    w_q, w_s = R.dynamic_weight(rng.standard_normal((7, 9)).astype(np.float32))
    x = rng.standard_normal((4, 9)).astype(np.float32) * 5
    y = R.dynamic_linear_reference(x, w_q, w_s)
    s_x, z_x = R.choose_qparams(x.min(), x.max(), "affine", "uint8")
    acc = R.qgemm_reference(R.quantize(x, s_x, z_x, "uint8"), w_q, z_x, out_dtype="int32")
    assert np.array_equal(y, acc.astype(np.float32) * (np.float32(s_x) * w_s)[None, :])
    empty = R.dynamic_linear_reference(np.zeros((0, 9), np.float32), w_q, w_s,
                                       gemm=lambda *a: pytest.fail("gemm on an empty input"))
    assert empty.shape == (0, 7) and empty.dtype == np.float32


def tiny_lm(seed=0, layers=1):
    np.random.seed(seed)
    return LanguageModel(16, 20, 24, layers, "lstm", device=ndl.cpu_numpy()).eval()


def ids(T=6, bs=3, seed=0):
    return np.random.default_rng(seed).integers(0, 20, (T, bs)).astype(np.float32)


@pytest.mark.parametrize("layers", [1, 2])
def test_float32_path_matches_the_needle_model(layers):
    model = tiny_lm(layers=layers)
    x = ndl.Tensor(ids(), device=ndl.cpu_numpy(), requires_grad=False)
    want, (h, c) = model(x)
    got, (gh, gc) = quantize_lm(model, "float32")(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gh.numpy(), h.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gc.numpy(), c.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights,group,tol", [("int8", None, 0.05), ("int4", 32, 0.3),
                                               ("int4", 8, 0.2)])
def test_quantized_lm_tracks_float_logits(weights, group, tol):
    model = tiny_lm()
    x = ndl.Tensor(ids(), device=ndl.cpu_numpy(), requires_grad=False)
    want = model(x)[0].numpy()
    q = quantize_lm(model, weights, group=group or 64)
    got = q(x)[0].numpy()
    assert np.abs(got - want).max() < tol * np.abs(want).max()
    # the state carries over: two halves equal one call (exactly for int4, whose numbers do
    # not depend on the batch; dynamic int8 sees other activation ranges in each half)
    a, h = q(ndl.Tensor(ids()[:3], device=ndl.cpu_numpy()))
    b, _ = q(ndl.Tensor(ids()[3:], device=ndl.cpu_numpy()), h)
    halves = np.concatenate([a.numpy(), b.numpy()])
    if weights == "int4":
        np.testing.assert_allclose(halves, got, rtol=1e-6, atol=1e-6)
    else:
        assert np.abs(halves - got).max() < tol * np.abs(want).max()


def test_quantize_lm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="weights must be"):
        quantize_lm(tiny_lm(), "int3")
    np.random.seed(0)
    rnn = LanguageModel(8, 10, 8, 1, "rnn", device=ndl.cpu_numpy())
    with pytest.raises(ValueError, match="LSTM"):
        quantize_lm(rnn)
    with pytest.raises(IndexError, match="token ids"):
        quantize_lm(tiny_lm()).forward_numpy(np.full((2, 2), 20))


@pytest.mark.parametrize("weights", ["int4", "int8", "float32"])
def test_file_roundtrip(tmp_path, weights):
    q = quantize_lm(tiny_lm(layers=2), weights, group=32, scheme="asymmetric")
    path = tmp_path / "lm.safetensors"
    save_quantized_lm(q, path)
    back = load_quantized_lm(path)
    x = ids()
    assert np.array_equal(back.forward_numpy(x)[0], q.forward_numpy(x)[0])
    assert back.weights == weights


def _corrupt(path, key=None, value=None, meta=None):
    arrays, m = load_numpy(path)
    if key is not None:
        arrays[key] = value
    m = {k: v for k, v in m.items() if k not in ("needle.format_version", "needle.kind")}
    m.update(meta or {})
    ndl.save(arrays, path, metadata=m)


@pytest.mark.parametrize("weights,key,value,meta,match", [
    ("int4", None, None, {"needle.quant.lm": "{"}, "not a quantized language model"),
    ("int4", None, None, {"needle.quant.lm": json.dumps({"weights": "int2", "layers": 1})},
     "bad"),
    ("int4", None, None, {"needle.quant.lm": json.dumps({"weights": "int4", "layers": 9})},
     "int4 weights"),
    ("int4", "layer0.bias", np.zeros(5, np.float32), None, "layer0.bias"),
    ("int4", "embedding", np.zeros((20, 15), np.float32), None, "do not fit"),
    ("int8", "linear.w_q", np.zeros((20, 25), np.int8), None, "linear is"),
    ("int8", "linear.scale", np.zeros(20, np.float32), None, "finite and > 0"),
    ("int8", "layer0.W_hh.w_q", np.zeros((96, 24), np.float32), None, "int8"),
])
def test_file_is_validated(tmp_path, weights, key, value, meta, match):
    path = tmp_path / "lm.safetensors"
    save_quantized_lm(quantize_lm(tiny_lm(), weights), path)
    _corrupt(path, key, value, meta)
    with pytest.raises(SerializationError, match=match):
        load_quantized_lm(path)


def test_cli_lm_demo_smoke(tmp_path):
    from needle.data.offline_text import license_paragraphs
    try:
        license_paragraphs()
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"offline corpus unavailable: {e}")
    from needle.quant.__main__ import main
    result = main(["demo", "--model", "lm", "--test-chars", "400", "--lm-steps", "2",
                   "--out-dir", str(tmp_path), "--json", str(tmp_path / "r.json"),
                   "--no-outliers"])
    rows = result["variants"]
    assert list(rows) == ["float32", "int8-dynamic", "int4-g128", "int4-g64", "int4-g32"]
    assert 1.0 < rows["float32"]["perplexity"] < 84.0
    for label in ("int4-g128", "int4-g64", "int4-g32"):
        assert rows[label]["size_ratio"] > 3.5
    assert abs(rows["int8-dynamic"]["perplexity_rel_change"]) < 0.02
    assert json.loads((tmp_path / "r.json").read_text())["test_characters"] == 400


def test_dynamic_quantized_linear_module():
    from needle.quant.dynamic import DynamicQuantizedLinear
    np.random.seed(0)
    lin = ndl.nn.Linear(12, 5, device=ndl.cpu_numpy())
    q = DynamicQuantizedLinear(lin)
    x = np.random.default_rng(0).standard_normal((2, 3, 12)).astype(np.float32)
    got = q(ndl.Tensor(x, device=ndl.cpu_numpy())).numpy()
    assert got.shape == (2, 3, 5)
    w = lin.weight.numpy()
    want = R.dynamic_linear_reference(x.reshape(6, 12), *R.dynamic_weight(w.T))
    assert np.array_equal(got.reshape(6, 5), want + lin.bias.numpy().reshape(-1))
    float_out = lin(ndl.Tensor(x.reshape(6, 12), device=ndl.cpu_numpy())).numpy()
    np.testing.assert_allclose(got, float_out.reshape(2, 3, 5),
                               atol=0.05)
    with pytest.raises(ValueError, match="last dimension 12"):
        q(ndl.Tensor(np.zeros((2, 11), np.float32)))


@pytest.mark.parametrize("argv,match", [(["--test-chars", "5"], "at least 24"),
                                        (["--lm-steps", "0"], "positive")])
def test_cli_lm_demo_rejects_bad_sizes(argv, match):
    from needle.quant.__main__ import main
    with pytest.raises(SystemExit, match=match):
        main(["demo", "--model", "lm", *argv])


def _dynamic_reference(linear, a):
    """what a DynamicQuantizedLinear without bias computes, from the reference alone"""
    return R.dynamic_linear_reference(a, *R.dynamic_weight(linear.weight.numpy().T))


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)
def test_attention_projections_are_the_dynamic_reference(device):
    from needle import nn
    np.random.seed(0)
    layer = nn.AttentionLayer(16, 2, 8, causal=True, device=device).eval()
    x = np.random.default_rng(5).standard_normal((2, 5, 16)).astype(np.float32) * 3
    q = quantize_dynamic(layer, device=device)
    got = q(ndl.Tensor(x, device=device)).numpy()
    rows = ndl.Tensor(x.reshape(10, 16), device=device)
    heads = []
    for norm, lin in ((layer.prenorm_q, layer.q_projection), (layer.prenorm_k, layer.k_projection),
                      (layer.prenorm_v, layer.v_projection)):
        y = _dynamic_reference(lin, norm(rows).numpy())              # (B * T, H * D)
        heads.append(ndl.Tensor(np.ascontiguousarray(y.reshape(2, 5, 2, 8).transpose(0, 2, 1, 3)),
                                device=device))
    res = layer.attn(*heads)[0].numpy().transpose(0, 2, 1, 3).reshape(10, 16)
    want = _dynamic_reference(layer.out_projection, res).reshape(2, 5, 16)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    for name in ("q_projection", "k_projection", "v_projection", "out_projection"):
        assert isinstance(getattr(q, name), DynamicQuantizedLinear), name
        assert isinstance(getattr(layer, name), nn.Linear), "the float model is unchanged"


def test_quantized_transformer_layer_tracks_float():
    from needle import nn
    np.random.seed(1)
    dev = ndl.cpu_numpy()
    block = nn.TransformerLayer(24, 3, 8, 48, dropout=0.0, causal=True, device=dev).eval()
    x = ndl.Tensor(np.random.default_rng(2).standard_normal((3, 7, 24)).astype(np.float32),
                   device=dev)
    want = block(x).numpy()
    q = quantize_dynamic(block)
    got = q(x).numpy()
    linears = [m for _, m in q.named_modules() if isinstance(m, DynamicQuantizedLinear)]
    assert len(linears) == 6                      # q, k, v, out and the MLP's two
    assert not any(isinstance(m, nn.Linear) for _, m in q.named_modules())
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < err < 0.03, err
    np.testing.assert_array_equal(block(x).numpy(), want)   # the float block still works
    with pytest.raises(TypeError, match="needle Module"):
        quantize_dynamic(np.zeros(3))
