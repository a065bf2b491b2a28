"""Fused recurrent layers: one RNN or LSTM layer over a whole sequence as a single op.

``lstm_layer(X, h0, c0, W_ih, W_hh, bias_ih, bias_hh)`` -> TensorTuple (output, h_n, c_n)
``rnn_layer(X, h0, W_ih, W_hh, bias_ih, bias_hh, nonlinearity)`` -> TensorTuple (output, h_n)

Shapes: X (T, bs, I); h0, c0, h_n, c_n (bs, H); output (T, bs, H); W_ih (I, G*H);
W_hh (H, G*H); biases (G*H,) or None; G = 4 (gates i, f, g, o) for the LSTM, 1 for the RNN.
All float32, on any one device.

Why one op instead of a graph of small ops: the input product of all T steps is one
(T*bs, I) @ (I, G*H) matmul, each step is one (bs, H) @ (H, G*H) matmul plus elementwise
work on NDArrays, and the backward pass (backpropagation through time) runs the same way,
ending with three large matmuls for dX, dW_ih, dW_hh. A graph of per-step ops would pay
the autograd bookkeeping per op and, through ``split``'s tuple gradient, O(T^2) memory
traffic. The gradient is first order (its result tensors carry no graph).
"""
from ..autograd import NDArray, Tensor, TensorTupleOp

__all__ = ["LSTMLayer", "RNNLayer", "lstm_layer", "rnn_layer"]


def _sigmoid(a: NDArray) -> NDArray:
    # the same formula as ops.sigmoid, so the fused and the step-by-step path agree
    return ((-a).exp() + 1.0) ** -1


def _one_minus(a: NDArray) -> NDArray:
    return (-a) + 1.0


class _FusedRecurrentLayer(TensorTupleOp):
    """Shared input projection and weight gradients; subclasses run the time loop.

    Inputs: X, the initial states (``num_states`` of them), W_ih, W_hh, then (if
    ``has_bias``) bias_ih, bias_hh.
    """

    gates = 1
    num_states = 1

    def __init__(self, has_bias: bool):
        self.has_bias = has_bias

    def _split_inputs(self, args):
        k = self.num_states
        X, states, W_ih, W_hh = args[0], args[1:1 + k], args[1 + k], args[2 + k]
        biases = args[3 + k:5 + k] if self.has_bias else ()
        return X, states, W_ih, W_hh, biases

    def _check(self, X, states, W_ih, W_hh, biases):
        if X.ndim != 3:
            raise ValueError(f"{type(self).__name__}: X must be (T, bs, input_size), got {X.shape}")
        T, bs, I = X.shape
        H = W_hh.shape[0]
        width = self.gates * H
        if tuple(W_ih.shape) != (I, width) or tuple(W_hh.shape) != (H, width):
            raise ValueError(f"{type(self).__name__}: W_ih {W_ih.shape} and W_hh {W_hh.shape} do "
                             f"not fit input_size {I} (expected ({I}, {width}) and ({H}, {width}))")
        for s in states:
            if tuple(s.shape) != (bs, H):
                raise ValueError(f"{type(self).__name__}: states must be ({bs}, {H}), got {s.shape}")
        for b in biases:
            if tuple(b.shape) != (width,):
                raise ValueError(f"{type(self).__name__}: biases must be ({width},), got {b.shape}")
        return T, bs, I, H

    def compute(self, *args):
        X, states, W_ih, W_hh, biases = self._split_inputs(args)
        T, bs, I, H = self._check(X, states, W_ih, W_hh, biases)
        width = self.gates * H
        proj = X.reshape((T * bs, I)) @ W_ih
        if biases:
            bias = (biases[0] + biases[1]).reshape((1, width)).broadcast_to((T * bs, width))
            proj = proj + bias
        proj = proj.reshape((T, bs, width))
        output = NDArray.make((T, bs, H), device=X.device)
        finals = self._forward_steps(proj, [s.compact() for s in states], W_hh, output)
        return (output,) + tuple(finals)

    def gradient(self, out_grad, node):
        args = [x.realize_cached_data() for x in node.inputs]
        X, states, W_ih, W_hh, biases = self._split_inputs(args)
        T, bs, I = X.shape
        H = W_hh.shape[0]
        width = self.gates * H
        grads = [out_grad[k].realize_cached_data() for k in range(1 + self.num_states)]
        output = node.realize_cached_data()[0]
        d_proj = NDArray.make((T, bs, width), device=X.device)
        d_states = self._backward_steps(grads[0], list(grads[1:]), W_hh.permute((1, 0)).compact(),
                                        output, d_proj)
        # h_{t-1} for every step: h0, then the outputs of steps 0 .. T-2
        h_prev = NDArray.make((T, bs, H), device=X.device)
        h_prev[0] = states[0]
        if T > 1:
            h_prev[1:] = output[:T - 1]
        d2 = d_proj.reshape((T * bs, width))
        d_X = (d2 @ W_ih.permute((1, 0))).reshape((T, bs, I))
        d_W_ih = X.reshape((T * bs, I)).permute((1, 0)) @ d2
        d_W_hh = h_prev.reshape((T * bs, H)).permute((1, 0)) @ d2
        result = [d_X] + list(d_states) + [d_W_ih, d_W_hh]
        if biases:
            d_bias = d2.sum(axis=0)
            result += [d_bias, d_bias]
        return tuple(Tensor.make_const(g) for g in result)


