"""nn modules (values and gradients against numpy/PyTorch, train/eval behaviour), the Module
API (naming, state_dict round trips and load errors) and the initializers."""
import math

import numpy as np
import pytest

import needle as ndl
import needle.init as init
import needle.nn as nn
from needle import ops


def T(a, device, requires_grad=True):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), device=device, requires_grad=requires_grad)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# init


def test_init_shapes_dtypes_devices(device):
    for fn in (init.rand, init.randn, init.ones, init.zeros):
        t = fn(2, 3, device=device)
        assert t.shape == (2, 3) and t.dtype == "float32" and t.device == device
        assert not t.requires_grad
    assert init.zeros((4, 5), device=device).shape == (4, 5)
    assert init.ones(3, device=device, requires_grad=True).requires_grad
    np.testing.assert_array_equal(init.constant(2, 2, c=7.0, device=device).numpy(), np.full((2, 2), 7))
    z = init.zeros_like(T(np.ones((3, 2)), device))
    o = init.ones_like(T(np.ones((3, 2)), device))
    assert z.shape == o.shape == (3, 2) and z.device == device
    np.testing.assert_array_equal(z.numpy() + 1, o.numpy())


def test_init_random_follows_numpy_seed(device):
    np.random.seed(3)
    a = init.rand(4, 5, low=-2, high=3, device=device).numpy()
    np.random.seed(3)
    expected = np.random.rand(4, 5).astype(np.float32) * 5 - 2
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    assert a.min() >= -2 and a.max() < 3
    np.random.seed(3)
    b = init.randn(1000, mean=1.0, std=2.0, device=device).numpy()
    assert abs(b.mean() - 1.0) < 0.2 and abs(b.std() - 2.0) < 0.2


def test_randb_and_one_hot(device):
    np.random.seed(0)
    m = init.randb(10000, p=0.3, device=device).numpy()
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert abs(m.mean() - 0.3) < 0.02
    y = init.one_hot(4, T([0, 3, 1], device, requires_grad=False), device=device)
    np.testing.assert_array_equal(y.numpy(), np.eye(4)[[0, 3, 1]])
    y2 = init.one_hot(3, np.array([2, 0]), device=device)
    np.testing.assert_array_equal(y2.numpy(), np.eye(3)[[2, 0]])
    with pytest.raises(IndexError, match="one_hot"):
        init.one_hot(3, np.array([3]), device=device)


@pytest.mark.parametrize("name,fan_in,fan_out", [("xavier_uniform", 50, 30), ("xavier_normal", 50, 30),
                                                 ("kaiming_uniform", 60, 20), ("kaiming_normal", 60, 20)])
def test_initializer_scales(device, name, fan_in, fan_out):
    np.random.seed(1)
    w = getattr(init, name)(fan_in, fan_out, device=device).numpy()
    assert w.shape == (fan_in, fan_out)
    if name == "xavier_uniform":
        a = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= a and np.abs(w).max() > 0.9 * a
    elif name == "xavier_normal":
        assert abs(w.std() - math.sqrt(2 / (fan_in + fan_out))) < 0.02
    elif name == "kaiming_uniform":
        b = math.sqrt(2) * math.sqrt(3 / fan_in)
        assert np.abs(w).max() <= b and np.abs(w).max() > 0.9 * b
    else:
        assert abs(w.std() - math.sqrt(2) / math.sqrt(fan_in)) < 0.02


def test_kaiming_conv_shape(device):
    w = init.kaiming_uniform(3 * 9, 8 * 9, shape=(3, 3, 3, 8), device=device)
    assert w.shape == (3, 3, 3, 8)
    assert np.abs(w.numpy()).max() <= math.sqrt(2) * math.sqrt(3 / 27)
    with pytest.raises(ValueError, match="sigmoid"):
        init.kaiming_uniform(3, 3, nonlinearity="sigmoid")


# --------------------------------------------------------------------------------------------
# simple layers


