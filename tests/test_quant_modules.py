"""Quantized modules and the whole PTQ pipeline (needle/quant/modules.py, convert.py)."""
import types
import warnings

import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.backend_ndarray import BackendDevice, NDArray, ndarray_backend_numpy
from needle.quant import (QConfig, QTensor, load_quantized, quantize_model,
                          reference as R)
from needle.quant import kernels
from needle.quant.modules import (DeQuantStub, QuantizedAdd, QuantizedConv2d, QuantizedFlatten,
                                  QuantizedLinear, QuantizedReLU, QuantStub)
from needle.serialization import load_metadata

from quant_helpers import DEV, images, mnist_cnn, resnet9, tensor

CPU = ndl.cpu()


def _nd(a, dtype):
    return NDArray(np.asarray(a), device=DEV, dtype=dtype)


# ------------------------------------------------------------------------------------ stubs

def test_quant_stub_matches_reference_and_goes_nhwc():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (2, 3, 4, 5)).astype(np.float32)
    s = np.float32(0.05)
    x[0, 0, 0, :4] = [s * 0.5, s * 1.5, s * 2.5, np.nan]  # ties and NaN
    for dtype, zp in (("uint8", 128), ("int8", -3)):
        q = QuantStub(dtype, s, zp, device=DEV)(tensor(x))
        assert isinstance(q, QTensor) and q.dtype == dtype and q.zero_point == zp
        want = R.quantize(x, s, zp, dtype).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(q.data.numpy(), want)
    q2 = QuantStub("uint8", 0.1, 7, device=DEV)(tensor(x[:, :, 0, 0]))  # 2-D input
    np.testing.assert_array_equal(q2.data.numpy(), R.quantize(x[:, :, 0, 0], 0.1, 7, "uint8"))
    with pytest.raises(TypeError, match="float32"):
        QuantStub(device=DEV)(ndl.Tensor(np.zeros((1, 2)), device=DEV, dtype="int8"))


def test_dequant_stub_matches_reference_and_goes_nchw():
    rng = np.random.default_rng(1)
    # an NHWC image (N=1, H=2, W=2, C=3) holding the codes 100..111 comes back as NCHW floats
    img = (100 + np.arange(12)).reshape(1, 2, 2, 3).astype(np.uint8)
    out = DeQuantStub()(QTensor(_nd(img, "uint8"), np.float32(0.5), 100))
    assert out.shape == (1, 3, 2, 2), out.shape
    np.testing.assert_array_equal(out.numpy(), np.float32([[[[0.0, 1.5], [3.0, 4.5]],
                                                            [[0.5, 2.0], [3.5, 5.0]],
                                                            [[1.0, 2.5], [4.0, 5.5]]]]))
    out = DeQuantStub()(QTensor(_nd(img, "uint8"), np.float32([0.5, 1.0, 2.0]), 100))
    np.testing.assert_array_equal(out.numpy(), np.float32([[[[0.0, 1.5], [3.0, 4.5]],
                                                            [[1.0, 4.0], [7.0, 10.0]],
                                                            [[4.0, 10.0], [16.0, 22.0]]]]))
    acc = rng.integers(-10 ** 6, 10 ** 6, (3, 4)).astype(np.int32)
    s = np.float32([0.1, 0.2, 0.3, 1e-3])
    out = DeQuantStub()(QTensor(_nd(acc, "int32"), s, 0))
    np.testing.assert_array_equal(out.numpy(), R.dequantize(acc, s, 0, axis=1))
    with pytest.raises(TypeError, match="QTensor"):
        DeQuantStub()(tensor(acc))


# ------------------------------------------------------------------------------ gemm layers

def _random_layer(layer, rng, k, n, s_in, zp_in):
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, n).astype(np.int32)
    s_w = rng.uniform(0.002, 0.02, n).astype(np.float32)
    layer.set_qparams(w, b, s_w, (s_in, zp_in), (np.float32(0.05), 11))
    return w, b, s_w


