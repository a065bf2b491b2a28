"""MultiHeadAttention, AttentionLayer, TransformerLayer, Transformer: values against a float64
numpy reference and torch.nn.MultiheadAttention, gradients against finite differences."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from conftest import DEVICES
from test_ops import numeric_grad


def ref_attention(q, k, v, causal):
    """float64 softmax(q k^T / sqrt(d) + mask) v over the last two axes."""
    d = q.shape[-1]
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    if causal:
        tq, tk = logits.shape[-2:]
        logits = np.where(np.triu(np.ones((tq, tk), dtype=bool), tk - tq + 1), -np.inf, logits)
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v, p


def _t(x, device):
    return ndl.Tensor(np.asarray(x, dtype=np.float32), device=device)


@pytest.mark.parametrize("causal,tq,tk", [(False, 4, 4), (True, 4, 4), (True, 3, 5)])
def test_attention_activation_matches_reference(device, causal, tq, tk):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, tq, 4))
    k = rng.standard_normal((2, 3, tk, 4))
    v = rng.standard_normal((2, 3, tk, 4))
    result, probs = nn.MultiHeadAttention(causal=causal, device=device)(_t(q, device), _t(k, device),
                                                                        _t(v, device))
    ref_result, ref_probs = ref_attention(q, k, v, causal)
    np.testing.assert_allclose(probs.numpy(), ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.numpy(), ref_result, rtol=1e-5, atol=1e-5)


def test_attention_gradient_matches_finite_differences(device):
    rng = np.random.default_rng(1)
    vals = {n: rng.standard_normal((1, 2, 3, 2)) for n in "qkv"}
    w = rng.standard_normal((1, 2, 3, 2))

    def loss(v):
        return float((ref_attention(v["q"], v["k"], v["v"], True)[0] * w).sum())

    t = {n: _t(x, device) for n, x in vals.items()}
    result, _ = nn.MultiHeadAttention(causal=True, device=device)(t["q"], t["k"], t["v"])
    (result * _t(w, device)).sum().backward()
    for name, x in vals.items():
        fd = numeric_grad(lambda _: loss(vals), x)
        np.testing.assert_allclose(t[name].grad.numpy(), fd, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_layer_matches_torch(device, causal):
    """The layer is torch's MultiheadAttention (no biases) applied to layer-normed inputs."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    B, T, heads, dim_head = 2, 5, 2, 3
    E = heads * dim_head
    q, k, v = (rng.standard_normal((B, T, E)).astype(np.float32) for _ in range(3))
    layer = nn.AttentionLayer(E, heads, dim_head, causal=causal, device=device)
    mha = torch.nn.MultiheadAttention(E, heads, bias=False, batch_first=True)
    w_q, w_k, w_v = (p.numpy().T for p in (layer.q_projection.weight, layer.k_projection.weight,
                                          layer.v_projection.weight))
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.concatenate([w_q, w_k, w_v], axis=0)))
        mha.out_proj.weight.copy_(torch.tensor(layer.out_projection.weight.numpy().T))
    qt = torch.tensor(q, requires_grad=True)
    ln = [torch.nn.functional.layer_norm(x, (E,), eps=1e-5) for x in (qt, torch.tensor(k), torch.tensor(v))]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
    expected, _ = mha(*ln, attn_mask=mask, need_weights=False)

    qn = _t(q, device)
    out = layer(qn, _t(k, device), _t(v, device))
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-5)
    g = rng.standard_normal((B, T, E)).astype(np.float32)
    (out * _t(g, device)).sum().backward()
    (expected * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(qn.grad.numpy(), qt.grad.numpy(), rtol=1e-3, atol=1e-4)
    assert tuple(layer.probs.shape) == (B, heads, T, T)


def test_self_attention_defaults_k_v_to_q_and_accepts_views(device):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 6)).astype(np.float32)     # (T, B, F)
    layer = nn.AttentionLayer(6, 2, 4, out_features=5, causal=True, device=device)
    view = ndl.ops.transpose(_t(x, device), (0, 1))            # (B, T, F), strided
    assert not view.realize_cached_data().is_compact()
    compact = _t(np.ascontiguousarray(x.transpose(1, 0, 2)), device)
    out = layer(view)
    assert out.shape == (2, 4, 5)
    np.testing.assert_allclose(out.numpy(), layer(compact, compact, compact).numpy(), rtol=1e-6, atol=1e-6)


def test_transformer_layer_and_model(device):
    rng = np.random.default_rng(4)
    np.random.seed(0)
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)      # (T, B, F)
    model = nn.Transformer(8, 16, 2, num_head=2, dim_head=4, dropout=0.5, device=device,
                           sequence_len=6)
    model.eval()  # dropout off: the sequence-first and batch-first calls must agree
    out, zeros = model(_t(x, device))
    assert out.shape == (3, 2, 8) and not zeros.numpy().any()
    model.batch_first = True
    out_bf, _ = model(_t(np.ascontiguousarray(x.transpose(1, 0, 2)), device))
    np.testing.assert_allclose(out_bf.numpy().transpose(1, 0, 2), out.numpy(), rtol=1e-5, atol=1e-5)
    out_bf.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    assert "positional_embedding.weight" in names and "layers.1.linear2.bias" in names
    with pytest.raises(ValueError, match="sequence_len 6"):
        model(_t(np.zeros((2, 7, 8)), device))


def test_causal_model_ignores_the_future(device):
    """With causal attention, changing the last token changes no earlier output."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 8)).astype(np.float32)
    layer = nn.TransformerLayer(8, 2, 4, 16, causal=True, device=device)
    y = x.copy()
    y[0, 3] += 1.0
    a, b = layer(_t(x, device)).numpy(), layer(_t(y, device)).numpy()
    np.testing.assert_allclose(a[0, :3], b[0, :3], rtol=1e-6, atol=1e-6)
    assert np.abs(a[0, 3] - b[0, 3]).max() > 1e-3


def test_bad_shapes_raise(device):
    attn = nn.MultiHeadAttention(device=device)
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        attn(_t(np.zeros((1, 2, 3, 4)), device), _t(np.zeros((1, 2, 3, 5)), device),
             _t(np.zeros((1, 2, 3, 5)), device))
    layer = nn.AttentionLayer(6, 2, 3, device=device)
    with pytest.raises(ValueError, match=r"q must be \(B, T, 6\)"):
        layer(_t(np.zeros((1, 3, 5)), device))
