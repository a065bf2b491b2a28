"""Tensor operators: elementwise math, reductions, shape ops, matmul and convolution.

Each op is a :class:`~needle.autograd.TensorOp` with ``compute`` on NDArrays and
``gradient`` on Tensors, plus a lowercase function (``add``, ``matmul``, ``conv``, ...) that
applies it. Elementwise binary functions (``add``, ``multiply``, ``divide``, ``power``)
broadcast their operands numpy-style through explicit ``broadcast_to`` nodes, so the
gradients of broadcast operands are summed back to their shapes.
"""
import builtins
from typing import Optional, Tuple

import numpy

from ..autograd import NDArray, Tensor, TensorOp, TensorTupleOp
from .. import backend_ndarray as array_api

__all__ = [
    "EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWisePow", "PowerScalar", "EWiseDiv",
    "DivScalar", "Negate", "Log", "Exp", "ReLU", "Tanh", "Sigmoid", "Transpose", "Permute",
    "Reshape", "BroadcastTo", "Summation", "Max", "MatMul", "Stack", "Split", "Flip", "Dilate",
    "UnDilate", "Conv",
    "add", "add_scalar", "multiply", "mul_scalar", "power", "power_scalar", "divide",
    "divide_scalar", "negate", "log", "exp", "relu", "tanh", "sigmoid", "transpose", "permute",
    "reshape", "broadcast_to", "summation", "max", "matmul", "stack", "split", "flip", "dilate",
    "undilate", "conv",
]


# ---- helpers ------------------------------------------------------------------------------
def _normalize_axes(axes, ndim) -> Optional[Tuple[int, ...]]:
    """None -> None; int or tuple of ints (negative allowed) -> sorted tuple in [0, ndim)."""
    if axes is None:
        return None
    if isinstance(axes, (int, numpy.integer)):
        axes = (axes,)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def _scalar(value, op):
    """A Python float from a number or a one-element numpy array (course code passes
    ``np.random.randn(1)`` as a scalar)."""
    if isinstance(value, numpy.ndarray) and value.size == 1:
        return float(value.reshape(()))
    if isinstance(value, (int, float, numpy.number, numpy.bool_)):
        return float(value)
    raise TypeError(f"{op}: scalar must be a number or a one-element array, got {value!r}")


def _keepdims_shape(shape, axes):
    """The shape of a reduction over ``axes`` (None = all) with keepdims=True."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _sum_to_shape(grad: Tensor, shape) -> Tensor:
    """Sum ``grad`` over the axes that broadcasting added or stretched so it has ``shape``."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    lead = len(grad.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    if axes:
        grad = summation(grad, axes)
    return reshape(grad, shape)


