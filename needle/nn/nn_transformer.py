"""Transformer modules (the 10-414/714 hw4_extra API): MultiHeadAttention, AttentionLayer,
TransformerLayer, Transformer.

A decoder-only, prenorm Transformer:

    AttentionLayer:   X = softmax(LN_q(q) W_q (LN_k(k) W_k)^T / sqrt(D)  [+ causal mask]) LN_v(v) W_v,
                      heads unravelled from the channel axis, then X W_o   (no biases)
    TransformerLayer: x = x + Dropout(Attention(x))
                      x = x + Dropout(Linear2(Dropout(ReLU(Linear1(LayerNorm1d(x))))))
    Transformer:      x + learned positional Embedding(sequence_len, embedding_size), then
                      num_layers TransformerLayers; returns (x, zeros_like(x))

Shapes: MultiHeadAttention takes q, k, v (B, num_head, T, dim_head); the layers take
(B, T, features); Transformer takes (T, B, features), or (B, T, features) with
``batch_first=True``. All float32.
"""
import math

import numpy as np

from needle.autograd import Tensor
import needle.backend_ndarray as ndarray
from needle import ops
import needle.init as init
from .nn_basic import Module, ReLU, Dropout, LayerNorm1d, Linear, Sequential
from .nn_sequence import Embedding

__all__ = ["MultiHeadAttention", "AttentionLayer", "TransformerLayer", "Transformer"]


def _rows(x: Tensor) -> Tensor:
    """(B, T, F) -> (B * T, F), the layout LayerNorm1d and Linear work on."""
    return ops.reshape(x, (x.shape[0] * x.shape[1], x.shape[2]))


