"""Embedding, RNN and LSTM: values against a float64 numpy reference and torch, gradients
against finite differences of the reference, non-contiguous inputs, bad inputs."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from conftest import DEVICES
from test_ops import numeric_grad


# ---- float64 numpy reference (weights in the course layout: W_ih (I, G*H)) -----------------
def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def ref_lstm_layer(X, h, c, W_ih, W_hh, b):
    H = h.shape[1]
    outs = []
    for x in X:
        z = x @ W_ih + h @ W_hh + b
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs), h, c


def ref_rnn_layer(X, h, W_ih, W_hh, b, nonlinearity):
    act = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0.0))
    outs = []
    for x in X:
        h = act(x @ W_ih + h @ W_hh + b)
        outs.append(h)
    return np.stack(outs), h


def _params(rng, I, H, G, bias):
    p = {"W_ih": rng.standard_normal((I, G * H)) * 0.5, "W_hh": rng.standard_normal((H, G * H)) * 0.5}
    if bias:
        p["bias_ih"] = rng.standard_normal(G * H) * 0.5
        p["bias_hh"] = rng.standard_normal(G * H) * 0.5
    return p


def _bias(p, width):
    return p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else np.zeros(width)


def _tensors(values, device):
    return {k: ndl.Tensor(v.astype(np.float32), device=device) for k, v in values.items()}


def _fd_grad(f, values, key):
    """Finite differences of the float64 scalar f(values) w.r.t. values[key] (in place)."""
    return numeric_grad(lambda _: f(values), values[key])


# ---- fused layer ops: forward vs reference, gradient vs finite differences -----------------
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_layer_matches_reference_and_finite_differences(device, bias):
    rng = np.random.default_rng(1)
    T, bs, I, H = 3, 2, 3, 2
    vals = {"X": rng.standard_normal((T, bs, I)), "h0": rng.standard_normal((bs, H)),
            "c0": rng.standard_normal((bs, H)), **_params(rng, I, H, 4, bias)}
    w_out, w_h, w_c = (rng.standard_normal(s) for s in [(T, bs, H), (bs, H), (bs, H)])

    def loss(v):
        out, h, c = ref_lstm_layer(v["X"], v["h0"], v["c0"], v["W_ih"], v["W_hh"], _bias(v, 4 * H))
        return float((out * w_out).sum() + (h * w_h).sum() + (c * w_c).sum())

    t = _tensors(vals, device)
    out = ndl.ops.lstm_layer(t["X"], t["h0"], t["c0"], t["W_ih"], t["W_hh"],
                             t.get("bias_ih"), t.get("bias_hh"))
    ref = ref_lstm_layer(vals["X"], vals["h0"], vals["c0"], vals["W_ih"], vals["W_hh"],
                         _bias(vals, 4 * H))
    for k in range(3):
        np.testing.assert_allclose(out[k].numpy(), ref[k], rtol=1e-5, atol=1e-5)
    weights = [ndl.Tensor(w.astype(np.float32), device=device, requires_grad=False)
               for w in (w_out, w_h, w_c)]
    total = sum(((out[k] * weights[k]).sum() for k in range(3)), start=ndl.Tensor(0.0, device=device))
    total.backward()
    for key in vals:
        np.testing.assert_allclose(t[key].grad.numpy(), _fd_grad(loss, vals, key),
                                   rtol=1e-3, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_layer_matches_reference_and_finite_differences(device, nonlinearity, bias):
    rng = np.random.default_rng(2)
    T, bs, I, H = 4, 2, 3, 3
    vals = {"X": rng.standard_normal((T, bs, I)), "h0": rng.standard_normal((bs, H)),
            **_params(rng, I, H, 1, bias)}
    w_out, w_h = rng.standard_normal((T, bs, H)), rng.standard_normal((bs, H))

    def loss(v):
        out, h = ref_rnn_layer(v["X"], v["h0"], v["W_ih"], v["W_hh"], _bias(v, H), nonlinearity)
        return float((out * w_out).sum() + (h * w_h).sum())

    t = _tensors(vals, device)
    out = ndl.ops.rnn_layer(t["X"], t["h0"], t["W_ih"], t["W_hh"], t.get("bias_ih"),
                            t.get("bias_hh"), nonlinearity=nonlinearity)
    ref = ref_rnn_layer(vals["X"], vals["h0"], vals["W_ih"], vals["W_hh"], _bias(vals, H),
                        nonlinearity)
    np.testing.assert_allclose(out[0].numpy(), ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), ref[1], rtol=1e-5, atol=1e-5)
    total = (out[0] * ndl.Tensor(w_out.astype(np.float32), device=device)).sum() \
        + (out[1] * ndl.Tensor(w_h.astype(np.float32), device=device)).sum()
    total.backward()
    for key in vals:
        np.testing.assert_allclose(t[key].grad.numpy(), _fd_grad(loss, vals, key),
                                   rtol=1e-3, atol=1e-4, err_msg=key)


# ---- modules against torch (weights copied across, torch stores W transposed) ---------------
def _copy_torch_weights(cells, model_, bias, device):
    for k, cell in enumerate(cells):
        suffix = f"_l{k}" if hasattr(model_, "num_layers") else ""
        cell.W_ih = ndl.Tensor(getattr(model_, "weight_ih" + suffix).detach().numpy().T, device=device)
        cell.W_hh = ndl.Tensor(getattr(model_, "weight_hh" + suffix).detach().numpy().T, device=device)
        if bias:
            cell.bias_ih = ndl.Tensor(getattr(model_, "bias_ih" + suffix).detach().numpy(), device=device)
            cell.bias_hh = ndl.Tensor(getattr(model_, "bias_hh" + suffix).detach().numpy(), device=device)


def _assert_weight_grads(cells, model_, bias):
    for k, cell in enumerate(cells):
        suffix = f"_l{k}" if hasattr(model_, "num_layers") else ""
        names = ["ih", "hh"]
        for n in names:
            np.testing.assert_allclose(getattr(cell, "W_" + n).grad.numpy(),
                                       getattr(model_, f"weight_{n}{suffix}").grad.numpy().T,
                                       rtol=1e-4, atol=1e-5)
            if bias:
                np.testing.assert_allclose(getattr(cell, "bias_" + n).grad.numpy(),
                                           getattr(model_, f"bias_{n}{suffix}").grad.numpy(),
                                           rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_layers,bias,init_hidden", [(1, True, True), (2, False, False),
                                                         (3, True, False)])
def test_lstm_matches_torch(device, num_layers, bias, init_hidden):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    T, bs, I, H = 5, 3, 4, 6
    x = rng.standard_normal((T, bs, I)).astype(np.float32)
    h0 = rng.standard_normal((num_layers, bs, H)).astype(np.float32)
    c0 = rng.standard_normal((num_layers, bs, H)).astype(np.float32)
    model_ = torch.nn.LSTM(I, H, num_layers=num_layers, bias=bias)
    x_ = torch.tensor(x, requires_grad=True)
    state_ = (torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True))
    out_, (h_, c_) = model_(x_, state_ if init_hidden else None)

    model = nn.LSTM(I, H, num_layers, bias, device=device)
    _copy_torch_weights(model.lstm_cells, model_, bias, device)
    xt = ndl.Tensor(x, device=device)
    state = (ndl.Tensor(h0, device=device), ndl.Tensor(c0, device=device))
    out, (h, c) = model(xt, state if init_hidden else None)
    assert out.device == device
    for a, b in [(out, out_), (h, h_), (c, c_)]:
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-5)

    w = rng.standard_normal((T, bs, H)).astype(np.float32)
    ((out * ndl.Tensor(w, device=device)).sum() + h.sum() + c.sum()).backward()
    ((out_ * torch.tensor(w)).sum() + h_.sum() + c_.sum()).backward()
    np.testing.assert_allclose(xt.grad.numpy(), x_.grad.numpy(), rtol=1e-4, atol=1e-5)
    if init_hidden:
        np.testing.assert_allclose(state[0].grad.numpy(), state_[0].grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state[1].grad.numpy(), state_[1].grad.numpy(), rtol=1e-4, atol=1e-5)
    _assert_weight_grads(model.lstm_cells, model_, bias)


@pytest.mark.parametrize("nonlinearity,num_layers,bias", [("tanh", 2, True), ("relu", 1, False),
                                                          ("relu", 2, True)])
def test_rnn_matches_torch(device, nonlinearity, num_layers, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    T, bs, I, H = 6, 2, 3, 5
    x = rng.standard_normal((T, bs, I)).astype(np.float32)
    h0 = rng.standard_normal((num_layers, bs, H)).astype(np.float32)
    model_ = torch.nn.RNN(I, H, num_layers=num_layers, bias=bias, nonlinearity=nonlinearity)
    x_ = torch.tensor(x, requires_grad=True)
    out_, h_ = model_(x_, torch.tensor(h0))
    model = nn.RNN(I, H, num_layers, bias, nonlinearity=nonlinearity, device=device)
    _copy_torch_weights(model.rnn_cells, model_, bias, device)
    xt = ndl.Tensor(x, device=device)
    out, h = model(xt, ndl.Tensor(h0, device=device))
    np.testing.assert_allclose(out.numpy(), out_.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h.numpy(), h_.detach().numpy(), rtol=1e-5, atol=1e-5)
    (out.sum() + h.sum()).backward()
    (out_.sum() + h_.sum()).backward()
    np.testing.assert_allclose(xt.grad.numpy(), x_.grad.numpy(), rtol=1e-4, atol=1e-5)
    _assert_weight_grads(model.rnn_cells, model_, bias)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm"])
def test_cells_match_torch(device, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    bs, I, H = 4, 3, 5
    x = rng.standard_normal((bs, I)).astype(np.float32)
    h0 = rng.standard_normal((bs, H)).astype(np.float32)
    c0 = rng.standard_normal((bs, H)).astype(np.float32)
    if kind == "lstm":
        model_, model = torch.nn.LSTMCell(I, H), nn.LSTMCell(I, H, device=device)
        _copy_torch_weights([model], model_, True, device)
        h_, c_ = model_(torch.tensor(x), (torch.tensor(h0), torch.tensor(c0)))
        h, c = model(ndl.Tensor(x, device=device),
                     (ndl.Tensor(h0, device=device), ndl.Tensor(c0, device=device)))
        np.testing.assert_allclose(c.numpy(), c_.detach().numpy(), rtol=1e-5, atol=1e-5)
        (h.sum() + c.sum()).backward()
        (h_.sum() + c_.sum()).backward()
    else:
        nl = kind.split("_")[1]
        model_ = torch.nn.RNNCell(I, H, nonlinearity=nl)
        model = nn.RNNCell(I, H, nonlinearity=nl, device=device)
        _copy_torch_weights([model], model_, True, device)
        h_ = model_(torch.tensor(x), torch.tensor(h0))
        h = model(ndl.Tensor(x, device=device), ndl.Tensor(h0, device=device))
        h.sum().backward()
        h_.sum().backward()
    np.testing.assert_allclose(h.numpy(), h_.detach().numpy(), rtol=1e-5, atol=1e-5)
    _assert_weight_grads([model], model_, True)


def test_cells_default_to_zero_state(device):
    rng = np.random.default_rng(6)
    x = ndl.Tensor(rng.standard_normal((2, 3)).astype(np.float32), device=device)
    lstm = nn.LSTMCell(3, 4, device=device)
    zeros = ndl.init.zeros(2, 4, device=device)
    for a, b in zip(lstm(x), lstm(x, (zeros, zeros))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    rnn = nn.RNNCell(3, 4, device=device)
    np.testing.assert_array_equal(rnn(x).numpy(), rnn(x, zeros).numpy())


def test_parameters_and_init_range(device):
    np.random.seed(0)
    lstm = nn.LSTM(3, 8, num_layers=2, device=device)
    names = [n for n, _ in lstm.named_parameters()]
    assert names == [f"lstm_cells.{k}.{w}" for k in range(2)
                     for w in ("W_ih", "W_hh", "bias_ih", "bias_hh")]
    shapes = [tuple(p.shape) for p in lstm.parameters()]
    assert shapes == [(3, 32), (8, 32), (32,), (32,), (8, 32), (8, 32), (32,), (32,)]
    bound = np.sqrt(1 / 8)
    values = np.concatenate([p.numpy().ravel() for p in lstm.parameters()])
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
    assert all(isinstance(p, nn.Parameter) for p in lstm.parameters())
    assert [n for n, _ in nn.RNN(2, 3, bias=False).named_parameters()] == \
        ["rnn_cells.0.W_ih", "rnn_cells.0.W_hh"]


def test_non_contiguous_inputs(device):
    """A permuted (strided) input and state give the same result as compact copies."""
    rng = np.random.default_rng(7)
    T, bs, I, H = 4, 3, 2, 5
    x = rng.standard_normal((bs, T, I)).astype(np.float32)
    h0 = rng.standard_normal((bs, 1, H)).astype(np.float32)
    lstm = nn.LSTM(I, H, device=device)
    x_view = ndl.ops.transpose(ndl.Tensor(x, device=device), (0, 1))
    h_view = ndl.ops.transpose(ndl.Tensor(h0, device=device), (0, 1))
    assert not x_view.realize_cached_data().is_compact()
    out, (h, c) = lstm(x_view, (h_view, h_view))
    x_c = ndl.Tensor(np.ascontiguousarray(x.transpose(1, 0, 2)), device=device)
    h_c = ndl.Tensor(np.ascontiguousarray(h0.transpose(1, 0, 2)), device=device)
    out2, (h2, c2) = lstm(x_c, (h_c, h_c))
    np.testing.assert_allclose(out.numpy(), out2.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c.numpy(), c2.numpy(), rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise(device):
    lstm = nn.LSTM(3, 4, num_layers=2, device=device)
    x = ndl.init.zeros(5, 2, 3, device=device)
    with pytest.raises(ValueError, match=r"\(seq_len, bs, 3\)"):
        lstm(ndl.init.zeros(5, 2, 4, device=device))
    with pytest.raises(ValueError, match="h0"):
        lstm(x, (ndl.init.zeros(1, 2, 4, device=device), ndl.init.zeros(2, 2, 4, device=device)))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size"):
        nn.LSTMCell(3, 0)
    with pytest.raises(ValueError, match="bias_ih and bias_hh"):
        ndl.ops.rnn_layer(x, ndl.init.zeros(2, 4, device=device), ndl.init.zeros(3, 4, device=device),
                          ndl.init.zeros(4, 4, device=device), ndl.init.zeros(4, device=device))


# ---- Embedding ------------------------------------------------------------------------------
def test_embedding_lookup_and_gradient(device):
    rng = np.random.default_rng(8)
    emb = nn.Embedding(7, 3, device=device)
    ids = np.array([[0, 6, 2], [2, 2, 5]], dtype=np.float32)  # (seq_len, bs), float like the course
    out = emb(ndl.Tensor(ids, device=device))
    weight = emb.weight.numpy()
    np.testing.assert_array_equal(out.numpy(), weight[ids.astype(int)])
    g = rng.standard_normal((2, 3, 3)).astype(np.float32)
    (out * ndl.Tensor(g, device=device)).sum().backward()
    expected = np.zeros((7, 3), dtype=np.float64)
    np.add.at(expected, ids.astype(int).ravel(), g.reshape(-1, 3))
    np.testing.assert_allclose(emb.weight.grad.numpy(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(IndexError, match=r"\[0, 7\)"):
        emb(ndl.Tensor(np.array([[7.0]]), device=device))
