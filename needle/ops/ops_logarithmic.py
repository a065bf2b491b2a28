"""Numerically stable log-sum-exp and log-softmax."""
from typing import Optional

from ..autograd import Tensor, TensorOp
from .ops_mathematic import (
    _keepdims_shape, _normalize_axes, broadcast_to, exp, reshape, summation,
)

__all__ = ["LogSoftmax", "LogSumExp", "logsoftmax", "logsumexp"]


class LogSumExp(TensorOp):
    """log(sum(exp(Z), axes)) computed as max + log(sum(exp(Z - max))); axes are removed."""

    def __init__(self, axes: Optional[tuple] = None):
        self.axes = axes

    def compute(self, Z):
        axes = _normalize_axes(self.axes, Z.ndim)
        m = Z.max(axis=axes, keepdims=True)
        shifted = Z - m.broadcast_to(Z.shape)
        lse = shifted.exp().sum(axis=axes, keepdims=True).log() + m
        out_shape = tuple(n for i, n in enumerate(Z.shape) if axes is not None and i not in axes)
        return lse.reshape(out_shape)

    def gradient(self, out_grad, node):
        # softmax(Z) as exp(Z - max) / sum(exp(Z - max)): exp(Z - lse) would lose it in float32
        # when |Z| is large (lse rounds to max, every tied entry would get weight 1).
        Z = node.inputs[0]
        axes = _normalize_axes(self.axes, len(Z.shape))
        keep = _keepdims_shape(Z.shape, axes)
        m = Z.realize_cached_data().max(axis=axes, keepdims=True).broadcast_to(Z.shape)
        e = exp(Z - Tensor.make_const(m))
        return broadcast_to(reshape(out_grad / summation(e, axes), keep), Z.shape) * e


def logsumexp(a, axes=None):
    return LogSumExp(axes=axes)(a)


class LogSoftmax(TensorOp):
    """Z - logsumexp(Z) along ``axis`` (the last axis by default; axis 1 of a 2-D batch)."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def compute(self, Z):
        axes = _normalize_axes(self.axis, Z.ndim)
        m = Z.max(axis=axes, keepdims=True).broadcast_to(Z.shape)
        shifted = Z - m
        lse = shifted.exp().sum(axis=axes, keepdims=True).log().broadcast_to(Z.shape)
        return shifted - lse

    def gradient(self, out_grad, node):
        axes = _normalize_axes(self.axis, len(node.shape))
        keep = _keepdims_shape(node.shape, axes)
        total = broadcast_to(reshape(summation(out_grad, axes), keep), node.shape)
        return out_grad - exp(node) * total


def logsoftmax(a, axis=-1):
    return LogSoftmax(axis)(a)
