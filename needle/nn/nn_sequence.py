"""Sequence modules (the 10-414/714 hw4 API): Embedding, RNNCell, RNN, LSTMCell, LSTM.

Shapes follow the course (and torch's ``batch_first=False``): a sequence is
``(seq_len, bs, features)``, hidden states are ``(num_layers, bs, hidden_size)``.
Weights are stored transposed with respect to torch, so a step is ``X @ W_ih + h @ W_hh``:

    W_ih (input_size, G * hidden_size), W_hh (hidden_size, G * hidden_size),
    bias_ih, bias_hh (G * hidden_size,)        G = 1 (RNN) or 4 (LSTM, gates i, f, g, o)

all float32 Parameters drawn from U(-sqrt(k), sqrt(k)), k = 1 / hidden_size (in the order
W_ih, W_hh, bias_ih, bias_hh). Each layer runs as one fused op (``ops.lstm_layer`` /
``ops.rnn_layer``): the input product of the whole sequence is one (seq_len * bs, input_size)
matrix product, and one LSTM step is one (bs, H) @ (H, 4H) product for all four gates plus
elementwise work, forward and backward. Parameters are read at call time, so assigning a new
Tensor to ``cell.W_ih`` (as the course tests do) takes effect.
"""
import math
from typing import Optional, Tuple

import numpy as np

from needle.autograd import Tensor
from needle import ops
import needle.init as init
from .nn_basic import Parameter, Module

__all__ = ["Embedding", "RNNCell", "RNN", "LSTMCell", "LSTM"]

def _uniform(shape, hidden_size, device, dtype):
    bound = math.sqrt(1.0 / hidden_size)
    return Parameter(init.rand(*shape, low=-bound, high=bound, device=device, dtype=dtype,
                               requires_grad=True))


def _check_sizes(**sizes):
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_input(name, x, shape):
    """Raise ValueError unless ``x`` has ``shape`` (None entries match any size)."""
    if len(x.shape) != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


