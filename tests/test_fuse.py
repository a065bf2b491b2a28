"""BatchNorm folding and ReLU fusion (needle/quant/fuse.py)."""
import os

import numpy as np
import pytest

from needle import nn
from needle.quant.fuse import (FusedConv2d, FusedLinear, FusedResidual, FuseRules, fold_bn,
                              fuse_model, fuse_sequence)

from quant_helpers import DEV, images, mnist_cnn, randomize_bn, resnet9, tensor


def _state(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_fold_bn_formula():
    rng = np.random.default_rng(0)
    bn = randomize_bn(nn.BatchNorm2d(4, eps=1e-3, device=DEV))
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    wf, bf = fold_bn(w, b, bn)
    g, beta = bn.weight.numpy().astype(np.float64), bn.bias.numpy().astype(np.float64)
    mu, var = bn.running_mean.numpy().astype(np.float64), bn.running_var.numpy().astype(np.float64)
    scale = g / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(wf, w * scale, rtol=1e-6)
    np.testing.assert_allclose(bf, (b - mu) * scale + beta, rtol=1e-6, atol=1e-7)
    assert wf.dtype == np.float32 and bf.shape == (4,)
    wf0, bf0 = fold_bn(w, None, bn)  # no bias: b = 0
    np.testing.assert_allclose(bf0, -mu * scale + beta, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="BatchNorm2d\\(4\\).*5 output channels"):
        fold_bn(np.zeros((3, 3, 2, 5)), None, bn)


def _bn_with(gamma, beta, mean, var, eps=1e-5):
    bn = nn.BatchNorm1d(len(gamma), eps=eps, device=DEV)
    bn.weight.data, bn.bias.data = tensor(gamma), tensor(beta)
    bn.running_mean, bn.running_var = tensor(mean), tensor(var)
    return bn.eval()


def test_fold_bn_linear_bias_shape_and_size_check():
    rng = np.random.default_rng(4)
    bn = randomize_bn(nn.BatchNorm1d(5, device=DEV), seed=2)
    w, b = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(1, 5)).astype(np.float32)
    wf, bf = fold_bn(w, b, bn)
    scale = bn.weight.numpy().astype(np.float64) / np.sqrt(
        bn.running_var.numpy().astype(np.float64) + bn.eps)
    assert wf.shape == (3, 5) and bf.shape == (5,)
    np.testing.assert_allclose(bf, (b[0] - bn.running_mean.numpy()) * scale + bn.bias.numpy(),
                               rtol=1e-6, atol=1e-7)
    # a size-1 BatchNorm would broadcast: it must be refused by name, like any other size
    with pytest.raises(ValueError, match="BatchNorm1d\\(1\\).*5 output channels"):
        fold_bn(w, b, _bn_with([1.0], [0.0], [0.0], [1.0]))


def test_fold_bn_in_float64_keeps_a_cancelling_bias():
    # beta = mean * scale rounded to float32: the folded bias is the tiny rounding residue,
    # which float32 arithmetic on the statistics gets wrong by percents
    rng = np.random.default_rng(6)
    g, var, mean = np.full(8, 3.0), rng.uniform(1e-7, 1e-5, 8), rng.uniform(1, 2, 8)
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
    scale = f32(g) / np.sqrt(f32(var) + 1e-5)
    beta = (f32(mean) * scale).astype(np.float32)
    _, bf = fold_bn(np.ones((2, 8), np.float32), None, _bn_with(g, beta, mean, var))
    np.testing.assert_allclose(bf, -f32(mean) * scale + beta, rtol=1e-4, atol=1e-9)


class _Record(FuseRules):
    conv = staticmethod(lambda conv, bn, relu: ("conv", conv, bn, relu))
    linear = staticmethod(lambda linear, bn, relu: ("linear", linear, bn, relu))
    residual = staticmethod(lambda fn, relu: ("residual", fn, relu))


def test_fuse_sequence_runs_exact_bn_types_and_relus():
    c1, c2 = nn.Conv(1, 4, 3, device=DEV), nn.Conv(4, 4, 3, device=DEV)
    lin, bn2, bn1 = nn.Linear(4, 4, device=DEV), nn.BatchNorm2d(4, device=DEV), nn.BatchNorm1d(4, device=DEV)
    r1, r2, flat = nn.ReLU(), nn.ReLU(), nn.Flatten()
    mods = [c1, bn2, r1, r2, c2, flat, lin, bn2, lin, bn1, nn.ReLU(), c1]
    given = list(mods)
    out = fuse_sequence(mods, _Record)
    assert mods == given
    assert out == [("conv", c1, bn2, True), r2, ("conv", c2, None, False), flat,
                   ("linear", lin, None, False), bn2, ("linear", lin, bn1, True),
                   ("conv", c1, None, False)]


