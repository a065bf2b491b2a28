"""Quantization-aware training: the fake-quantize op and its straight-through gradient,
BatchNorm folding in training, observers during fine-tuning, and conversion to the integer
model (needle/quant/qat.py)."""
import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.quant import QConfig, convert, quantize_model, reference as R
from needle.quant.fuse import fold_bn
from needle.quant.modules import QuantizedConv2d, QuantizedLinear, QuantizedResidual
from needle.quant.qat import (FakeQuant, QATConv2d, QATLinear, conv_bn_qat, fake_quantize,
                              fine_tune, load_qat, prepare_qat, save_qat)

from quant_helpers import images, mnist_cnn as _mnist_cnn


def mnist_cnn(seed):
    return _mnist_cnn(seed, device=DEV)

DEV = ndl.cpu() if ndl.cpu().enabled() else ndl.cpu_numpy()


def _mnist_split():
    from needle.data import mnist_offline_split
    from needle.data.download import resolve_data_dir
    d = resolve_data_dir() / "mnist"
    if not (d / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST test set not in the data directory (set NEEDLE_DATA_DIR)")
    return mnist_offline_split()


def leaf(a, device=DEV):
    return ndl.Tensor(np.asarray(a, np.float32), device=device, requires_grad=True)


# ------------------------------------------------------------------ fake quantize + STE

@pytest.mark.parametrize("dtype,bits,reduced", [("uint8", None, False), ("uint8", 4, False),
                                                ("int8", 3, True), ("int8", None, False)])
def test_fake_quantize_forward_is_the_reference(dtype, bits, reduced):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (6, 7)).astype(np.float32)
    x[0, :3] = [np.inf, -np.inf, np.nan]
    scale, zp = np.float32(0.37), (0 if dtype == "int8" else 3)
    out = fake_quantize(leaf(x), scale, zp, dtype, bits=bits, reduced_range=reduced).numpy()
    want = R.fake_quantize(x, scale, zp, dtype, bits=bits, reduced_range=reduced)
    np.testing.assert_array_equal(out, want)


def test_fake_quantize_per_channel_forward_and_mask():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3, 3, 2, 4)).astype(np.float32) * np.array([0.1, 1, 3, 10], np.float32)
    scale = np.array([0.01, 0.05, 0.2, 0.5], np.float32)   # small scales clip the wide channels
    t = leaf(x)
    out = fake_quantize(t, scale, 0, "int8", axis=3, bits=4, reduced_range=True)
    np.testing.assert_array_equal(out.numpy(), R.fake_quantize(x, scale, 0, "int8", axis=3,
                                                               bits=4, reduced_range=True))
    g = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    out.backward(ndl.Tensor(g, device=DEV))
    codes = np.rint(x / scale)
    want = np.where((codes >= -7) & (codes <= 7), g, 0)
    np.testing.assert_array_equal(t.grad.numpy(), want)
    assert 0 < (want == 0).mean() < 1  # both sides of the mask are exercised


def test_ste_mask_at_the_range_edges():
    # uint8 4-bit, zp 2: codes 0..15 stand for [-2s, 13s]
    s, zp = np.float32(0.5), 2
    steps = np.array([-2.6, -2.4, -2.0, -1.0, 0.0, 12.9, 13.0, 13.4, 13.6, 14.0, 40.0])
    x = (steps * s).astype(np.float32)
    t = leaf(np.append(x, np.nan))
    fake_quantize(t, s, zp, "uint8", bits=4).sum().backward()
    # rint(-2.6) + 2 = -1 (clipped); rint(-2.4) + 2 = 0 (the edge code: passes); same at the top
    np.testing.assert_array_equal(t.grad.numpy(), [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])


def test_ste_equals_the_derivative_of_clipping_away_from_the_edges():
    """Inside the range the STE is the derivative of the identity, outside that of the
    clipped constant: finite differences of clamp(x, lo, hi) away from lo and hi."""
    s, zp, qmin, qmax = np.float32(0.1), 3, 0, 15
    lo, hi = (qmin - zp) * s, (qmax - zp) * s
    rng = np.random.default_rng(4)
    x = rng.uniform(lo - 1, hi + 1, 200)
    x = x[(np.abs(x - lo) > 0.2) & (np.abs(x - hi) > 0.2)].astype(np.float32)
    t = leaf(x)
    fake_quantize(t, s, zp, "uint8", bits=4).sum().backward()
    eps = 1e-3
    x64 = x.astype(np.float64)
    fd = (np.clip(x64 + eps, lo, hi) - np.clip(x64 - eps, lo, hi)) / (2 * eps)
    np.testing.assert_allclose(t.grad.numpy(), fd, atol=1e-9)