def test_linear(device):
    np.random.seed(0)
    layer = nn.Linear(5, 3, device=device)
    assert layer.weight.shape == (5, 3) and layer.bias.shape == (1, 3)
    bound = math.sqrt(2) * math.sqrt(3 / 5)
    assert np.abs(layer.weight.numpy()).max() <= bound
    x = rnd(4, 5)
    X = T(x, device)
    y = layer(X)
    W, b = layer.weight.numpy(), layer.bias.numpy()
    np.testing.assert_allclose(y.numpy(), x @ W + b, rtol=1e-5, atol=1e-5)
    c = rnd(4, 3, seed=1)
    (y * T(c, device)).sum().backward()
    np.testing.assert_allclose(layer.weight.grad.numpy(), x.T @ c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.bias.grad.numpy(), c.sum(0, keepdims=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(X.grad.numpy(), c @ W.T, rtol=1e-5, atol=1e-5)
    # batched (3-D) input and no bias
    layer2 = nn.Linear(5, 2, bias=False, device=device)
    assert layer2.bias is None and len(layer2.parameters()) == 1
    x3 = rnd(2, 3, 5, seed=2)
    np.testing.assert_allclose(layer2(T(x3, device)).numpy(), x3 @ layer2.weight.numpy(),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        layer(T(rnd(4, 6), device))


def test_activations_flatten_identity(device):
    x = rnd(2, 3, 4)
    X = T(x, device)
    np.testing.assert_allclose(nn.ReLU()(X).numpy(), np.maximum(x, 0))
    np.testing.assert_allclose(nn.Tanh()(X).numpy(), np.tanh(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nn.Sigmoid()(X).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(nn.Identity()(X).numpy(), x)
    np.testing.assert_array_equal(nn.Flatten()(X).numpy(), x.reshape(2, 12))


def test_sequential_and_residual(device):
    np.random.seed(0)
    lin = nn.Linear(4, 4, device=device)
    model = nn.Sequential(nn.Residual(nn.Sequential(lin, nn.ReLU())), nn.Identity())
    x = rnd(3, 4)
    expected = np.maximum(x @ lin.weight.numpy() + lin.bias.numpy(), 0) + x
    np.testing.assert_allclose(model(T(x, device)).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(model) == 2 and model[1].__class__ is nn.Identity


def test_softmax_loss(device):
    logits = rnd(5, 7) * 3
    y = np.array([0, 6, 3, 3, 1])
    L = T(logits, device)
    loss = nn.SoftmaxLoss()(L, T(y, device, requires_grad=False))
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    np.testing.assert_allclose(loss.numpy(), -logp[np.arange(5), y].mean(), rtol=1e-5)
    loss.backward()
    p = np.exp(logp)
    np.testing.assert_allclose(L.grad.numpy(), (p - np.eye(7)[y]) / 5, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# normalization, dropout


def _torch_bn(torch, x, w, b, eps, momentum, dims):
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    mean = tx.mean(dim=dims, keepdim=True)
    var = tx.var(dim=dims, unbiased=False, keepdim=True)
    shape = [1] * x.ndim
    shape[1] = -1
    ty = (tx - mean) / torch.sqrt(var + eps) * tw.reshape(shape) + tb.reshape(shape)
    return tx, tw, tb, ty


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_batchnorm_train_matches_torch(device, kind):
    torch = pytest.importorskip("torch")
    C = 3
    x = rnd(6, C) * 2 + 1 if kind == "1d" else rnd(4, C, 5, 5) * 2 + 1
    dims = (0,) if kind == "1d" else (0, 2, 3)
    bn = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(C, device=device, momentum=0.2)
    bn.weight.data = T(rnd(C, seed=5), device)
    bn.bias.data = T(rnd(C, seed=6), device)
    X = T(x, device)
    y = bn(X)
    c = rnd(*x.shape, seed=7)
    (y * T(c, device)).sum().backward()

    tx, tw, tb, ty = _torch_bn(torch, x, bn.weight.numpy(), bn.bias.numpy(), bn.eps, 0.2, dims)
    (ty * torch.tensor(c, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.weight.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.bias.grad.numpy(), tb.grad.numpy(), rtol=1e-4, atol=1e-4)
    # torch's own module gives the same running mean (its running var is unbiased; the
    # course uses the biased batch variance)
    tbn = (torch.nn.BatchNorm1d if kind == "1d" else torch.nn.BatchNorm2d)(C, momentum=0.2)
    tbn.train()
    tbn(torch.tensor(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.8 + 0.2 * x.var(axis=dims), rtol=1e-5)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_batchnorm_running_stats_and_eval(device, kind):
    C = 4
    bn = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(C, device=device, momentum=0.1)
    dims = (0,) if kind == "1d" else (0, 2, 3)
    shape = (8, C) if kind == "1d" else (2, C, 3, 3)
    rm, rv = np.zeros(C), np.ones(C)
    for s in range(3):
        x = rnd(*shape, seed=s) * (s + 1) + s
        bn(T(x, device))
        rm = 0.9 * rm + 0.1 * x.mean(axis=dims)
        rv = 0.9 * rv + 0.1 * x.var(axis=dims)
    np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5, atol=1e-6)
    assert not bn.running_mean.requires_grad
    bn.eval()
    x = rnd(*shape, seed=10)
    y = bn(T(x, device)).numpy()
    bshape = (1, C) if kind == "1d" else (1, C, 1, 1)
    expected = (x - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + bn.eps)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)  # unchanged


def test_batchnorm_bad_input(device):
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        nn.BatchNorm1d(4, device=device)(T(rnd(2, 5), device))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\)"):
        nn.BatchNorm2d(4, device=device)(T(rnd(2, 3, 4, 4), device))


def test_layernorm(device):
    x = rnd(4, 6) * 3 + 2
    ln = nn.LayerNorm1d(6, device=device)
    ln.weight.data = T(rnd(6, seed=1), device)
    ln.bias.data = T(rnd(6, seed=2), device)
    X = T(x, device)
    y = ln(X)
    w, b = ln.weight.numpy(), ln.bias.numpy()

    def ref(x):
        mu = x.mean(1, keepdims=True)
        var = ((x - mu) ** 2).mean(1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b
    np.testing.assert_allclose(y.numpy(), ref(x.astype(np.float64)), rtol=1e-4, atol=1e-4)
    c = rnd(4, 6, seed=3)
    (y * T(c, device)).sum().backward()
    # finite differences of the float64 reference
    x64, g = x.astype(np.float64), np.zeros((4, 6))
    for i in range(4):
        for j in range(6):
            d = np.zeros_like(x64)
            d[i, j] = 1e-6
            g[i, j] = ((ref(x64 + d) * c).sum() - (ref(x64 - d) * c).sum()) / 2e-6
    np.testing.assert_allclose(X.grad.numpy(), g, rtol=1e-3, atol=1e-3)


def test_dropout(device):
    x = np.ones((200, 50), dtype=np.float32)
    drop = nn.Dropout(0.25)
    np.random.seed(0)
    y = drop(T(x, device)).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    drop.eval()
    np.testing.assert_array_equal(drop(T(x, device)).numpy(), x)
    drop.train()
    assert drop.training
    np.testing.assert_array_equal(nn.Dropout(0.0)(T(x, device)).numpy(), x)
    with pytest.raises(ValueError, match="1.5"):
        nn.Dropout(1.5)


# --------------------------------------------------------------------------------------------
# convolution module


@pytest.mark.parametrize("k,stride,bias", [(3, 1, True), (3, 2, True), (1, 1, False), (5, 2, True)])
def test_conv_module(device, k, stride, bias):
    np.random.seed(0)
    conv = nn.Conv(3, 4, k, stride=stride, bias=bias, device=device)
    assert conv.weight.shape == (k, k, 3, 4)
    assert np.abs(conv.weight.numpy()).max() <= math.sqrt(2) * math.sqrt(3 / (3 * k * k))
    if bias:
        assert conv.bias.shape == (4,)
        assert np.abs(conv.bias.numpy()).max() <= 1 / math.sqrt(3 * k * k)
    x = rnd(2, 3, 9, 9)
    y = conv(T(x, device))
    assert y.shape == (2, 4, math.ceil(9 / stride), math.ceil(9 / stride))
    torch = pytest.importorskip("torch")
    tw = torch.tensor(conv.weight.numpy().transpose(3, 2, 0, 1))
    tb = torch.tensor(conv.bias.numpy()) if bias else None
    ty = torch.nn.functional.conv2d(torch.tensor(x), tw, tb, stride=stride, padding=k // 2)
    np.testing.assert_allclose(y.numpy(), ty.numpy(), rtol=1e-4, atol=1e-4)


def test_conv_module_backward_matches_torch(device):
    torch = pytest.importorskip("torch")
    np.random.seed(1)
    conv = nn.Conv(2, 3, 3, stride=2, device=device)
    x = rnd(2, 2, 7, 7)
    X = T(x, device)
    y = conv(X)
    c = rnd(*y.shape, seed=4)
    (y * T(c, device)).sum().backward()
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(conv.weight.numpy().transpose(3, 2, 0, 1), dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(conv.bias.numpy(), dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=2, padding=1)
    (ty * torch.tensor(c, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.weight.grad.numpy(), tw.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.bias.grad.numpy(), tb.grad.numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Module API


class Net(nn.Module):
    def __init__(self, device=None):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv(1, 2, 3, device=device), nn.BatchNorm2d(2, device=device), nn.ReLU())
        self.block = nn.Residual(nn.Sequential(nn.Linear(8, 8, device=device), nn.ReLU()))
        self.heads = [nn.Linear(8, 3, device=device), nn.Linear(8, 2, bias=False, device=device)]

    def forward(self, x):
        h = nn.Flatten()(self.features(x))
        h = self.block(h)
        return self.heads[0](h)


EXPECTED_KEYS = [
    "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
    "features.1.running_mean", "features.1.running_var",
    "block.fn.0.weight", "block.fn.0.bias",
    "heads.0.weight", "heads.0.bias", "heads.1.weight",
]


def test_named_parameters_buffers_modules(device):
    net = Net(device)
    assert [k for k, _ in net.named_parameters()] == [
        k for k in EXPECTED_KEYS if "running" not in k]
    assert [k for k, _ in net.named_buffers()] == ["features.1.running_mean", "features.1.running_var"]
    assert len(net.parameters()) == 9
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())
    names = [n for n, _ in net.named_modules()]
    assert names[:5] == ["", "features", "features.0", "features.1", "features.2"]
    assert "block.fn.0" in names and "heads.1" in names
    assert [n for n, _ in net.named_children()] == ["features", "block", "heads.0", "heads.1"]
    assert len(net._children()) == 10


def test_train_eval_recursive(device):
    net = Net(device)
    net.eval()
    assert all(not m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_state_dict_contents(device):
    net = Net(device)
    sd = net.state_dict()
    assert list(sd) == EXPECTED_KEYS
    for k, v in sd.items():
        assert isinstance(v, ndl.Tensor) and not v.requires_grad and v.is_leaf()
    np.testing.assert_array_equal(sd["features.1.running_var"].numpy(), np.ones(2))


def test_state_dict_round_trip(device):
    np.random.seed(0)
    a, b = Net(device), Net(device)
    x = T(rnd(2, 1, 2, 2), device)
    a(x)  # update BN running statistics
    a.eval()
    b.eval()
    params_before = b.parameters()
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(p is q for p, q in zip(params_before, b.parameters()))  # same objects
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=k)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    # the loaded values are copies: changing the source later leaves b alone
    w = b.features[0].weight.numpy().copy()
    a.features[0].weight.data = a.features[0].weight.data * 2
    np.testing.assert_array_equal(b.features[0].weight.numpy(), w)


def test_load_state_dict_accepts_ndarray_and_numpy(device):
    lin = nn.Linear(3, 2, device=device)
    w = rnd(3, 2)
    b = rnd(1, 2)
    lin.load_state_dict({"weight": w, "bias": ndl.backend_ndarray.array(b, device=ndl.cpu_numpy())})
    np.testing.assert_array_equal(lin.weight.numpy(), w)
    np.testing.assert_array_equal(lin.bias.numpy(), b)
    assert lin.weight.device == device and lin.bias.device == device


def test_load_state_dict_errors(device):
    lin = nn.Linear(3, 2, device=device)
    w0 = lin.weight.numpy().copy()
    good = {"weight": rnd(3, 2), "bias": rnd(1, 2)}
    with pytest.raises(KeyError, match=r"missing keys \['bias'\].*unexpected keys \['extra'\]"):
        lin.load_state_dict({"weight": good["weight"], "extra": good["bias"]})
    with pytest.raises(ValueError, match=r"'weight'.*expected shape \(3, 2\), got \(2, 3\)"):
        lin.load_state_dict({"weight": rnd(2, 3), "bias": good["bias"]})
    with pytest.raises(ValueError, match=r"'bias'.*expected dtype float32, got int8"):
        lin.load_state_dict({"weight": good["weight"], "bias": np.zeros((1, 2), dtype=np.int8)})
    with pytest.raises(ValueError, match=r"'weight'.*expected dtype float32, got float64"):
        lin.load_state_dict({"weight": good["weight"].astype(np.float64), "bias": good["bias"]})
    with pytest.raises(TypeError, match="'bias'.*list"):
        lin.load_state_dict({"weight": good["weight"], "bias": [[1.0, 2.0]]})
    # nothing was changed by the failed loads (every entry is checked first)
    np.testing.assert_array_equal(lin.weight.numpy(), w0)
    # non-strict: loads what matches and reports the rest
    res = lin.load_state_dict({"weight": good["weight"], "extra": good["bias"]}, strict=False)
    assert res.missing_keys == ["bias"] and res.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(lin.weight.numpy(), good["weight"])


def test_register_buffer(device):
    m = nn.Module()
    q = ndl.Tensor(np.array([1, -2, 3], dtype=np.int8), device=device, dtype="int8",
                   requires_grad=False)
    m.register_buffer("qweight", q)
    m.register_buffer("scale", init.ones(3, device=device))
    assert [k for k, _ in m.named_buffers()] == ["qweight", "scale"]
    sd = m.state_dict()
    assert sd["qweight"].dtype == "int8"
    m.load_state_dict({"qweight": np.array([4, 5, 6], dtype=np.int8), "scale": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(m.qweight.numpy(), [4, 5, 6])
    assert m.qweight.dtype == "int8"
    with pytest.raises(TypeError, match="'w'"):
        m.register_buffer("w", np.zeros(3))


def test_shared_parameter_listed_once(device):
    lin = nn.Linear(2, 2, device=device)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(model.parameters()) == 2
    assert [k for k, _ in model.named_parameters()] == ["0.weight", "0.bias"]


def test_module_to_device(device):
    net = Net(ndl.cpu_numpy())
    x = T(rnd(2, 1, 2, 2), ndl.cpu_numpy())
    net.eval()
    expected = net(x).numpy()
    params = net.parameters()
    net.to(device)
    assert all(p is q for p, q in zip(params, net.parameters()))
    assert all(t.device == device for t in net.state_dict().values())
    np.testing.assert_allclose(net(T(x.numpy(), device)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_small_cnn_gradients_match_torch(device):
    """Conv -> BatchNorm2d -> ReLU -> Residual(Conv, BN, ReLU) -> strided Conv -> Flatten
    -> Linear -> SoftmaxLoss: loss and every parameter gradient against PyTorch."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    np.random.seed(0)

    def block(a, b, s):
        return nn.Sequential(nn.Conv(a, b, 3, stride=s, device=device), nn.BatchNorm2d(b, device=device),
                             nn.ReLU())
    model = nn.Sequential(block(1, 4, 1), nn.Residual(block(4, 4, 1)), block(4, 6, 2), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 5, device=device))
    x = rnd(3, 1, 8, 8)
    y = np.array([0, 4, 2])
    loss = nn.SoftmaxLoss()(model(T(x, device, requires_grad=False)), T(y, device, requires_grad=False))
    loss.backward()

    params = {k: torch.tensor(v.numpy().astype(np.float64), requires_grad=True)
              for k, v in model.state_dict().items() if "running" not in k}

    def tblock(h, pre, s):
        w = params[pre + ".0.weight"].permute(3, 2, 0, 1)
        h = F.conv2d(h, w, params[pre + ".0.bias"], stride=s, padding=1)
        h = F.batch_norm(h, None, None, params[pre + ".1.weight"], params[pre + ".1.bias"],
                         training=True, eps=1e-5)
        return F.relu(h)
    h = tblock(torch.tensor(x, dtype=torch.float64), "0", 1)
    h = tblock(h, "1.fn", 1) + h
    h = tblock(h, "2", 2).reshape(3, -1)
    logits = h @ params["4.weight"] + params["4.bias"]
    tloss = F.cross_entropy(logits, torch.tensor(y))
    tloss.backward()
    np.testing.assert_allclose(loss.numpy(), tloss.item(), rtol=1e-5)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), params[name].grad.numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=name)