@pytest.mark.parametrize("k, stride, padding, relu, in_dtype, out_dtype", [
    (3, 1, 1, True, "uint8", "uint8"), (3, 2, 1, False, "uint8", "uint8"),
    (1, 1, 0, False, "uint8", "int32"), (5, 2, 2, True, "int8", "int8"), (3, 3, 0, True,
                                                                          "uint8", "uint8"),
])
def test_quantized_conv_matches_reference(k, stride, padding, relu, in_dtype, out_dtype):
    rng = np.random.default_rng(k * 10 + stride)
    N, H, W, C, Cout = 2, 7, 6, 3, 4
    lo, hi = R.qrange(in_dtype)
    x = rng.integers(lo, hi + 1, (N, H, W, C)).astype(in_dtype)
    zp_in, s_in = int(rng.integers(lo, hi + 1)), np.float32(0.03)
    conv = QuantizedConv2d(C, Cout, k, stride, padding, relu, out_dtype, device=DEV)
    w, b, s_w = _random_layer(conv, rng, k * k * C, Cout, s_in, zp_in)
    out = conv(QTensor(_nd(x, in_dtype), s_in, zp_in))
    # independent im2col with numpy, padded with the input zero point
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=zp_in)
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    cols = np.stack([xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
                     .reshape(N, -1) for i in range(Ho) for j in range(Wo)], axis=1)
    m, n = R.requant_multiplier(s_in, s_w, 0.05)
    want = R.qgemm_reference(cols.reshape(-1, k * k * C), w, zp_in, b, m, n, 11, relu,
                             out_dtype).reshape(N, Ho, Wo, Cout)
    assert out.data.shape == (N, Ho, Wo, Cout) and out.dtype == out_dtype
    np.testing.assert_array_equal(out.data.numpy(), want)
    if out_dtype == "int32":
        np.testing.assert_array_equal(out.scale, s_in * s_w)
    else:
        assert out.scale == np.float32(0.05) and out.zero_point == 11


def test_quantized_linear_matches_reference_and_checks_input():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (6, 20)).astype(np.uint8)
    lin = QuantizedLinear(20, 7, relu=True, device=DEV)
    w, b, s_w = _random_layer(lin, rng, 20, 7, np.float32(0.1), 30)
    out = lin(QTensor(_nd(x, "uint8"), np.float32(0.1), 30))
    m, n = R.requant_multiplier(0.1, s_w, 0.05)
    np.testing.assert_array_equal(out.data.numpy(),
                                  R.qgemm_reference(x, w, 30, b, m, n, 11, True, "uint8"))
    # new parameters (twice, without a forward in between) replace the cached kernel data
    for delta in (1000, 2000):
        lin.set_qparams(w, b + delta, s_w, (np.float32(0.1), 30), (np.float32(0.05), 11))
    out = lin(QTensor(_nd(x, "uint8"), np.float32(0.1), 30))
    np.testing.assert_array_equal(
        out.data.numpy(), R.qgemm_reference(x, w, 30, b + 2000, m, n, 11, True, "uint8"))
    with pytest.raises(ValueError, match="zero point 30"):
        lin(QTensor(_nd(x, "uint8"), np.float32(0.1), 31))
    with pytest.raises(ValueError, match=r"\(N, 20\)"):
        lin(QTensor(_nd(x[:, :5], "uint8"), np.float32(0.1), 30))
    with pytest.raises(TypeError, match="QTensor"):
        lin(tensor(x))


