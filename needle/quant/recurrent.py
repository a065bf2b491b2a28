"""The numpy LSTM inference loop shared by the quantized recurrent models.

``lstm_layer_inference`` is the one place the quantized paths run an LSTM layer:
``quantize_lm``'s :class:`~needle.quant.lm.QuantizedLanguageModel` and ``quantize_dynamic``'s
:class:`~needle.quant.dynamic.DynamicQuantizedLSTM` both call it, so the two give the same
bits for the same matrices. A matrix is any object with ``matmul(x float32 [M, K]) -> float32
[M, N]`` (``FloatMatrix``, ``DynamicInt8Matrix``, ``Int4Weight``); the gate math stays
float32 numpy.
"""
import numpy as np

__all__ = ["sigmoid", "lstm_cell_arrays", "lstm_layer_inference"]


def sigmoid(x):
    """float32 logistic of float32 x, as 0.5 * (tanh(x / 2) + 1) (no overflow in exp)."""
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))


def lstm_cell_arrays(cell):
    """An ``nn.LSTMCell``'s weights as numpy float32: ``(w_ih [4H, I], w_hh [4H, H],
    bias [4H])``, the matrices in the [N, K] layout of the matrix objects and the bias
    bias_ih + bias_hh (zeros where the cell has none)."""
    w_ih = cell.W_ih.numpy().T                                 # stored (I, 4H)
    w_hh = cell.W_hh.numpy().T                                 # stored (H, 4H)
    bias = np.zeros(w_ih.shape[0], np.float32)
    for b in (cell.bias_ih, cell.bias_hh):
        if b is not None:
            bias = bias + b.numpy().reshape(-1)
    return w_ih, w_hh, bias.astype(np.float32)


def lstm_layer_inference(X, h0, c0, w_ih, w_hh, bias):
    """One LSTM layer over a sequence, gates i, f, g, o (torch's order).

    X float32 (T, bs, I); h0, c0 float32 (bs, H); w_ih a matrix [4H, I], w_hh a matrix
    [4H, H]; bias float32 [4H] (bias_ih + bias_hh). Returns ``(out float32 (T, bs, H),
    h_T, c_T float32 (bs, H))``; T = 0 gives an empty out and the initial state.

    W_ih multiplies the whole sequence in one call (for dynamic int8: one activation range
    for all T * bs rows), W_hh the state of each step (one range per step).
    """
    T, bs = X.shape[0], X.shape[1]
    H = h0.shape[-1]
    gx = w_ih.matmul(X.reshape(T * bs, -1)).reshape(T, bs, 4 * H) + bias
    hh, cc = h0, c0
    out = np.empty((T, bs, H), np.float32)
    for t in range(T):
        g = gx[t] + w_hh.matmul(hh)
        i, f, gg, o = (g[:, j * H:(j + 1) * H] for j in range(4))
        cc = sigmoid(f) * cc + sigmoid(i) * np.tanh(gg)
        hh = sigmoid(o) * np.tanh(cc)
        out[t] = hh
    return out, hh, cc