def test_fuse_sequence_residual_branch_and_relu():
    branch = nn.Sequential(nn.Conv(4, 4, 3, device=DEV), nn.BatchNorm2d(4, device=DEV), nn.ReLU(),
                           nn.Conv(4, 4, 3, device=DEV))
    out = fuse_sequence([nn.Residual(branch), nn.ReLU(), nn.Residual(branch)], _Record)
    assert [(o[0], o[2]) for o in out] == [("residual", True), ("residual", False)]
    assert [(m[0], m[3]) for m in out[0][1].modules] == [("conv", True), ("conv", False)]


@pytest.mark.parametrize("make, shape", [(mnist_cnn, (4, 1, 28, 28)), (resnet9, (2, 3, 32, 32))])
def test_fused_model_matches_float_model(make, shape):
    model = make()
    x = tensor(np.random.default_rng(1).normal(size=shape))
    before = _state(model)
    y = model(x).numpy()
    fused = fuse_model(model)
    yf = fused(x).numpy()
    np.testing.assert_allclose(yf, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())
    # the input model is untouched and shares no tensor with the result
    after = _state(model)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    ids = {id(t) for t in model.parameters()} | {id(t) for _, t in model.named_buffers()}
    assert not ids & {id(t) for t in fused.parameters()}
    assert not ids & {id(t) for _, t in fused.named_buffers()}
    np.testing.assert_array_equal(model(x).numpy(), y)
    # no BatchNorm is left; every Conv / Linear became a fused module
    kinds = [type(m) for _, m in fused.named_modules()]
    assert nn.BatchNorm2d not in kinds and nn.Conv not in kinds and nn.Linear not in kinds


def test_fused_structure_of_mnist_cnn():
    fused = fuse_model(mnist_cnn())
    mods = fused.model.modules
    assert [type(m) for m in mods] == [FusedConv2d, FusedConv2d, FusedResidual, FusedConv2d,
                                      FusedConv2d, nn.Flatten, FusedLinear]
    assert all(m.relu for m in mods[:2] + mods[3:5])
    assert not mods[-1].relu and not mods[2].relu
    inner = mods[2].fn.modules
    assert [type(m) for m in inner] == [FusedConv2d, FusedConv2d] and inner[1].relu
    assert mods[1].stride == 2 and mods[1].padding == 1
    assert not fused.training