def test_quantized_add_and_relu():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (2, 3, 3, 4)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 3, 4)).astype(np.uint8)
    add = QuantizedAdd(relu=True, device=DEV)
    add.set_qparams((0.02, 120), (0.05, 3), (0.1, 60))
    out = add(QTensor(_nd(a, "uint8"), np.float32(0.02), 120),
              QTensor(_nd(b, "uint8"), np.float32(0.05), 3))
    want = R.quantized_add(a, 120, *R.add_multipliers(0.02, 0.05, 0.1)[:2], b, 3,
                           *R.add_multipliers(0.02, 0.05, 0.1)[2:], 60, "uint8", True)
    np.testing.assert_array_equal(out.data.numpy(), want)
    assert out.scale == np.float32(0.1) and out.zero_point == 60
    with pytest.raises(ValueError, match="input b"):
        add(QTensor(_nd(a, "uint8"), np.float32(0.02), 120),
            QTensor(_nd(b, "uint8"), np.float32(0.05), 4))

    r = QuantizedReLU()(QTensor(_nd(a, "uint8"), np.float32(0.02), 120))
    np.testing.assert_array_equal(r.data.numpy(), np.maximum(a, 120))


def test_quantized_flatten():
    """NHWC codes flatten in the float model's NCHW feature order, scale and zero point kept."""
    # (N=1, H=2, W=2, C=3) codes 0..11: channel 0's four pixels first, then channel 1's, ...
    img = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    f = QuantizedFlatten()(QTensor(_nd(img, "uint8"), np.float32(0.02), 120))
    np.testing.assert_array_equal(f.data.numpy(), [[0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]])
    assert f.scale == np.float32(0.02) and f.zero_point == 120
    # H != W and N > 1 tell NCHW from NCWH, and the batch axis must stay first
    rng = np.random.default_rng(3)
    img = rng.integers(-128, 128, size=(3, 2, 5, 4)).astype(np.int8)
    f = QuantizedFlatten()(QTensor(_nd(img, "int8"), np.float32(0.5), 0))
    assert f.data.shape == (3, 40) and f.data.dtype == "int8"
    np.testing.assert_array_equal(f.data.numpy(), img.transpose(0, 3, 1, 2).reshape(3, 40))
    # [N, F] passes through unchanged
    flat = rng.integers(0, 256, size=(2, 7)).astype(np.uint8)
    f = QuantizedFlatten()(QTensor(_nd(flat, "uint8"), np.float32(0.1), 3))
    np.testing.assert_array_equal(f.data.numpy(), flat)


# ------------------------------------------------------------------------- whole pipeline

def _agreement(model, qmodel, x):
    y = model(tensor(x)).numpy()
    yq = qmodel(tensor(x)).numpy()
    return y, yq


@pytest.fixture(scope="module")
def mnist_q():
    model = mnist_cnn()
    calib = images(16, seed=1, batches=2)
    return model, quantize_model(model, calib, progress=False)


def test_quantized_mnist_cnn_agrees_with_float(mnist_q):
    model, qmodel = mnist_q
    x = images(32, seed=7)[0]
    y, yq = _agreement(model, qmodel, x)
    assert yq.shape == y.shape == (32, 10) and yq.dtype == np.float32
    err = np.abs(yq - y).max() / np.abs(y).max()
    assert err < 0.05, err
    assert (yq.argmax(1) == y.argmax(1)).mean() >= 0.9
    # every layer between the stubs is integer: the structure after convert
    names = [type(m).__name__ for _, m in qmodel.named_modules()]
    assert names.count("QuantizedConv2d") == 6 and names.count("QuantizedAdd") == 1
    assert "FusedConv2d" not in names and "BatchNorm2d" not in names
    final = qmodel.body.modules[-1]
    assert isinstance(final, QuantizedLinear) and final.out_dtype == "int32"