class LSTMLayer(_FusedRecurrentLayer):
    """One LSTM layer over a sequence (gates i, f, g, o, as torch.nn.LSTM)."""

    gates = 4
    num_states = 2

    def _forward_steps(self, proj, states, W_hh, output):
        h, c = states
        H = h.shape[1]
        self._saved = []
        for t in range(proj.shape[0]):
            pre = proj[t] + h @ W_hh
            sig = _sigmoid(pre)
            i = sig[:, 0:H].compact()
            f = sig[:, H:2 * H].compact()
            o = sig[:, 3 * H:4 * H].compact()
            g = pre[:, 2 * H:3 * H].tanh()
            c_prev = c
            c = f * c + i * g
            tanh_c = c.tanh()
            h = o * tanh_c
            output[t] = h
            self._saved.append((i, f, g, o, c_prev, tanh_c))
        return h, c

    def _backward_steps(self, d_out, d_states, W_hh_T, output, d_proj):
        dh, dc = d_states
        H = dh.shape[1]
        for t in reversed(range(d_out.shape[0])):
            i, f, g, o, c_prev, tanh_c = self._saved[t]
            dh = dh + d_out[t]
            dc = dc + dh * o * _one_minus(tanh_c * tanh_c)
            d_proj[t, :, 0:H] = dc * g * i * _one_minus(i)
            d_proj[t, :, H:2 * H] = dc * c_prev * f * _one_minus(f)
            d_proj[t, :, 2 * H:3 * H] = dc * i * _one_minus(g * g)
            d_proj[t, :, 3 * H:4 * H] = dh * tanh_c * o * _one_minus(o)
            dc = dc * f
            dh = d_proj[t] @ W_hh_T
        return dh, dc


class RNNLayer(_FusedRecurrentLayer):
    """One Elman RNN layer over a sequence: h_t = act(x_t W_ih + b_ih + h_{t-1} W_hh + b_hh)."""

    def __init__(self, has_bias: bool, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(has_bias)
        self.nonlinearity = nonlinearity

    def _forward_steps(self, proj, states, W_hh, output):
        (h,) = states
        for t in range(proj.shape[0]):
            pre = proj[t] + h @ W_hh
            h = pre.tanh() if self.nonlinearity == "tanh" else pre.maximum(0.0)
            output[t] = h
        return (h,)

    def _backward_steps(self, d_out, d_states, W_hh_T, output, d_proj):
        (dh,) = d_states
        for t in reversed(range(d_out.shape[0])):
            h = output[t].compact()
            dh = dh + d_out[t]
            if self.nonlinearity == "tanh":
                d_pre = dh * _one_minus(h * h)
            else:
                d_pre = dh * (h > 0)  # relu(a) > 0 exactly where a > 0
            d_proj[t] = d_pre
            dh = d_pre @ W_hh_T
        return (dh,)


def _bias_args(bias_ih, bias_hh):
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("give both bias_ih and bias_hh or neither")
    return () if bias_ih is None else (bias_ih, bias_hh)


def lstm_layer(X, h0, c0, W_ih, W_hh, bias_ih=None, bias_hh=None):
    biases = _bias_args(bias_ih, bias_hh)
    return LSTMLayer(bool(biases))(X, h0, c0, W_ih, W_hh, *biases)


def rnn_layer(X, h0, W_ih, W_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
    biases = _bias_args(bias_ih, bias_hh)
    return RNNLayer(bool(biases), nonlinearity)(X, h0, W_ih, W_hh, *biases)
