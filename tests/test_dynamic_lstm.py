"""Dynamic int8 LSTM: DynamicQuantizedLSTM / DynamicQuantizedLSTMCell and quantize_dynamic."""
import itertools

import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.apps.models import LanguageModel
from needle.quant import reference as R
from needle.quant.dynamic import (DynamicQuantizedLinear, DynamicQuantizedLSTM,
                                  DynamicQuantizedLSTMCell, quantize_dynamic)
from needle.quant.lm import quantize_lm

DEVICES = [ndl.cpu_numpy()] + ([ndl.cpu()] if ndl.cpu().enabled() else [])
DEV = ndl.cpu_numpy()


# ---- an independent reference: numpy int64 GEMMs and the float32 gate math ----------------
def _dynamic_matmul(x, w):
    """x [M, K] @ w [N, K]^T through dynamic_linear_reference with a plain int64 GEMM."""
    w_q, w_s = R.dynamic_weight(w)
    gemm = lambda xq, zp: (xq.astype(np.int64) - zp) @ w_q.T.astype(np.int64)
    return R.dynamic_linear_reference(x, w_q, w_s, gemm=gemm)


def _sigmoid(x):
    # the kit's float32 logistic (0.5 * (tanh(x / 2) + 1)); needed for equal bits
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))


def _reference_layer(cell, X, h, c):
    """One dynamic int8 LSTM layer: X (T, bs, I), h, c (bs, H) -> (out, h_T, c_T)."""
    w_ih, w_hh = cell.W_ih.numpy().T, cell.W_hh.numpy().T
    H = w_hh.shape[1]
    bias = np.zeros(4 * H, np.float32)
    if cell.bias_ih is not None:
        bias = cell.bias_ih.numpy().reshape(-1) + cell.bias_hh.numpy().reshape(-1)
    T, bs = X.shape[:2]
    gx = _dynamic_matmul(X.reshape(T * bs, -1), w_ih).reshape(T, bs, 4 * H) + bias
    out = []
    for t in range(T):
        g = gx[t] + _dynamic_matmul(h, w_hh)
        i, f, gg, o = np.split(g, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def _reference_lstm(lstm, X, h0, c0):
    hs, cs = [], []
    for k, cell in enumerate(lstm.lstm_cells):
        X, h, c = _reference_layer(cell, X, h0[k], c0[k])
        hs.append(h)
        cs.append(c)
    return X, np.stack(hs), np.stack(cs)


def _lstm(I, H, L, bias=True, seed=0, device=DEV):
    np.random.seed(seed)
    return nn.LSTM(I, H, L, bias=bias, device=device)


def _tensor(a, device=DEV):
    return ndl.Tensor(a, device=device, requires_grad=False)


# ---- bit for bit ----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)
@pytest.mark.parametrize("layers,bias,given,T,bs",
                         list(itertools.product([1, 2], [True, False], [False, True], [1, 5],
                                                [1, 3])))
def test_lstm_is_the_dynamic_reference(device, layers, bias, given, T, bs):
    I, H = 7, 5                                   # 4H = 20: not a multiple of a kernel tile
    lstm = _lstm(I, H, layers, bias, seed=layers, device=device)
    rng = np.random.default_rng(T * 10 + bs)
    X = rng.standard_normal((T, bs, I)).astype(np.float32) * 2
    if given:
        h0 = (rng.standard_normal((layers, bs, H)) * 0.5).astype(np.float32)
        c0 = (rng.standard_normal((layers, bs, H)) * 0.5).astype(np.float32)
        state = (_tensor(h0, device), _tensor(c0, device))
    else:
        h0 = c0 = np.zeros((layers, bs, H), np.float32)
        state = None
    q = DynamicQuantizedLSTM(lstm, device=device)
    out, (hn, cn) = q(_tensor(X, device), state)
    want, want_h, want_c = _reference_lstm(lstm, X, h0, c0)
    assert out.shape == (T, bs, H) and hn.shape == cn.shape == (layers, bs, H)
    assert out.numpy().dtype == np.float32 and out.device == device
    assert np.array_equal(out.numpy(), want)
    assert np.array_equal(hn.numpy(), want_h)
    assert np.array_equal(cn.numpy(), want_c)
    assert np.array_equal(hn.numpy()[-1], out.numpy()[-1])     # the last layer's last h
    assert not np.array_equal(want_c, c0)                        # the loop did run


@pytest.mark.parametrize("bias,given", [(True, False), (False, True), (True, True)])
def test_cell_is_one_reference_step(bias, given):
    np.random.seed(4)
    cell = nn.LSTMCell(6, 9, bias=bias, device=DEV)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    h0, c0 = (rng.standard_normal((2, 4, 9)).astype(np.float32) if given else
              np.zeros((2, 4, 9), np.float32))
    q = DynamicQuantizedLSTMCell(cell)
    h1, c1 = q(_tensor(x), (_tensor(h0), _tensor(c0)) if given else None)
    _, want_h, want_c = _reference_layer(cell, x[None], h0, c0)
    assert h1.shape == c1.shape == (4, 9)
    assert np.array_equal(h1.numpy(), want_h) and np.array_equal(c1.numpy(), want_c)
    fh, fc = cell(_tensor(x), (_tensor(h0), _tensor(c0)))
    assert 0 < np.abs(h1.numpy() - fh.numpy()).max() < 2e-2
    assert 0 < np.abs(c1.numpy() - fc.numpy()).max() < 2e-2


# ---- accuracy -------------------------------------------------------------------------------
@pytest.mark.parametrize("I,H,L,T,bs", [(8, 16, 1, 1, 1), (16, 32, 2, 10, 4),
                                        (32, 64, 3, 20, 8), (16, 128, 1, 30, 2)])
def test_lstm_tracks_the_float_lstm(I, H, L, T, bs):
    """Unit-normal inputs, the default U(-1/sqrt(H), 1/sqrt(H)) weights: over these shapes and
    seeds 0-5 the worst max |quantized - float| of output, h_n and c_n measured 8.6e-3
    (|h| <= 0.3, |c| <= 0.9 here); the bound is 2e-2."""
    lstm = _lstm(I, H, L, seed=H)
    x = _tensor(np.random.default_rng(H).standard_normal((T, bs, I)).astype(np.float32))
    f, (fh, fc) = lstm(x)
    q, (qh, qc) = DynamicQuantizedLSTM(lstm)(x)
    for got, want in ((q, f), (qh, fh), (qc, fc)):
        err = np.abs(got.numpy() - want.numpy()).max()
        assert 0 < err < 2e-2, err
        rel = np.linalg.norm(got.numpy() - want.numpy()) / np.linalg.norm(want.numpy())
        assert rel < 0.05, rel


def test_close_to_torch_dynamic_lstm():
    """torch's dynamic LSTM (per-tensor int8 weights) against the same float LSTM: needle's
    per-channel one is at most 2x its error (measured 0.4x-1.5x) and the two agree closely."""
    torch = pytest.importorskip("torch")
    import warnings
    I, H, L, T, bs = 16, 32, 2, 10, 4
    lstm = _lstm(I, H, L, seed=0)
    t = torch.nn.LSTM(I, H, L)                  # torch's dynamic LSTM needs the biases
    with torch.no_grad():
        for k, c in enumerate(lstm.lstm_cells):
            for name, p in (("weight_ih", c.W_ih.numpy().T), ("weight_hh", c.W_hh.numpy().T),
                            ("bias_ih", c.bias_ih.numpy()), ("bias_hh", c.bias_hh.numpy())):
                dst = getattr(t, f"{name}_l{k}")
                dst.copy_(torch.from_numpy(np.ascontiguousarray(p).reshape(dst.shape)))
    box = torch.nn.Module()
    box.lstm = t                                # quantize_dynamic swaps children, not the root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq = torch.ao.quantization.quantize_dynamic(box, {torch.nn.LSTM}, dtype=torch.qint8).lstm
    assert type(tq).__module__.startswith("torch.ao.nn.quantized.dynamic")
    X = np.random.default_rng(0).standard_normal((T, bs, I)).astype(np.float32)
    f = lstm(_tensor(X))[0].numpy()
    with torch.no_grad():
        np.testing.assert_allclose(t(torch.from_numpy(X))[0].numpy(), f, atol=1e-5)
        theirs = tq(torch.from_numpy(X))[0].numpy()
    ours = DynamicQuantizedLSTM(lstm)(_tensor(X))[0].numpy()
    ours_err, theirs_err = np.abs(ours - f).max(), np.abs(theirs - f).max()
    assert 0 < ours_err <= 2 * theirs_err, (ours_err, theirs_err)
    assert np.abs(ours - theirs).max() < 1e-2


# ---- quantize_dynamic -----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)
@pytest.mark.parametrize("layers", [1, 2])
def test_language_model_equals_quantize_lm_int8(device, layers):
    np.random.seed(layers)
    model = LanguageModel(16, 20, 24, layers, "lstm", device=device).eval()
    rng = np.random.default_rng(0)
    x = _tensor(rng.integers(0, 20, (7, 3)).astype(np.float32), device)
    float_logits = model(x)[0].numpy()
    q = quantize_dynamic(model, device=device)
    assert isinstance(q.seq_model, DynamicQuantizedLSTM)
    assert isinstance(q.linear, DynamicQuantizedLinear)
    assert isinstance(model.seq_model, nn.LSTM) and isinstance(model.linear, nn.Linear)
    assert not any(isinstance(m, (nn.LSTM, nn.LSTMCell, nn.Linear)) for _, m in q.named_modules())
    assert [id(p) for p in q.parameters()] == [id(model.embedding.weight)]   # only it is shared
    qlm = quantize_lm(model, "int8", device=device)
    h = (_tensor(rng.standard_normal((layers, 3, 24)).astype(np.float32) * 0.5, device),
         _tensor(rng.standard_normal((layers, 3, 24)).astype(np.float32) * 0.5, device))
    for state in (None, h):
        got, (gh, gc) = q(x, state)
        want, (wh, wc) = qlm(x, state)
        assert got.shape == (21, 20)
        assert np.array_equal(got.numpy(), want.numpy())
        assert np.array_equal(gh.numpy(), wh.numpy()) and np.array_equal(gc.numpy(), wc.numpy())
    got = q(x)[0].numpy()
    assert 0 < np.abs(got - float_logits).max() < 0.05 * np.abs(float_logits).max()
    np.testing.assert_array_equal(model(x)[0].numpy(), float_logits)   # float model unchanged


def test_quantize_dynamic_converts_lstm_and_cell():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(5, 6, 2, bias=False, device=DEV)
            self.cell = nn.LSTMCell(6, 6, device=DEV)
            self.head = nn.Linear(6, 3, device=DEV)

        def forward(self, x):
            out, _ = self.rnn(x)
            steps = ndl.ops.split(out, 0)               # (bs, 6) each
            h, _ = self.cell(steps[len(steps) - 1])
            return self.head(h)

    np.random.seed(2)
    model = Tagger().eval()
    x = _tensor(np.random.default_rng(2).standard_normal((4, 2, 5)).astype(np.float32))
    want = model(x).numpy()
    q = quantize_dynamic(model)
    assert isinstance(q.rnn, DynamicQuantizedLSTM) and isinstance(q.cell, DynamicQuantizedLSTMCell)
    assert all(isinstance(c, DynamicQuantizedLSTMCell) for c in q.rnn.lstm_cells)
    assert isinstance(model.rnn, nn.LSTM) and isinstance(model.cell, nn.LSTMCell)
    assert all(isinstance(c, nn.LSTMCell) for c in model.rnn.lstm_cells)
    assert not q.training and q.parameters() == []
    got = q(x).numpy()
    assert got.shape == (2, 3) and 0 < np.abs(got - want).max() < 2e-2
    np.testing.assert_array_equal(model(x).numpy(), want)
    bare = quantize_dynamic(nn.LSTMCell(3, 4, device=DEV))
    assert isinstance(bare, DynamicQuantizedLSTMCell) and repr(bare) == "DynamicQuantizedLSTMCell(3, 4)"
    assert repr(q.rnn) == "DynamicQuantizedLSTM(5, 6, num_layers=2)"


def test_bad_shapes_are_value_errors():
    q = DynamicQuantizedLSTM(_lstm(4, 3, 2))
    x = _tensor(np.zeros((5, 2, 4), np.float32))
    z = lambda *s: _tensor(np.zeros(s, np.float32))
    with pytest.raises(ValueError, match=r"\(seq_len, bs, 4\), got \(5, 4\)"):
        q(z(5, 4))
    with pytest.raises(ValueError, match=r"\(seq_len, bs, 4\), got \(5, 2, 3\)"):
        q(z(5, 2, 3))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 3\), got \(1, 2, 3\)"):
        q(x, (z(1, 2, 3), z(2, 2, 3)))
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 2, 3\), got \(2, 3, 3\)"):
        q(x, (z(2, 2, 3), z(2, 3, 3)))
    with pytest.raises(ValueError, match="pair"):
        q(x, z(2, 2, 3))
    cell = DynamicQuantizedLSTMCell(nn.LSTMCell(4, 3, device=DEV))
    with pytest.raises(ValueError, match=r"\(bs, 4\), got \(1, 2, 4\)"):
        cell(z(1, 2, 4))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3\), got \(2, 4\)"):
        cell(z(2, 4), (z(2, 4), z(2, 3)))
    h1, c1 = cell(z(2, 4), (None, z(2, 3)))       # a None entry is zeros, as in nn.LSTM
    assert h1.shape == c1.shape == (2, 3)