def test_save_load_identical_logits(mnist_q, tmp_path):
    _, qmodel = mnist_q
    path = tmp_path / "q.safetensors"
    ndl.save(qmodel, path)
    meta = load_metadata(path)
    assert meta["needle.kind"] == "model"
    assert QConfig.from_json(meta["needle.quant.config"]) == QConfig()
    reloaded = load_quantized(path, device=DEV)
    x = tensor(images(8, seed=3)[0])
    np.testing.assert_array_equal(reloaded(x).numpy(), qmodel(x).numpy())
    # per-layer buffers survive exactly
    a, b = qmodel.unpacked_state_dict(), reloaded.unpacked_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    # the file is about a quarter of the float file
    ndl.save(mnist_cnn(), tmp_path / "f.safetensors")
    ratio = (tmp_path / "f.safetensors").stat().st_size / path.stat().st_size
    assert ratio >= 3.8, ratio


def test_load_quantized_errors(mnist_q, tmp_path):
    _, qmodel = mnist_q
    ndl.save(mnist_cnn(), tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="not a quantized needle model"):
        load_quantized(tmp_path / "f.safetensors")
    sd = qmodel.state_dict()
    with pytest.raises(ValueError, match="'int8' holds 3 values"):
        qmodel.load_state_dict({**sd, "int8": np.zeros(3, np.int8)})
    with pytest.raises(KeyError, match="missing keys \\['int32'\\]"):
        qmodel.load_state_dict({k: v for k, v in sd.items() if k != "int32"})
    with pytest.raises(ValueError, match="dtype"):
        qmodel.load_state_dict({**sd, "int8": sd["int8"].numpy().astype(np.int32)})
    for spec, match in (("{not json", "corrupt"),
                        ('{"quant": {"Conv9d": {}}, "body": {"Identity": {}}}',
                         "unknown module type 'Conv9d'"),
                        ('{"quant": {"QuantStub": {"width": 3}}, "body": {"Identity": {}}}',
                         "invalid arguments")):
        path = tmp_path / "bad.safetensors"
        ndl.save(sd, path, metadata={"needle.quant.model": spec})
        with pytest.raises(ValueError, match=match):
            load_quantized(path)


@pytest.mark.parametrize("config", [
    QConfig(weight_granularity="per_tensor"),
    QConfig(activation_observer="percentile", observer_args={"percentile": 99.9}),
    QConfig(activation_observer="mse", weight_observer="mse"),
    QConfig(activation_observer="moving_average", activation_dtype="int8"),
], ids=["per_tensor", "percentile", "mse", "int8_act"])
def test_configs_produce_working_models(config, tmp_path):
    model = mnist_cnn(seed=2)
    qmodel = quantize_model(model, images(16, seed=4, batches=2), config, progress=False)
    x = images(16, seed=5)[0]
    y, yq = _agreement(model, qmodel, x)
    assert np.abs(yq - y).max() / np.abs(y).max() < 0.1
    if config.activation_dtype == "int8":
        assert qmodel.quant(tensor(x)).dtype == "int8"
    ndl.save(qmodel, tmp_path / "q.safetensors")
    again = load_quantized(tmp_path / "q.safetensors", device=DEV)
    assert again.config == config
    np.testing.assert_array_equal(again(tensor(x)).numpy(), yq)


def test_fewer_weight_bits_cost_accuracy():
    model = mnist_cnn(seed=3)
    calib = images(16, seed=6, batches=1)
    x = images(16, seed=8)[0]
    y = model(tensor(x)).numpy()
    errs = []
    for bits in (8, 4, 2):
        q = quantize_model(model, calib, QConfig(weight_bits=bits), progress=False)
        errs.append(np.abs(q(tensor(x)).numpy() - y).mean())
        w = q.body.modules[0].weight.numpy()
        assert np.abs(w).max() <= 2 ** (bits - 1) - 1
    assert errs[0] < errs[1] < errs[2], errs


def test_resnet9_quantizes():
    model = resnet9()
    qmodel = quantize_model(model, images(4, c=3, hw=32, seed=1, batches=2), progress=False)
    y, yq = _agreement(model, qmodel, images(4, c=3, hw=32, seed=2)[0])
    assert np.abs(yq - y).max() / np.abs(y).max() < 0.1
    names = [type(m).__name__ for _, m in qmodel.named_modules()]
    assert names.count("QuantizedAdd") == 2 and names.count("QuantizedLinear") == 2