class _RecurrentCell(Module):
    """Shared parameters of RNNCell and LSTMCell (``gates`` blocks of hidden_size)."""

    gates = 1

    def __init__(self, input_size, hidden_size, bias, device, dtype):
        super().__init__()
        _check_sizes(input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        width = self.gates * hidden_size
        self.W_ih = _uniform((input_size, width), hidden_size, device, dtype)
        self.W_hh = _uniform((hidden_size, width), hidden_size, device, dtype)
        if bias:
            self.bias_ih = _uniform((width,), hidden_size, device, dtype)
            self.bias_hh = _uniform((width,), hidden_size, device, dtype)
        else:
            self.bias_ih = None
            self.bias_hh = None

    def _weights(self):
        return self.W_ih, self.W_hh, self.bias_ih, self.bias_hh

    def _state(self, h, bs, like, name):
        if h is None:
            return init.zeros(bs, self.hidden_size, device=like.device, dtype=like.dtype)
        _check_input(name, h, (bs, self.hidden_size))
        return h

    def _step_input(self, X):
        _check_input("X", X, (None, self.input_size))
        return ops.reshape(X, (1,) + tuple(X.shape))


class RNNCell(_RecurrentCell):
    """One Elman RNN step: ``h' = nonlinearity(X @ W_ih + bias_ih + h @ W_hh + bias_hh)``.

    X (bs, input_size), h (bs, hidden_size) or None (zeros) -> h' (bs, hidden_size).
    ``nonlinearity`` is ``'tanh'`` or ``'relu'``.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype="float32"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def run(self, X: Tensor, h: Tensor):
        """The cell over a whole sequence X (T, bs, input_size) from state h (bs, H):
        (output (T, bs, H), h_T (bs, H))."""
        out = ops.rnn_layer(X, h, *self._weights(), nonlinearity=self.nonlinearity)
        return out[0], out[1]

    def forward(self, X: Tensor, h: Optional[Tensor] = None) -> Tensor:
        seq = self._step_input(X)
        return self.run(seq, self._state(h, X.shape[0], X, "h"))[1]


class LSTMCell(_RecurrentCell):
    """One LSTM step with the gates in torch's order i, f, g, o::

        i, f, g, o = split(X @ W_ih + bias_ih + h @ W_hh + bias_hh)     # each (bs, H)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c')

    X (bs, input_size), h = (h0, c0) each (bs, hidden_size), or None (zeros)
    -> (h', c') each (bs, hidden_size).
    """

    gates = 4

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype="float32"):
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def run(self, X: Tensor, h: Tensor, c: Tensor):
        """The cell over a whole sequence X (T, bs, input_size) from states h, c (bs, H):
        (output (T, bs, H), h_T, c_T)."""
        out = ops.lstm_layer(X, h, c, *self._weights())
        return out[0], out[1], out[2]

    def forward(self, X: Tensor, h=None) -> Tuple[Tensor, Tensor]:
        seq = self._step_input(X)
        h0, c0 = (None, None) if h is None else h
        bs = X.shape[0]
        _, h1, c1 = self.run(seq, self._state(h0, bs, X, "h0"), self._state(c0, bs, X, "c0"))
        return h1, c1


def _layer_states(h, num_layers, bs, hidden_size, like, name):
    """Split a (num_layers, bs, H) state into per-layer (bs, H) tensors (zeros for None)."""
    if h is None:
        return [init.zeros(bs, hidden_size, device=like.device, dtype=like.dtype)
                for _ in range(num_layers)]
    _check_input(name, h, (num_layers, bs, hidden_size))
    return list(ops.split(h, 0))


class _MultiLayer(Module):
    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        _check_sizes(num_layers=num_layers)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers

    def _layer_sizes(self):
        """(input size, hidden size) of every layer."""
        return [(self.input_size if k == 0 else self.hidden_size, self.hidden_size)
                for k in range(self.num_layers)]

    def _check_sequence(self, X):
        if len(X.shape) != 3 or X.shape[2] != self.input_size:
            raise ValueError(f"{type(self).__name__} input must have shape "
                             f"(seq_len, bs, {self.input_size}), got {tuple(X.shape)}")


class RNN(_MultiLayer):
    """A stack of ``num_layers`` RNNCells (``rnn_cells[k]``) over a sequence.

    forward(X (seq_len, bs, input_size), h0 (num_layers, bs, hidden_size) or None)
    -> output (seq_len, bs, hidden_size) (last layer's h_t), h_n (num_layers, bs, hidden_size).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, nonlinearity="tanh",
                 device=None, dtype="float32"):
        super().__init__(input_size, hidden_size, num_layers)
        self.rnn_cells = [RNNCell(i, h, bias=bias, nonlinearity=nonlinearity, device=device,
                                  dtype=dtype) for i, h in self._layer_sizes()]

    def forward(self, X: Tensor, h0: Optional[Tensor] = None):
        self._check_sequence(X)
        states = _layer_states(h0, self.num_layers, X.shape[1], self.hidden_size, X, "h0")
        finals = []
        for cell, h in zip(self.rnn_cells, states):
            X, h = cell.run(X, h)
            finals.append(h)
        return X, ops.stack(finals, 0)


class LSTM(_MultiLayer):
    """A stack of ``num_layers`` LSTMCells (``lstm_cells[k]``) over a sequence.

    forward(X (seq_len, bs, input_size), h = (h0, c0) each (num_layers, bs, hidden_size), or
    None) -> (output (seq_len, bs, hidden_size), (h_n, c_n) each (num_layers, bs, hidden_size)).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, device=None,
                 dtype="float32"):
        super().__init__(input_size, hidden_size, num_layers)
        self.lstm_cells = [LSTMCell(i, h, bias=bias, device=device, dtype=dtype)
                           for i, h in self._layer_sizes()]

    def forward(self, X: Tensor, h=None):
        self._check_sequence(X)
        bs = X.shape[1]
        h0, c0 = (None, None) if h is None else h
        hs = _layer_states(h0, self.num_layers, bs, self.hidden_size, X, "h0")
        cs = _layer_states(c0, self.num_layers, bs, self.hidden_size, X, "c0")
        final_h, final_c = [], []
        for cell, h_k, c_k in zip(self.lstm_cells, hs, cs):
            X, h_k, c_k = cell.run(X, h_k, c_k)
            final_h.append(h_k)
            final_c.append(c_k)
        return X, (ops.stack(final_h, 0), ops.stack(final_c, 0))


class Embedding(Module):
    """A lookup table: token ids x (seq_len, bs) -> vectors (seq_len, bs, embedding_dim).

    ``weight`` (num_embeddings, embedding_dim) is drawn from N(0, 1). The lookup is the
    course's one-hot product ``one_hot(x) @ weight``, so it runs on every backend as one
    matrix product and its gradient is the transposed product. Ids may be stored as floats
    (the course's batches are float32) but must be whole numbers in [0, num_embeddings).
    """

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype="float32"):
        super().__init__()
        _check_sizes(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(init.randn(num_embeddings, embedding_dim, device=device,
                                           dtype=dtype, requires_grad=True))

    def forward(self, x: Tensor) -> Tensor:
        ids = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise IndexError(f"Embedding: ids must lie in [0, {self.num_embeddings}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        one_hot = init.one_hot(self.num_embeddings, ids.reshape(-1), device=self.weight.device,
                               dtype=self.weight.dtype)
        out = one_hot @ self.weight
        return ops.reshape(out, tuple(ids.shape) + (self.embedding_dim,))