# ---------------------------------------------------------- BatchNorm folding in training

def _conv_bn(seed=0, bias=True):
    np.random.seed(seed)
    conv = nn.Conv(3, 4, 3, stride=1, bias=bias, device=DEV)
    bn = nn.BatchNorm2d(4, device=DEV)
    rng = np.random.default_rng(seed)
    bn.weight.data = ndl.Tensor(rng.uniform(0.5, 1.5, 4).astype(np.float32), device=DEV)
    bn.bias.data = ndl.Tensor(rng.normal(0, 0.3, 4).astype(np.float32), device=DEV)
    bn.running_mean = ndl.Tensor(rng.normal(0, 0.3, 4).astype(np.float32), device=DEV)
    bn.running_var = ndl.Tensor(rng.uniform(0.3, 2, 4).astype(np.float32), device=DEV)
    return conv, bn


def _np_conv(x, w, stride=1):
    """float64 NHWC 'same' convolution."""
    K = w.shape[0]
    p = K // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    N, H, W, _ = xp.shape
    Ho, Wo = (H - K) // stride + 1, (W - K) // stride + 1
    out = np.zeros((N, Ho, Wo, w.shape[3]))
    for i in range(K):
        for j in range(K):
            patch = xp[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride, :]
            out += patch @ w[i, j]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_qat_eval_is_the_folded_layer(bias):
    conv, bn = _conv_bn(1, bias)
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 3)).astype(np.float32)
    cfg = QConfig(weight_bits=4)
    seen = []

    def fq(w):
        seen.append(w.numpy())
        obs = cfg.make_weight_observer(3)
        obs.observe(w.numpy())
        return fake_quantize(w, *obs.qparams(), "int8", 3, 4, True)

    out = conv_bn_qat(ndl.Tensor(x, device=DEV), conv, bn, fq, training=False).numpy()
    w_f, b_f = fold_bn(conv.weight.numpy(), None if conv.bias is None else conv.bias.numpy(), bn)
    np.testing.assert_allclose(seen[0], w_f, rtol=1e-5, atol=1e-6)
    obs = cfg.make_weight_observer(3)
    obs.observe(w_f)
    w_q = R.fake_quantize(w_f, *obs.qparams(), "int8", 3, 4, True)
    np.testing.assert_allclose(out, _np_conv(x, w_q) + b_f, rtol=1e-4, atol=1e-4)


def test_conv_bn_qat_training_normalizes_with_batch_statistics():
    conv, bn = _conv_bn(2)
    x = np.random.default_rng(6).normal(size=(3, 5, 5, 3)).astype(np.float32)
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    out = conv_bn_qat(ndl.Tensor(x, device=DEV), conv, bn, lambda w: w, training=True).numpy()
    z = _np_conv(x, conv.weight.numpy().astype(np.float64)) + conv.bias.numpy()
    mean, var = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
    gamma, beta = bn.weight.numpy(), bn.bias.numpy()
    np.testing.assert_allclose(out, gamma * (z - mean) / np.sqrt(var + bn.eps) + beta,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.9 * rm + 0.1 * mean, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 * rv + 0.1 * var, rtol=1e-5,
                               atol=1e-6)
    assert not bn.running_mean.requires_grad and bn.running_mean.op is None