def _broadcast_shapes(a, b):
    """numpy's broadcast result shape of two shapes, or ValueError naming both."""
    try:
        return tuple(numpy.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise ValueError(f"shapes {tuple(a)} and {tuple(b)} cannot be broadcast together") from None


def _broadcast_pair(a: Tensor, b: Tensor):
    if a.shape == b.shape:
        return a, b
    shape = _broadcast_shapes(a.shape, b.shape)
    if a.shape != shape:
        a = broadcast_to(a, shape)
    if b.shape != shape:
        b = broadcast_to(b, shape)
    return a, b


def _const(x: NDArray) -> Tensor:
    return Tensor.make_const(x)


# ---- elementwise ----------------------------------------------------------------------------
class EWiseAdd(TensorOp):
    def compute(self, a: NDArray, b: NDArray):
        return a + b

    def gradient(self, out_grad: Tensor, node: Tensor):
        return out_grad, out_grad


def add(a, b):
    a, b = _broadcast_pair(a, b)
    return EWiseAdd()(a, b)


class AddScalar(TensorOp):
    def __init__(self, scalar):
        self.scalar = _scalar(scalar, "AddScalar")

    def compute(self, a: NDArray):
        return a + self.scalar

    def gradient(self, out_grad: Tensor, node: Tensor):
        return out_grad


def add_scalar(a, scalar):
    return AddScalar(scalar)(a)


class EWiseMul(TensorOp):
    def compute(self, a: NDArray, b: NDArray):
        return a * b

    def gradient(self, out_grad: Tensor, node: Tensor):
        lhs, rhs = node.inputs
        return out_grad * rhs, out_grad * lhs


def multiply(a, b):
    a, b = _broadcast_pair(a, b)
    return EWiseMul()(a, b)


class MulScalar(TensorOp):
    def __init__(self, scalar):
        self.scalar = _scalar(scalar, "MulScalar")

    def compute(self, a: NDArray):
        return a * self.scalar

    def gradient(self, out_grad: Tensor, node: Tensor):
        return out_grad * self.scalar


def mul_scalar(a, scalar):
    return MulScalar(scalar)(a)


class EWisePow(TensorOp):
    """a ** b elementwise (a > 0 where b is not an integer)."""

    def compute(self, a: NDArray, b: NDArray):
        return (a.log() * b).exp()

    def gradient(self, out_grad: Tensor, node: Tensor):
        a, b = node.inputs
        grad_a = out_grad * b * power(a, b - 1)
        grad_b = out_grad * node * log(a)
        return grad_a, grad_b


def power(a, b):
    a, b = _broadcast_pair(a, b)
    return EWisePow()(a, b)


class PowerScalar(TensorOp):
    """a ** scalar elementwise."""

    def __init__(self, scalar):
        self.scalar = _scalar(scalar, "PowerScalar")

    def compute(self, a: NDArray) -> NDArray:
        return a ** self.scalar

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        return out_grad * (power_scalar(a, self.scalar - 1) * self.scalar)


def power_scalar(a, scalar):
    return PowerScalar(scalar)(a)


class EWiseDiv(TensorOp):
    """a / b elementwise."""

    def compute(self, a, b):
        return a / b

    def gradient(self, out_grad, node):
        lhs, rhs = node.inputs
        return out_grad / rhs, -(out_grad * lhs) / (rhs * rhs)


def divide(a, b):
    a, b = _broadcast_pair(a, b)
    return EWiseDiv()(a, b)


class DivScalar(TensorOp):
    def __init__(self, scalar):
        self.scalar = _scalar(scalar, "DivScalar")

    def compute(self, a):
        return a / self.scalar

    def gradient(self, out_grad, node):
        return out_grad / self.scalar


def divide_scalar(a, scalar):
    return DivScalar(scalar)(a)


class Negate(TensorOp):
    def compute(self, a):
        return -a

    def gradient(self, out_grad, node):
        return -out_grad


def negate(a):
    return Negate()(a)


class Log(TensorOp):
    def compute(self, a):
        return a.log()

    def gradient(self, out_grad, node):
        return out_grad / node.inputs[0]


def log(a):
    return Log()(a)


class Exp(TensorOp):
    def compute(self, a):
        return a.exp()

    def gradient(self, out_grad, node):
        return out_grad * node


def exp(a):
    return Exp()(a)


class ReLU(TensorOp):
    def compute(self, a):
        return a.maximum(0.0)

    def gradient(self, out_grad, node):
        # relu(a) > 0 exactly where a > 0
        mask = node.realize_cached_data() > 0
        return out_grad * _const(mask)


def relu(a):
    return ReLU()(a)


class Tanh(TensorOp):
    def compute(self, a):
        return a.tanh()

    def gradient(self, out_grad, node):
        return out_grad * (1 - node * node)


def tanh(a):
    return Tanh()(a)


class Sigmoid(TensorOp):
    """1 / (1 + exp(-a))."""

    def compute(self, a):
        return ((-a).exp() + 1.0) ** -1

    def gradient(self, out_grad, node):
        return out_grad * node * (1 - node)


def sigmoid(a):
    return Sigmoid()(a)


# ---- shape ops --------------------------------------------------------------------------------
class Transpose(TensorOp):
    """Swap two axes (``axes=(i, j)``), the last two by default (the course semantics).

    A longer tuple is taken as a full permutation of the axes.
    """

    def __init__(self, axes: Optional[tuple] = None):
        self.axes = axes

    def _perm(self, ndim):
        if self.axes is not None and len(self.axes) > 2:
            return tuple(int(a) for a in self.axes)
        if ndim < 2:
            raise ValueError(f"transpose needs at least 2 dimensions, got {ndim}")
        i, j = (ndim - 2, ndim - 1) if self.axes is None else _normalize_axes_unsorted(self.axes, ndim)
        perm = list(range(ndim))
        perm[i], perm[j] = perm[j], perm[i]
        return tuple(perm)

    def compute(self, a):
        return a.permute(self._perm(a.ndim))

    def gradient(self, out_grad, node):
        perm = self._perm(len(out_grad.shape))
        return permute(out_grad, tuple(numpy.argsort(perm)))


def _normalize_axes_unsorted(axes, ndim):
    if len(axes) != 2:
        raise ValueError(f"transpose axes must be a pair, got {axes}")
    res = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        res.append(a % ndim)
    return res


def transpose(a, axes=None):
    return Transpose(axes)(a)


class Permute(TensorOp):
    """Reorder all axes: output axis k is input axis ``axes[k]`` (a view, no copy)."""

    def __init__(self, axes: tuple):
        self.axes = tuple(int(a) for a in axes)

    def compute(self, a):
        return a.permute(self.axes)

    def gradient(self, out_grad, node):
        inverse = tuple(int(i) for i in numpy.argsort([a % len(self.axes) for a in self.axes]))
        return permute(out_grad, inverse)


def permute(a, axes):
    return Permute(axes)(a)


class Reshape(TensorOp):
    """Reshape (one dimension may be -1); copies only when the input is not compact."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)

    def compute(self, a):
        return a.reshape(self.shape)

    def gradient(self, out_grad, node):
        return reshape(out_grad, node.inputs[0].shape)


def reshape(a, shape):
    if isinstance(shape, (int, numpy.integer)):
        shape = (shape,)
    return Reshape(shape)(a)


class BroadcastTo(TensorOp):
    """numpy broadcasting to ``shape`` (new leading axes, stretched size-1 axes): a view."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)

    def compute(self, a):
        return a.broadcast_to(self.shape)

    def gradient(self, out_grad, node):
        return _sum_to_shape(out_grad, node.inputs[0].shape)


def broadcast_to(a, shape):
    return BroadcastTo(shape)(a)


# ---- reductions -------------------------------------------------------------------------------
class Summation(TensorOp):
    """Sum over ``axes`` (None = all, int, or tuple); the axes are removed (numpy shape)."""

    def __init__(self, axes: Optional[tuple] = None):
        self.axes = axes

    def compute(self, a):
        axes = _normalize_axes(self.axes, a.ndim)
        return a.sum(axis=axes)

    def gradient(self, out_grad, node):
        shape = node.inputs[0].shape
        axes = _normalize_axes(self.axes, len(shape))
        grad = reshape(out_grad, _keepdims_shape(shape, axes))
        return broadcast_to(grad, shape)


def summation(a, axes=None):
    return Summation(axes)(a)


class Max(TensorOp):
    """Maximum over ``axes`` (None = all, int, or tuple). The gradient is shared equally
    among tied maxima."""

    def __init__(self, axes: Optional[tuple] = None, keepdims: bool = False):
        self.axes = axes
        self.keepdims = keepdims

    def compute(self, a):
        return a.max(axis=_normalize_axes(self.axes, a.ndim), keepdims=self.keepdims)

    def gradient(self, out_grad, node):
        a = node.inputs[0].realize_cached_data()
        axes = _normalize_axes(self.axes, a.ndim)
        keep = _keepdims_shape(a.shape, axes)
        m = node.realize_cached_data().reshape(keep).broadcast_to(a.shape)
        mask = a == m
        count = mask.sum(axis=axes, keepdims=True).broadcast_to(a.shape)
        grad = broadcast_to(reshape(out_grad, keep), a.shape)
        return grad * _const(mask / count)


def max(a, axes=None, keepdims=False):  # noqa: A001 - the course's op name
    return Max(axes, keepdims)(a)


# ---- matmul -------------------------------------------------------------------------------------
def _matmul_nd(a: NDArray, b: NDArray) -> NDArray:
    """Batched matmul with numpy broadcasting of the leading (batch) axes."""
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs at least 2-D operands, got shapes {a.shape} and {b.shape}")
    m, n = a.shape[-2:]
    n2, p = b.shape[-2:]
    if n != n2:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not fit (inner sizes {n} and {n2})")
    if a.ndim == 2 and b.ndim == 2:
        return a @ b
    if b.ndim == 2:
        # (..., m, n) @ (n, p): one big matmul over the stacked rows
        batch = a.shape[:-2]
        return (a.reshape((-1, n)) @ b).reshape(batch + (m, p))
    batch = _broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if a.ndim == 2:
        # (m, n) @ (..., n, p): a @ [n, batch * p], then move the batch axes in front
        nb = len(batch)
        bb = b.broadcast_to(batch + (n, p))
        cols = bb.permute((nb,) + tuple(range(nb)) + (nb + 1,)).reshape((n, -1))
        out = (a @ cols).reshape((m,) + batch + (p,))
        return out.permute(tuple(range(1, nb + 1)) + (0, nb + 1)).compact()
    ab = a.broadcast_to(batch + (m, n))
    bb = b.broadcast_to(batch + (n, p))
    out = array_api.empty(batch + (m, p), dtype=a.result_dtype("matmul", b), device=a.device)
    for idx in numpy.ndindex(*batch):
        out[idx] = ab[idx] @ bb[idx]
    return out


class MatMul(TensorOp):
    """Matrix product of the last two axes, broadcasting the batch axes like numpy."""

    def compute(self, a, b):
        return _matmul_nd(a, b)

    def gradient(self, out_grad, node):
        lhs, rhs = node.inputs
        grad_lhs = _sum_to_shape(matmul(out_grad, transpose(rhs)), lhs.shape)
        if len(rhs.shape) == 2 and len(lhs.shape) > 2:
            n, p = rhs.shape
            grad_rhs = matmul(transpose(reshape(lhs, (-1, n))), reshape(out_grad, (-1, p)))
        else:
            grad_rhs = _sum_to_shape(matmul(transpose(lhs), out_grad), rhs.shape)
        return grad_lhs, grad_rhs


def matmul(a, b):
    return MatMul()(a, b)


# ---- stack / split --------------------------------------------------------------------------------
class Stack(TensorOp):
    """Stack same-shaped tensors along a new axis ``axis``."""

    def __init__(self, axis: int):
        self.axis = axis

    def compute(self, *args):
        return array_api.stack(args, axis=self.axis)

    def gradient(self, out_grad, node):
        return tuple(split(out_grad, self.axis))


def stack(args, axis):
    return Stack(axis)(*args)


class Split(TensorTupleOp):
    """Split along ``axis`` into a tuple of tensors with that axis removed (inverse of stack)."""

    def __init__(self, axis: int):
        self.axis = axis

    def compute(self, a):
        return array_api.split(a, axis=self.axis)

    def gradient(self, out_grad, node):
        return stack(list(out_grad), self.axis)


def split(a, axis):
    return Split(axis)(a)


# ---- flip / dilate ----------------------------------------------------------------------------------
class Flip(TensorOp):
    """Reverse the order of elements along ``axes`` (a view)."""

    def __init__(self, axes: Optional[tuple] = None):
        self.axes = axes

    def compute(self, a):
        return a.flip(self.axes)

    def gradient(self, out_grad, node):
        return flip(out_grad, self.axes)


def flip(a, axes):
    return Flip(axes)(a)


def _dilate_slices(shape, axes, dilation):
    return tuple(slice(None, None, dilation + 1) if i in axes else slice(None)
                 for i in range(len(shape)))


class Dilate(TensorOp):
    """Insert ``dilation`` zeros after every element along ``axes`` (the course layout:
    an axis of size n becomes n * (dilation + 1), trailing zeros included)."""

    def __init__(self, axes: tuple, dilation: int):
        self.axes = axes
        self.dilation = int(dilation)
        if self.dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")

    def compute(self, a):
        axes = _normalize_axes(self.axes, a.ndim) or ()
        if self.dilation == 0:
            return a
        shape = tuple(n * (self.dilation + 1) if i in axes else n for i, n in enumerate(a.shape))
        out = array_api.full(shape, 0.0, dtype=a.dtype, device=a.device)
        out[_dilate_slices(shape, axes, self.dilation)] = a
        return out

    def gradient(self, out_grad, node):
        return undilate(out_grad, self.axes, self.dilation)


def dilate(a, axes, dilation):
    return Dilate(axes, dilation)(a)


class UnDilate(TensorOp):
    """The inverse of :class:`Dilate`: keep every (dilation + 1)-th element along ``axes``."""

    def __init__(self, axes: tuple, dilation: int):
        self.axes = axes
        self.dilation = int(dilation)
        if self.dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")

    def compute(self, a):
        axes = _normalize_axes(self.axes, a.ndim) or ()
        return a[_dilate_slices(a.shape, axes, self.dilation)]

    def gradient(self, out_grad, node):
        return dilate(out_grad, self.axes, self.dilation)


def undilate(a, axes, dilation):
    return UnDilate(axes, dilation)(a)


# ---- convolution ------------------------------------------------------------------------------------
def _pad_or_crop_hw(x: NDArray, pads) -> NDArray:
    """Pad (positive) or crop (negative) axes 1 and 2 of an NHWC array by
    ``pads = ((top, bottom), (left, right))``."""
    (t, b), (l, r) = pads
    if builtins.min(t, b, l, r) < 0:
        N, H, W, C = x.shape
        x = x[:, builtins.max(-t, 0):H - builtins.max(-b, 0), builtins.max(-l, 0):W - builtins.max(-r, 0), :]
        t, b, l, r = (builtins.max(v, 0) for v in (t, b, l, r))
    if t or b or l or r:
        x = x.pad(((0, 0), (t, b), (l, r), (0, 0)))
    return x


def _im2col(x: NDArray, K: int, stride: int, pads) -> NDArray:
    """The (N * Ho * Wo, K * K * Cin) patch matrix of NHWC ``x``: pad, take the
    (N, Ho, Wo, K, K, Cin) patch view with ``as_strided`` (no copy), copy it once."""
    x = _pad_or_crop_hw(x, pads)
    N, H, W, C = x.shape
    if H < K or W < K:
        raise ValueError(f"conv: kernel size {K} is larger than the padded input {H}x{W}")
    Ho, Wo = (H - K) // stride + 1, (W - K) // stride + 1
    sN, sH, sW, sC = x.strides
    cols = x.as_strided((N, Ho, Wo, K, K, C), (sN, sH * stride, sW * stride, sH, sW, sC))
    return cols.compact().reshape((N * Ho * Wo, K * K * C)), (N, Ho, Wo)


def _check_conv_shapes(x_shape, w_shape):
    K, K2, Cin, _ = w_shape
    if Cin != x_shape[3] or K != K2:
        raise ValueError(f"conv: weight of shape {tuple(w_shape)} does not fit input of shape "
                         f"{tuple(x_shape)} (need a (K, K, Cin, Cout) weight with Cin = input channels)")


def _conv_nd(x: NDArray, w: NDArray, stride: int, pads, return_cols=False):
    """Convolution of NHWC ``x`` with a (K, K, Cin, Cout) ``w`` by im2col and one matmul."""
    _check_conv_shapes(x.shape, w.shape)
    K, _, Cin, Cout = w.shape
    cols, (N, Ho, Wo) = _im2col(x, K, stride, pads)
    out = (cols @ w.compact().reshape((K * K * Cin, Cout))).reshape((N, Ho, Wo, Cout))
    return (out, cols) if return_cols else out


def _col2im(g: NDArray, w: NDArray, x_shape, stride: int, padding: int) -> NDArray:
    """Input gradient of a strided convolution: the patch gradients g @ w^T, shape
    (N, Ho, Wo, K, K, Cin), summed into the padded input positions they came from, then
    the padding is cropped."""
    N, H, W, C = x_shape
    K, _, _, Cout = w.shape
    _, Ho, Wo, _ = g.shape
    w2 = w.compact().reshape((K * K * C, Cout)).permute((1, 0))
    dcols = (g.reshape((N * Ho * Wo, Cout)) @ w2).reshape((N, Ho, Wo, K, K, C))
    dx = array_api.full((N, H + 2 * padding, W + 2 * padding, C), 0.0, dtype=dcols.dtype, device=g.device)
    for i in range(K):
        for j in range(K):
            window = (slice(None), slice(i, i + stride * (Ho - 1) + 1, stride),
                      slice(j, j + stride * (Wo - 1) + 1, stride), slice(None))
            dx[window] = dx[window] + dcols[:, :, :, i, j, :]
    if padding:
        dx = dx[:, padding:padding + H, padding:padding + W, :]
    return dx


class Conv(TensorOp):
    """2-D convolution (cross-correlation) of NHWC input with a (K, K, Cin, Cout) weight.

    ``stride`` and zero ``padding`` are the same for height and width. Output shape
    (N, (H + 2P - K) // stride + 1, (W + 2P - K) // stride + 1, Cout).
    The forward pass keeps its patch matrix for the weight gradient.
    """

    def __init__(self, stride: Optional[int] = 1, padding: Optional[int] = 0):
        self.stride = int(stride)
        self.padding = int(padding)
        self.cols = None
        if self.stride < 1:
            raise ValueError(f"conv stride must be >= 1, got {stride}")
        if self.padding < 0:
            raise ValueError(f"conv padding must be >= 0, got {padding}")

    def compute(self, A, B):
        if A.ndim != 4 or B.ndim != 4:
            raise ValueError(f"conv needs a 4-D NHWC input and a 4-D (K, K, Cin, Cout) weight, "
                             f"got shapes {A.shape} and {B.shape}")
        p = self.padding
        out, self.cols = _conv_nd(A, B, self.stride, ((p, p), (p, p)), return_cols=True)
        return out

    def gradient(self, out_grad, node):
        X = node.inputs[0].realize_cached_data()
        W = node.inputs[1].realize_cached_data()
        g = out_grad.realize_cached_data().compact()
        K, s, p = W.shape[0], self.stride, self.padding
        N, H, Wd, C = X.shape
        _, Ho, Wo, Cout = g.shape
        if not node.inputs[0].requires_grad:
            grad_x = None  # e.g. the network input: skip the most expensive part
        elif s == 1:
            # convolve the output gradient with the flipped kernel (in/out channels swapped)
            w_flip = W.flip((0, 1)).permute((0, 1, 3, 2))
            q = K - 1 - p
            grad_x = _const(_conv_nd(g, w_flip, 1, ((q, q), (q, q))))
        else:
            # strided: scatter-add the patch gradients (col2im); convolving the dilated
            # gradient would multiply mostly zeros
            grad_x = _const(_col2im(g, W, X.shape, s, p))
        # weight gradient: patches^T @ g, computed as (g^T @ patches)^T so that only the
        # small (Cout, N*Ho*Wo) gradient is transposed
        cols = self.cols
        if cols is None:
            cols, _ = _im2col(X, K, s, ((p, p), (p, p)))
        g2 = g.reshape((N * Ho * Wo, Cout))
        grad_w = (g2.permute((1, 0)) @ cols).permute((1, 0)).compact().reshape((K, K, C, Cout))
        return grad_x, _const(grad_w)


def conv(a, b, stride=1, padding=1):
    return Conv(stride, padding)(a, b)