class MultiHeadAttention(Module):
    """The attention activation (no parameters): softmax(q k^T / sqrt(D) [+ mask]) v.

    forward(q, k, v) with q (B, H, Tq, D), k and v (B, H, Tk, D) -> (result (B, H, Tq, D),
    probs (B, H, Tq, Tk)); ``probs`` are the softmax probabilities after dropout. With
    ``causal=True`` query i attends to keys j <= i + (Tk - Tq).
    """

    def __init__(self, *, dropout=0.0, causal=False, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.causal = causal
        self.dropout = Dropout(dropout)

    def create_causal_mask(self, i, j, device):
        """A (1, 1, i, j) NDArray: 0 where attention is allowed, -float32 max above the
        diagonal ``j - i``."""
        mask = -np.finfo(np.float32).max * np.triu(np.ones((1, 1, i, j), dtype=np.float32), j - i + 1)
        return ndarray.array(mask, device=device)

    def matmul(self, a: Tensor, b_transpose: Tensor) -> Tensor:
        """Batched ``a @ b_transpose^T``: (..., m, d) and (..., n, d) -> (..., m, n).

        Computed as products broadcast to (..., m, n, d) and summed over d, the order of
        float additions of the course's reference, so attention logits agree with it to the
        last bits (the (..., m, n, d) temporary is the price; the probs @ v product uses the
        batched GEMM).
        """
        *batch, m, d = a.shape
        n = b_transpose.shape[-2]
        full = tuple(batch) + (m, n, d)
        lhs = ops.broadcast_to(ops.reshape(a, tuple(batch) + (m, 1, d)), full)
        rhs = ops.broadcast_to(ops.reshape(b_transpose, tuple(batch) + (1, n, d)), full)
        return ops.summation(lhs * rhs, axes=len(full) - 1)

    def softmax(self, logit: Tensor) -> Tensor:
        """Softmax over the last axis; the row maximum is subtracted as a constant."""
        row_max = Tensor(logit.realize_cached_data().max(axis=len(logit.shape) - 1, keepdims=True),
                         device=logit.device, dtype=logit.dtype, requires_grad=False)
        probs = ops.exp(logit - ops.broadcast_to(row_max, logit.shape))
        denom = ops.reshape(ops.summation(probs, axes=len(logit.shape) - 1),
                            tuple(logit.shape[:-1]) + (1,))
        return probs / ops.broadcast_to(denom, logit.shape)

    def forward(self, q, k, v):
        batch_size, num_head, queries_len, q_dim = q.shape
        _, _, keys_values_len, k_dim = k.shape
        _, _, _, v_dim = v.shape
        if not (q_dim == k_dim == v_dim) or tuple(k.shape) != tuple(v.shape) \
                or tuple(k.shape[:2]) != (batch_size, num_head):
            raise ValueError(f"MultiHeadAttention: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)} must be (B, H, T, D) with equal B, H, D and k, v alike")
        logits = self.matmul(q, k) / math.sqrt(q_dim)
        if self.causal:
            mask = self.create_causal_mask(queries_len, keys_values_len, logits.device)
            logits = logits + ops.broadcast_to(Tensor(mask, device=logits.device,
                                                      requires_grad=False), logits.shape)
        probs = self.dropout(self.softmax(logits))
        result = ops.matmul(probs, v)
        return result, probs


class AttentionLayer(Module):
    """Prenorm multi-head (self- or cross-) attention with projections W_q, W_k, W_v, W_o.

    forward(q (B, Tq, q_features), k=None, v=None (B, Tk, k/v_features); None means q)
    -> (B, Tq, out_features). Attributes as in the course: prenorm_q/k/v (LayerNorm1d),
    q/k/v_projection (Linear to num_head * dim_head, no bias), attn (MultiHeadAttention),
    out_projection (Linear, no bias). The last attention probabilities are kept in
    ``self.probs``.
    """

    def __init__(self, q_features: int, num_head: int, dim_head: int, *, k_features: int = None,
                 v_features: int = None, out_features: int = None, dropout=0.0, causal=True,
                 device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        k_features = q_features if k_features is None else k_features
        v_features = q_features if v_features is None else v_features
        out_features = q_features if out_features is None else out_features
        self.q_features = q_features
        self.k_features = k_features
        self.v_features = v_features
        self.out_features = out_features
        self.num_head = num_head
        self.dim_head = dim_head

        self.prenorm_q = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.prenorm_k = LayerNorm1d(k_features, device=device, dtype=dtype)
        self.prenorm_v = LayerNorm1d(v_features, device=device, dtype=dtype)
        inner_dim = num_head * dim_head
        self.q_projection = Linear(q_features, inner_dim, bias=False, device=device, dtype=dtype)
        self.k_projection = Linear(k_features, inner_dim, bias=False, device=device, dtype=dtype)
        self.v_projection = Linear(v_features, inner_dim, bias=False, device=device, dtype=dtype)
        self.attn = MultiHeadAttention(dropout=dropout, causal=causal, device=device, dtype=dtype)
        self.out_projection = Linear(inner_dim, out_features, bias=False, device=device, dtype=dtype)

    def _heads(self, x, norm, projection):
        """(B, T, F) -> normalized, projected (B, num_head, T, dim_head)."""
        B, T, _ = x.shape
        y = projection(norm(_rows(x)))
        return ops.permute(ops.reshape(y, (B, T, self.num_head, self.dim_head)), (0, 2, 1, 3))

    def forward(self, q, k=None, v=None):
        k = q if k is None else k
        v = q if v is None else v
        for name, x, features in (("q", q, self.q_features), ("k", k, self.k_features),
                                  ("v", v, self.v_features)):
            if len(x.shape) != 3 or x.shape[2] != features:
                raise ValueError(f"AttentionLayer: {name} must be (B, T, {features}), got {tuple(x.shape)}")
        batch_size, queries_len, _ = q.shape
        result, self.probs = self.attn(self._heads(q, self.prenorm_q, self.q_projection),
                                       self._heads(k, self.prenorm_k, self.k_projection),
                                       self._heads(v, self.prenorm_v, self.v_projection))
        result = ops.reshape(ops.permute(result, (0, 2, 1, 3)),
                             (batch_size * queries_len, self.num_head * self.dim_head))
        return ops.reshape(self.out_projection(result), (batch_size, queries_len, self.out_features))


class TransformerLayer(Module):
    """One prenorm residual block: self-attention, then a two-layer ReLU MLP.

    forward(x (B, T, q_features)) -> (B, T, q_features). Submodules: attn (AttentionLayer),
    dropout, layernorm (LayerNorm1d), linear1 (q_features -> hidden_size), relu,
    linear2 (hidden_size -> q_features).
    """

    def __init__(self, q_features: int, num_head: int, dim_head: int, hidden_size: int, *,
                 dropout=0.0, causal=True, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.attn = AttentionLayer(q_features, num_head, dim_head, out_features=q_features,
                                   dropout=dropout, causal=causal, device=device, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.layernorm = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.linear1 = Linear(q_features, hidden_size, device=device, dtype=dtype)
        self.relu = ReLU()
        self.linear2 = Linear(hidden_size, q_features, device=device, dtype=dtype)

    def forward(self, x):
        batch_size, seq_len, x_dim = x.shape
        x = x + self.dropout(self.attn(x))
        y = self.linear1(self.layernorm(_rows(x)))
        y = self.dropout(self.linear2(self.dropout(self.relu(y))))
        return x + ops.reshape(y, (batch_size, seq_len, x_dim))


class Transformer(Module):
    """A stack of ``num_layers`` TransformerLayers with a learned positional embedding.

    forward(x (T, B, embedding_size), or (B, T, embedding_size) with batch_first, h ignored)
    -> (x of the same shape, zeros of that shape) (the second value mirrors the RNN API).
    T must not exceed ``sequence_len``.
    """

    def __init__(self, embedding_size: int, hidden_size: int, num_layers: int, *, num_head: int = 8,
                 dim_head: int = 32, dropout=0.0, causal=True, device=None, dtype="float32",
                 batch_first=False, sequence_len=2048):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.batch_first = batch_first
        self.embedding_size = embedding_size
        self.sequence_len = sequence_len
        self.positional_embedding = Embedding(sequence_len, embedding_size, device=device, dtype=dtype)
        self.layers = Sequential(*[
            TransformerLayer(embedding_size, num_head, dim_head, hidden_size, dropout=dropout,
                             causal=causal, device=device, dtype=dtype)
            for _ in range(num_layers)])

    def forward(self, x, h=None):
        if not self.batch_first:
            x = ops.transpose(x, axes=(0, 1))
        batch_size, seq_len, _ = x.shape
        if seq_len > self.sequence_len:
            raise ValueError(f"Transformer: sequence length {seq_len} exceeds sequence_len "
                             f"{self.sequence_len}")
        positions = np.broadcast_to(np.arange(seq_len, dtype=np.float32).reshape(seq_len, 1),
                                    (seq_len, batch_size))
        pos = self.positional_embedding(Tensor(positions, device=x.device, requires_grad=False))
        x = self.layers(x + ops.transpose(pos, axes=(0, 1)))
        if not self.batch_first:
            x = ops.transpose(x, axes=(0, 1))
        return x, init.zeros_like(x)