def test_conv_bn_qat_gradients_match_finite_differences():
    """With the identity as weight quantizer the training-mode layer is a smooth function of
    x, weight, bias, gamma and beta: check its needle gradients in float64 numpy."""
    conv, bn = _conv_bn(3)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 4, 4, 3))
    g = rng.normal(size=(2, 4, 4, 4))

    def f(x, w, b, gamma, beta):
        z = _np_conv(x, w) + b
        mean, var = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
        return ((gamma * (z - mean) / np.sqrt(var + bn.eps) + beta) * g).sum()

    params = [x, conv.weight.numpy().astype(np.float64), conv.bias.numpy().astype(np.float64),
              bn.weight.numpy().astype(np.float64), bn.bias.numpy().astype(np.float64)]
    xt = leaf(x)
    out = conv_bn_qat(xt, conv, bn, lambda w: w, training=True)
    (out * ndl.Tensor(g.astype(np.float32), device=DEV)).sum().backward()
    grads = [xt.grad, conv.weight.grad, conv.bias.grad, bn.weight.grad, bn.bias.grad]
    for k, (p, got) in enumerate(zip(params, grads)):
        idx = [tuple(rng.integers(0, n) for n in p.shape) for _ in range(6)]
        for i in idx:
            e = np.zeros_like(p)
            e[i] = 1e-5
            args_p = [q + e if j == k else q for j, q in enumerate(params)]
            args_m = [q - e if j == k else q for j, q in enumerate(params)]
            fd = (f(*args_p) - f(*args_m)) / 2e-5
            assert abs(got.numpy()[i] - fd) <= 2e-3 * max(1.0, abs(fd)), (k, i, got.numpy()[i], fd)


# ------------------------------------------------------------------ the QAT model

def tiny_cnn(seed=0):
    """Conv-BN-ReLU, a residual block, Linear on (N, 1, 8, 8): fast enough to train."""
    np.random.seed(seed)
    m = nn.Sequential(nn.ConvBN(1, 4, 3, 2, device=DEV),
                      nn.Residual(nn.ConvBN(4, 4, 3, 1, device=DEV)),
                      nn.Flatten(), nn.Linear(4 * 4 * 4, 3, device=DEV))
    return m


def _calib(n=2):
    return [ndl.Tensor(b, device=DEV) for b in images(16, batches=n)]


def test_prepare_qat_structure_and_input_untouched():
    model = mnist_cnn(0)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    qat = prepare_qat(model, QConfig(weight_bits=4, activation_bits=4))
    kinds = [type(m).__name__ for _, m in qat.named_modules()
             if isinstance(m, (QATConv2d, QATLinear))]
    assert kinds == ["QATConv2d"] * 6 + ["QATLinear"], kinds
    final = [m for _, m in qat.named_modules() if isinstance(m, QATLinear)][0]
    assert final.act is None                     # the logits stay float, as in convert
    assert len(qat.fake_quants()) == 1 + 6 + 1   # input, six convs, the residual sum
    assert qat.training
    qat(_calib(1)[0])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


def test_observers_keep_updating_until_frozen():
    # BatchNorm frozen: with batch statistics the layers would normalize the scale away
    qat = prepare_qat(mnist_cnn(1), QConfig(activation_observer="moving_average")).freeze_bn()
    batches = [ndl.Tensor(b * (1 + 3 * i), device=DEV) for i, b in enumerate(images(8, batches=3))]
    qat(batches[0])
    r0 = qat.ranges()
    qat(batches[1])
    r1 = qat.ranges()
    assert all(r1[k][1] > r0[k][1] for k in r0), (r0, r1)
    qat.freeze_observers()
    qat(batches[2])
    assert qat.ranges() == r1
    qat.freeze_observers(False).eval()
    qat(batches[2])
    assert qat.ranges() == r1                    # evaluation never moves a range


def test_unobserved_fake_quant_raises():
    fq = FakeQuant(QConfig())
    fq.eval()
    with pytest.raises(RuntimeError, match="observed no data"):
        fq(ndl.Tensor(np.ones((2, 3), np.float32), device=DEV))


@pytest.mark.parametrize("bits", [8, 4])
def test_convert_matches_the_fake_quant_model(bits):
    model = mnist_cnn(2)
    cfg = QConfig(weight_bits=bits, activation_bits=bits)
    qat = prepare_qat(model, cfg).freeze_bn()
    for b in _calib(2):
        qat(b)
    qat.eval()
    qmodel = convert(qat)
    x = ndl.Tensor(images(32, seed=9)[0], device=DEV)
    fq, q = qat(x).numpy(), qmodel(x).numpy()
    err = np.abs(fq - q).mean() / np.abs(fq).mean()
    if bits == 8:   # (random weights, 4 bits: too coarse to compare; see the MNIST test)
        assert err < 0.02, err
    # the same integer modules, with the same structure, as post-training quantization
    ptq = quantize_model(model, _calib(2), cfg, progress=False)
    assert qmodel.spec() == ptq.spec()
    kinds = {type(m) for _, m in qmodel.named_modules()}
    assert {QuantizedConv2d, QuantizedLinear, QuantizedResidual} <= kinds