def test_convert_errors():
    from needle.quant import calibrate, convert, prepare

    model = mnist_cnn()
    with pytest.raises(RuntimeError, match="calibrat"):
        convert(prepare(model))

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, device=DEV)
            self.t = nn.Tanh()

        def forward(self, x):
            return self.t(self.a(x))

    odd = Odd()
    p = prepare(odd)
    calibrate(p, [np.ones((2, 4), np.float32)], progress=False)
    with pytest.raises(NotImplementedError, match="Odd"):
        convert(p)


@pytest.mark.skipif(not CPU.enabled(), reason="C++ backend not built")
def test_cpu_backend_gives_the_same_integers(mnist_q, tmp_path):
    _, qmodel = mnist_q
    ndl.save(qmodel, tmp_path / "q.safetensors")
    on_cpu = load_quantized(tmp_path / "q.safetensors", device=CPU)
    x = images(8, seed=9)[0]
    np.testing.assert_array_equal(on_cpu(tensor(x, CPU)).numpy(), qmodel(tensor(x)).numpy())


def test_backend_without_qgemm_falls_back_with_one_warning(monkeypatch):
    names = {k: getattr(ndarray_backend_numpy, k) for k in dir(ndarray_backend_numpy)
             if not k.startswith("q")}
    dev = BackendDevice("numpy_without_qgemm", types.SimpleNamespace(**names))
    assert not kernels.has_native_qgemm(dev) and kernels.has_native_qgemm(DEV)
    monkeypatch.setattr(kernels, "_warned", set())
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 8)).astype(np.uint8)
    w = kernels.PackedWeights(NDArray(rng.integers(-127, 128, (3, 8)).astype(np.int8),
                                      device=dev, dtype="int8"))
    bias = np.arange(3, dtype=np.int32)
    m, n = R.quantize_multiplier(np.float64([0.01, 0.02, 0.03]))
    with pytest.warns(RuntimeWarning, match="numpy_without_qgemm.*reference"):
        out = kernels.qgemm(NDArray(a, device=dev, dtype="uint8"), w, 7, bias, m, n, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        out2 = kernels.qgemm(NDArray(a, device=dev, dtype="uint8"), w, 7, bias, m, n, 3)
    want = R.qgemm_reference(a, w.w_numpy, 7, bias, m, n, 3, False, "uint8")
    np.testing.assert_array_equal(out.numpy(), want)
    np.testing.assert_array_equal(out2.numpy(), want)
    assert out.device == dev


# ------------------------------------------------------------------------------- reports

def test_report_logits_in_batches_equal_one_pass(mnist_q):
    from needle.quant import report
    model, qmodel = mnist_q
    x = images(23, seed=12)[0]
    for m, exact in ((model, False), (qmodel, True)):
        whole = m(tensor(x)).numpy()
        for bs in (1, 5, 23, 100):     # uneven last batch, one batch, a batch larger than x
            got = report.logits(m, x, batch_size=bs, device=DEV)
            assert got.dtype == whole.dtype and got.shape == whole.shape, bs
            if exact:                  # integers: the same bits for any batch size
                assert np.array_equal(got, whole), bs
            else:                      # float: another matmul kernel may round differently
                np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        report.logits(model, x, batch_size=0, device=DEV)
    with pytest.raises(ValueError, match="no images"):
        report.logits(model, x[:0], device=DEV)


def test_report_sizes_and_sqnr(mnist_q):
    from needle.quant import report
    model, qmodel = mnist_q
    assert report.sqnr([1.0, 2.0], [1.0, 2.0]) == float("inf")
    assert report.sqnr([3.0, 4.0], [3.0, 3.0]) == pytest.approx(10 * np.log10(25.0))
    bd = report.quantized_breakdown(qmodel)
    assert bd["weights_int8"] == 24776 and bd["bias_int32"] == 4 * 130
    assert bd["weight_scales"] == 4 * 130
    assert sum(bd[k] for k in ("weights_int8", "bias_int32", "weight_scales",
                               "activation_qparams")) == report.memory_bytes(qmodel)
    assert report.memory_bytes(model) == 4 * sum(
        int(np.prod(t.shape)) for t in model.state_dict().values())
    layers = report.layer_sqnr(model, qmodel, tensor(images(8, seed=11)[0]))
    assert [l["layer"] for l in layers][:3] == ["body.0", "body.1", "body.2.fn.0"]
    assert layers[4]["layer"] == "body.2.add" and layers[-1]["shape"] == [8, 10]
    assert all(l["sqnr_db"] > 15 for l in layers)


# ---------------------------------------------------------- the shipped checkpoint, targets

def _heldout():
    from needle.data import resolve_data_dir
    d = resolve_data_dir() / "mnist"
    if not all((d / f"t10k-{k}-ubyte.gz").is_file() for k in ("images-idx3", "labels-idx1")):
        pytest.skip("MNIST test set not in the data directory (set NEEDLE_DATA_DIR)")
    from needle.data import mnist_offline_split
    return mnist_offline_split()


def test_shipped_checkpoint_meets_the_targets(tmp_path):
    from needle.nn.zoo import DEFAULT_CHECKPOINT, pretrained_mnist_cnn
    from needle.quant.report import evaluate
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("no shipped checkpoint")
    split = _heldout()
    dev = ndl.default_device()
    model = pretrained_mnist_cnn(device=dev)
    calib = split.train.get_batch(np.arange(512))[0]
    qmodel = quantize_model(model, [calib[i:i + 256] for i in (0, 256)], progress=False)
    path = tmp_path / "q.safetensors"
    ndl.save(qmodel, path)
    reloaded = load_quantized(path, device=dev)
    x, y = split.heldout.get_batch(np.arange(len(split.heldout)))
    batches = [(x[i:i + 500], y[i:i + 500]) for i in range(0, len(y), 500)]
    rf = evaluate(model, batches, device=dev)
    rq = evaluate(reloaded, batches, device=dev)
    assert rf["images"] == 2000
    assert rf["accuracy"] - rq["accuracy"] <= 0.003, (rf["accuracy"], rq["accuracy"])
    assert DEFAULT_CHECKPOINT.stat().st_size / path.stat().st_size >= 3.8
    np.testing.assert_array_equal(evaluate(qmodel, batches[:1], device=dev)["logits"],
                                  rq["logits"][:500])


def test_quantize_model_leaves_the_float_model_alone():
    model = mnist_cnn(seed=5)
    model.train()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    quantize_model(model, images(4, seed=1), progress=False)
    assert model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_report_logits_runs_on_the_models_device():
    """Without ``device`` the images go to the model's device, not the default one."""
    from needle.quant import report
    default = ndl.Tensor(np.zeros(1, np.float32)).device
    other = ndl.cpu_numpy() if str(default) != str(ndl.cpu_numpy()) else ndl.cpu()
    if not other.enabled():
        pytest.skip(f"only {default} is available")
    model = mnist_cnn(device=other)
    qmodel = quantize_model(model, images(8, seed=1, batches=1), progress=False)
    x = images(5, seed=12)[0]
    for m in (model, qmodel):
        assert str(report.model_device(m)) == str(other)
        want = m(tensor(x, device=other)).numpy()
        np.testing.assert_array_equal(report.logits(m, x), want)
    # tensors on two devices: named, not guessed
    name, t, _ = next(model._named_state())
    t.cached_data = t.realize_cached_data().to(default)
    with pytest.raises(ValueError, match=f"several devices.*{name}"):
        report.logits(model, x)