def test_linear_bn1d_relu_and_residual_relu_and_leftovers():
    np.random.seed(0)
    model = nn.Sequential(
        nn.Linear(6, 5, device=DEV), nn.BatchNorm1d(5, device=DEV), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Linear(5, 5, bias=False, device=DEV), nn.ReLU())),
        nn.ReLU(),
        nn.BatchNorm1d(5, device=DEV),  # not after a Linear: left alone
        nn.Linear(5, 3, device=DEV),
    )
    randomize_bn(model, seed=3)
    fused = fuse_model(model)
    kinds = [type(m) for m in fused.modules]
    assert kinds == [FusedLinear, FusedResidual, nn.BatchNorm1d, FusedLinear]
    assert fused.modules[0].relu and fused.modules[1].relu
    assert isinstance(fused.modules[1].fn, FusedLinear) and fused.modules[1].fn.relu
    assert fused.modules[2] is not model.modules[5]
    x = tensor(np.random.default_rng(2).normal(size=(7, 6)))
    np.testing.assert_allclose(fused(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_conv_without_bias_and_lone_conv():
    np.random.seed(1)
    seq = randomize_bn(nn.Sequential(nn.Conv(2, 3, 3, stride=2, bias=False, device=DEV),
                                     nn.BatchNorm2d(3, device=DEV)))
    lone = nn.Conv(2, 3, 1, device=DEV)
    x = tensor(np.random.default_rng(0).normal(size=(2, 2, 5, 5)))
    for model in (seq, lone):
        fused = fuse_model(model)
        assert isinstance(fused, FusedConv2d) and not fused.relu
        np.testing.assert_allclose(fused(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_running_var_is_used_as_stored():
    """Fold after training-mode updates: eval BatchNorm uses the stored running_var."""
    np.random.seed(0)
    model = nn.Sequential(nn.Conv(1, 4, 3, device=DEV), nn.BatchNorm2d(4, momentum=0.5,
                                                                       device=DEV))
    model.train()
    for seed in range(3):
        model(tensor(np.random.default_rng(seed).normal(2, 3, size=(4, 1, 6, 6))))
    model.eval()
    x = tensor(np.random.default_rng(9).normal(size=(2, 1, 6, 6)))
    np.testing.assert_allclose(fuse_model(model)(x).numpy(), model(x).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_fuse_generic_container_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Conv(1, 2, 3, device=DEV), nn.BatchNorm2d(2, device=DEV),
                           nn.ReLU()]
            self.head = nn.Linear(2, 2, device=DEV)

        def forward(self, x):
            for m in self.layers:
                x = m(x)
            return x

    np.random.seed(0)
    net = randomize_bn(Net())
    fused = fuse_model(net)
    assert type(fused) is Net and isinstance(fused.head, FusedLinear)
    assert len(fused.layers) == 1 and fused.layers[0].relu
    assert isinstance(net.layers[0], nn.Conv)  # original untouched
    x = tensor(images(2)[0][:, :, :6, :6])
    np.testing.assert_allclose(fused(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)


def _conv_bn_relu_f64(x, conv, bn):
    """Eval Conv ("same" padding K // 2, stride) -> BatchNorm2d -> ReLU in float64 numpy,
    written from the definitions (needle weight (K, K, C_in, C_out), NCHW input)."""
    f64 = lambda t: t.numpy().astype(np.float64)
    w, k, s = f64(conv.weight), conv.kernel_size, conv.stride
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    y = np.einsum("nchwij,ijco->nohw", win, w) + f64(conv.bias).reshape(1, -1, 1, 1)
    ch = lambda t: f64(t).reshape(1, -1, 1, 1)
    y = (y - ch(bn.running_mean)) / np.sqrt(ch(bn.running_var) + bn.eps) * ch(bn.weight) \
        + ch(bn.bias)
    return np.maximum(y, 0)


def test_fused_conv_matches_torch_conv_bn_relu():
    np.random.seed(3)
    seq = randomize_bn(nn.Sequential(nn.Conv(3, 5, 3, stride=2, device=DEV),
                                     nn.BatchNorm2d(5, eps=1e-3, device=DEV), nn.ReLU()), seed=4)
    conv, bn = seq.modules[0], seq.modules[1]
    x = np.random.default_rng(5).normal(size=(2, 3, 9, 9)).astype(np.float32)
    want = _conv_bn_relu_f64(x, conv, bn)
    # Grading (NEEDLE_TEST_PROFILE=grading) checks the fused model against the float64
    # reference only: importing torch costs seconds per grading, and `make test` pins that
    # reference to torch here.
    if os.environ.get("NEEDLE_TEST_PROFILE") != "grading":
        torch = pytest.importorskip("torch")
        tconv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
        tbn = torch.nn.BatchNorm2d(5, eps=1e-3)
        with torch.no_grad():
            # needle (K, K, C_in, C_out) -> torch (C_out, C_in, K, K)
            tconv.weight.copy_(torch.from_numpy(
                conv.weight.numpy().transpose(3, 2, 0, 1).copy()))
            tconv.bias.copy_(torch.from_numpy(conv.bias.numpy()))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(tbn, name).copy_(torch.from_numpy(getattr(bn, name).numpy()))
        tbn.eval()
        got = torch.relu(tbn(tconv(torch.from_numpy(x)))).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    fused = fuse_model(seq)
    assert isinstance(fused, FusedConv2d) and fused.relu
    np.testing.assert_allclose(fused(tensor(x)).numpy(), want, rtol=1e-4, atol=1e-5)


def test_fusing_a_fused_model_changes_nothing():
    # a FusedResidual is a Residual: fused again it must keep the ReLU it carries
    def conv_bn(c_in, c_out):
        return [nn.Conv(c_in, c_out, 3, device=DEV), nn.BatchNorm2d(c_out, device=DEV)]
    model = randomize_bn(nn.Sequential(
        *conv_bn(1, 3), nn.ReLU(),
        nn.Residual(nn.Sequential(*conv_bn(3, 3), nn.ReLU(), *conv_bn(3, 3))), nn.ReLU(),
        nn.Residual(nn.Sequential(*conv_bn(3, 3))),
        nn.Flatten(), nn.Linear(3 * 6 * 6, 4, device=DEV)), seed=7).eval()
    x = tensor(images(2, hw=6)[0])
    once = fuse_model(model)
    twice = fuse_model(once)
    kinds = [(type(m), getattr(m, "relu", None)) for m in once.modules]
    assert kinds == [(FusedConv2d, True), (FusedResidual, True), (FusedResidual, False),
                     (nn.Flatten, None), (FusedLinear, False)]
    assert [(type(m), getattr(m, "relu", None)) for m in twice.modules] == kinds
    np.testing.assert_allclose(once(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(twice(x).numpy(), once(x).numpy())