def test_integer_model_predicts_like_the_fake_quant_model_on_mnist():
    split = _mnist_split()
    from needle.nn.zoo import pretrained_mnist_cnn
    qat = prepare_qat(pretrained_mnist_cnn(device=DEV), QConfig(
        weight_bits=4, activation_bits=4, activation_observer="moving_average")).freeze_bn()
    xc, _ = split.train.get_batch(np.arange(256))
    for i in range(0, 256, 64):
        qat(ndl.Tensor(xc[i:i + 64], device=DEV))
    qat.eval()
    xh, yh = split.heldout.get_batch(np.arange(500))
    x = ndl.Tensor(xh, device=DEV)
    fq, q = qat(x).numpy().argmax(1), convert(qat)(x).numpy().argmax(1)
    assert (fq == q).mean() >= 0.97, (fq == q).mean()
    assert abs((fq == yh).mean() - (q == yh).mean()) <= 0.01


def test_convert_uses_the_qat_ranges():
    qat = prepare_qat(mnist_cnn(3), QConfig(activation_bits=4))
    qat(_calib(1)[0])
    qat.eval()
    qmodel = convert(qat)
    lo, hi = qat.ranges()["input_act"]
    s, zp = R.choose_qparams(lo, hi, "affine", "uint8", 4)
    assert qmodel.quant.scale.numpy()[0] == s and qmodel.quant.zero_point.numpy()[0] == zp
    assert qmodel.quant.bits == 4


def test_activation_bits_clamp_the_integer_codes():
    x = ndl.Tensor(images(8)[0] * 5, device=DEV)
    qmodel = quantize_model(mnist_cnn(4), _calib(1), QConfig(activation_bits=4),
                            progress=False)
    q = qmodel.quant(x)
    assert q.data.numpy().max() <= 15
    h = qmodel.body.modules[0](q)
    assert h.data.numpy().max() <= 15


def test_fine_tune_lowers_the_loss_and_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48)
    x = (rng.normal(0, 0.3, (48, 1, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    qat = prepare_qat(tiny_cnn(5), QConfig(weight_bits=4, activation_bits=4,
                                           activation_observer="moving_average"))
    hist = fine_tune(qat, x, y, steps=12, batch_size=48, lr=1e-2, freeze_bn_step=8,
                     freeze_observers_step=10, progress=False)
    assert len(hist["loss"]) == 12 and np.mean(hist["loss"][-3:]) < np.mean(hist["loss"][:3])
    assert not qat.training
    path = tmp_path / "qat.safetensors"
    save_qat(qat, path)
    again = load_qat(path, tiny_cnn(6), device=DEV)
    xt = ndl.Tensor(x[:16], device=DEV)
    np.testing.assert_array_equal(again(xt).numpy(), qat(xt).numpy())
    assert again.ranges() == qat.ranges()
    np.testing.assert_array_equal(convert(again)(xt).numpy(), convert(qat)(xt).numpy())


def test_bad_inputs_raise_clearly(tmp_path):
    with pytest.raises(TypeError, match="QConfig"):
        prepare_qat(mnist_cnn(0), {"weight_bits": 4})
    with pytest.raises(ValueError, match="activation_bits"):
        QConfig(activation_bits=9)
    qat = prepare_qat(mnist_cnn(0))
    with pytest.raises(ValueError, match="labels"):
        fine_tune(qat, np.zeros((4, 1, 28, 28), np.float32), np.zeros(3), steps=1)
    with pytest.raises(RuntimeError, match="observed no data"):
        convert(qat)
    with pytest.raises(NotImplementedError, match="BatchNorm1d"):
        prepare_qat(nn.Sequential(nn.Linear(4, 4, device=DEV), nn.BatchNorm1d(4, device=DEV)))
    path = tmp_path / "plain.safetensors"
    ndl.save(mnist_cnn(0), path)
    with pytest.raises(ValueError, match="not a QAT checkpoint"):
        load_qat(path, nn.MnistCNN(device=DEV))
