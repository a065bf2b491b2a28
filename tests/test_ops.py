"""Every op: forward against numpy (float64) and gradient against central finite differences
of the float64 numpy reference, on every device, including non-contiguous inputs."""
import numpy as np
import pytest

import needle as ndl
from needle import ops

# --------------------------------------------------------------------------------------------
# helpers


def numeric_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar function f at float64 x."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def check_op(device, nfn, npfn, *arrays, grad=True, rtol=1e-5, atol=1e-5, grad_tol=1e-3, seed=0):
    """Compare nfn(*Tensors) with npfn(*float64 arrays) and every input gradient with
    finite differences of sum(npfn(...) * c) for a random c."""
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    tensors = [ndl.Tensor(a, device=device) for a in arrays]
    out = nfn(*tensors)
    ref = npfn(*[a.astype(np.float64) for a in arrays])
    assert out.shape == np.shape(ref), (out.shape, np.shape(ref))
    assert out.dtype == "float32"
    np.testing.assert_allclose(out.numpy(), ref, rtol=rtol, atol=atol)
    if not grad:
        return
    c = np.random.default_rng(seed).standard_normal(np.shape(ref))
    (out * ndl.Tensor(c, device=device, requires_grad=False)).sum().backward()
    for i, (t, a) in enumerate(zip(tensors, arrays)):
        def f(x, i=i):
            args = [b.astype(np.float64) for b in arrays]
            args[i] = x
            return float(np.sum(npfn(*args) * c))
        num = numeric_grad(f, a.astype(np.float64))
        assert t.grad is not None, f"input {i} got no gradient"
        assert t.grad.shape == a.shape
        np.testing.assert_allclose(t.grad.numpy(), num, rtol=grad_tol, atol=grad_tol,
                                   err_msg=f"gradient of input {i}")


def randn(*shape, seed=0, low=None):
    x = np.random.default_rng(seed).standard_normal(shape)
    if low is not None:
        x = np.abs(x) + low
    return x


# --------------------------------------------------------------------------------------------
# elementwise

SHAPES = [(5,), (3, 4), (2, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_ewise_binary(device, shape):
    a, b = randn(*shape, seed=1), randn(*shape, seed=2)
    check_op(device, ops.add, np.add, a, b)
    check_op(device, ops.multiply, np.multiply, a, b)
    check_op(device, ops.divide, np.divide, a, randn(*shape, seed=3, low=0.5))
    check_op(device, lambda x, y: x - y, np.subtract, a, b)
    check_op(device, ops.power, np.power, randn(*shape, seed=4, low=0.5), b, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_scalar_ops(device, shape):
    a = randn(*shape, seed=5)
    pos = randn(*shape, seed=6, low=0.5)
    check_op(device, lambda x: ops.add_scalar(x, 1.5), lambda x: x + 1.5, a)
    check_op(device, lambda x: ops.mul_scalar(x, -2.5), lambda x: x * -2.5, a)
    check_op(device, lambda x: ops.divide_scalar(x, 4.0), lambda x: x / 4.0, a)
    check_op(device, lambda x: ops.power_scalar(x, 3), lambda x: x ** 3, a, rtol=1e-4)
    check_op(device, lambda x: ops.power_scalar(x, 0.5), np.sqrt, pos)
    check_op(device, lambda x: ops.power_scalar(x, -1.5), lambda x: x ** -1.5, pos, rtol=1e-4)


def test_reflected_operators(device):
    a = randn(3, 4, seed=7, low=0.5)
    check_op(device, lambda x: 2 - x, lambda x: 2 - x, a)
    check_op(device, lambda x: 1 / x, lambda x: 1 / x, a)
    check_op(device, lambda x: 3 * x + 1, lambda x: 3 * x + 1, a)
    check_op(device, lambda x: x ** 2, lambda x: x ** 2, a)
    check_op(device, lambda x: 2 ** x, lambda x: 2.0 ** x, a, rtol=1e-4)
    check_op(device, lambda x: -x, np.negative, a)
    check_op(device, lambda x: x - 1.25, lambda x: x - 1.25, a)
    check_op(device, lambda x: x / 2, lambda x: x / 2, a)


@pytest.mark.parametrize("shape", SHAPES)
def test_unary(device, shape):
    a = randn(*shape, seed=8)
    check_op(device, ops.negate, np.negative, a)
    check_op(device, ops.exp, np.exp, a, rtol=1e-5)
    check_op(device, ops.log, np.log, randn(*shape, seed=9, low=0.2))
    check_op(device, ops.tanh, np.tanh, a)
    check_op(device, ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), a)
    # relu: keep away from the kink at 0 where finite differences are meaningless
    a_relu = np.where(np.abs(a) < 0.1, 0.5, a)
    check_op(device, ops.relu, lambda x: np.maximum(x, 0), a_relu)


def test_sigmoid_extremes(device):
    x = ndl.Tensor(np.array([-100.0, -20.0, 0.0, 20.0, 100.0]), device=device)
    y = ops.sigmoid(x).numpy()
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.array([-100.0, -20, 0, 20, 100]))),
                               rtol=1e-6, atol=1e-30)


def test_broadcasting_binary_ops(device):
    """Tensor ops broadcast numpy-style and sum the gradient back to each input's shape."""
    a, b = randn(3, 1, 4, seed=10), randn(5, 1, seed=11)
    check_op(device, ops.add, np.add, a, b)
    check_op(device, ops.multiply, np.multiply, a, b)
    check_op(device, lambda x, y: x / y, np.divide, a, randn(4, seed=12, low=0.5))
    check_op(device, lambda x, y: y - x, lambda x, y: y - x, a, randn(1, 4, seed=13))
    with pytest.raises(ValueError, match=r"\(3, 1, 4\).*\(2, 3\)"):
        ndl.Tensor(a, device=device) + ndl.Tensor(randn(2, 3), device=device)


# --------------------------------------------------------------------------------------------
# non-contiguous inputs: a transposed or broadcast view feeds each kind of op


def test_noncontiguous_inputs(device):
    a = randn(4, 3, seed=14)
    b = randn(3, seed=15)
    check_op(device, lambda x: ops.exp(ops.transpose(x)), lambda x: np.exp(x.T), a)
    check_op(device, lambda x, y: ops.transpose(x) * ops.broadcast_to(y.reshape((3, 1)), (3, 4)),
             lambda x, y: x.T * y.reshape(3, 1), a, b)
    check_op(device, lambda x: ops.summation(ops.transpose(x), axes=(1,)),
             lambda x: x.T.sum(axis=1), a)
    check_op(device, lambda x: ops.reshape(ops.transpose(x), (2, 6)),
             lambda x: x.T.reshape(2, 6), a)
    check_op(device, lambda x, y: ops.matmul(ops.transpose(x), ops.broadcast_to(y.reshape((4, 1)), (4, 5))),
             lambda x, y: x.T @ np.broadcast_to(y.reshape(4, 1), (4, 5)), a, randn(4, seed=16))
    check_op(device, lambda x: ops.logsumexp(ops.transpose(x), axes=(1,)),
             lambda x: np.log(np.exp(x.T).sum(axis=1)), a)
    check_op(device, lambda x: ops.flip(ops.transpose(x), (0,)),
             lambda x: np.flip(x.T, 0), a)
    check_op(device, lambda x: ops.relu(ops.permute(x, (1, 0))) + 0,
             lambda x: np.maximum(x.T, 0), np.where(np.abs(a) < 0.1, 0.3, a))


# --------------------------------------------------------------------------------------------
# shape ops


@pytest.mark.parametrize("shape,axes", [((3, 4), None), ((3, 4), (0, 1)), ((2, 3, 4), None),
                                        ((2, 3, 4), (0, 2)), ((2, 3, 4), (1, 2))])
def test_transpose(device, shape, axes):
    a = randn(*shape, seed=17)
    ax = (len(shape) - 2, len(shape) - 1) if axes is None else axes
    check_op(device, lambda x: ops.transpose(x, axes), lambda x: np.swapaxes(x, *ax), a)


def test_transpose_full_permutation_and_permute(device):
    a = randn(2, 3, 4, seed=18)
    check_op(device, lambda x: ops.transpose(x, (2, 0, 1)), lambda x: np.transpose(x, (2, 0, 1)), a)
    check_op(device, lambda x: ops.permute(x, (1, 2, 0)), lambda x: np.transpose(x, (1, 2, 0)), a)
    check_op(device, lambda x: x.transpose(), lambda x: np.swapaxes(x, 1, 2), a)


@pytest.mark.parametrize("shape,new", [((3, 4), (12,)), ((2, 3, 4), (4, 6)), ((12,), (2, -1, 3)),
                                       ((2, 3), (1, 6, 1))])
def test_reshape(device, shape, new):
    a = randn(*shape, seed=19)
    check_op(device, lambda x: ops.reshape(x, new), lambda x: x.reshape(new), a)


@pytest.mark.parametrize("shape,new", [((1,), (4,)), ((3, 1), (3, 5)), ((1, 4), (2, 3, 4)),
                                       ((4,), (2, 3, 4)), ((2, 1, 3), (2, 4, 3)), ((), (2, 2))])
def test_broadcast_to(device, shape, new):
    a = randn(*shape, seed=20)
    check_op(device, lambda x: ops.broadcast_to(x, new), lambda x: np.broadcast_to(x, new), a)


@pytest.mark.parametrize("shape,axes", [((5,), None), ((3, 4), None), ((3, 4), 0), ((3, 4), (1,)),
                                        ((2, 3, 4), (0, 2)), ((2, 3, 4), (-1,)),
                                        ((2, 3, 4), (0, 1, 2))])
def test_summation(device, shape, axes):
    a = randn(*shape, seed=21)
    np_axes = axes if axes is None or isinstance(axes, int) else tuple(axes)
    check_op(device, lambda x: ops.summation(x, axes), lambda x: np.sum(x, axis=np_axes), a)
    if axes is not None:
        check_op(device, lambda x: x.sum(axes), lambda x: np.sum(x, axis=np_axes), a)


@pytest.mark.parametrize("shape,axes,keepdims", [((3, 4), None, False), ((3, 4), (1,), False),
                                                 ((2, 3, 4), (0, 2), True), ((2, 3, 4), 1, False)])
def test_max(device, shape, axes, keepdims):
    a = randn(*shape, seed=22)
    check_op(device, lambda x: ops.max(x, axes, keepdims=keepdims),
             lambda x: np.max(x, axis=axes, keepdims=keepdims), a)


def test_max_ties_share_gradient(device):
    x = ndl.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]]), device=device)
    ops.max(x, (1,)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [1, 0, 0]])


def test_bad_axes_raise(device):
    x = ndl.Tensor(randn(2, 3), device=device)
    with pytest.raises(ValueError, match="axis 2"):
        ops.summation(x, (2,))
    with pytest.raises(ValueError, match="axis 5"):
        ops.transpose(x, (0, 5))


# --------------------------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((1, 4), (4, 1)), ((2, 3, 4), (4, 5)),
                                   ((4, 3), (2, 3, 5)), ((2, 3, 4), (2, 4, 5)),
                                   ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (2, 4, 5))])
def test_matmul(device, sa, sb):
    a, b = randn(*sa, seed=23), randn(*sb, seed=24)
    check_op(device, ops.matmul, np.matmul, a, b, rtol=1e-5, atol=1e-5)
    check_op(device, lambda x, y: x @ y, np.matmul, a, b, rtol=1e-5, atol=1e-5)


def test_matmul_bad_shapes(device):
    a = ndl.Tensor(randn(3, 4), device=device)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        a @ ndl.Tensor(randn(5, 2), device=device)


# --------------------------------------------------------------------------------------------
# log-sum-exp and log-softmax


@pytest.mark.parametrize("shape,axes", [((3, 4), None), ((3, 4), (1,)), ((3, 4), (0,)),
                                        ((2, 3, 4), (0, 2)), ((2, 3, 4), (1,))])
def test_logsumexp(device, shape, axes):
    a = randn(*shape, seed=25) * 3

    def ref(x):
        m = np.max(x, axis=axes, keepdims=True)
        return np.log(np.sum(np.exp(x - m), axis=axes)) + np.squeeze(m, axis=axes) \
            if axes is not None else np.log(np.sum(np.exp(x - m))) + m.reshape(())
    check_op(device, lambda x: ops.logsumexp(x, axes), ref, a)


def test_logsumexp_is_stable(device):
    x = ndl.Tensor(np.array([[1000.0, 1000.0], [-1000.0, -1000.0]]), device=device)
    np.testing.assert_allclose(ops.logsumexp(x, (1,)).numpy(),
                               [1000 + np.log(2), -1000 + np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_logsoftmax(device, shape):
    a = randn(*shape, seed=26) * 2

    def ref(x):
        m = x.max(axis=-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    check_op(device, ops.logsoftmax, ref, a)


# --------------------------------------------------------------------------------------------
# stack / split / flip / dilate


@pytest.mark.parametrize("shape,axis,n", [((3, 4), 0, 2), ((3, 4), 1, 3), ((3, 4), 2, 1),
                                          ((2, 3), -1, 4)])
def test_stack(device, shape, axis, n):
    arrays = [randn(*shape, seed=30 + i) for i in range(n)]
    check_op(device, lambda *xs: ops.stack(xs, axis), lambda *xs: np.stack(xs, axis), *arrays)


@pytest.mark.parametrize("shape,axis", [((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 2)])
def test_split(device, shape, axis):
    a = randn(*shape, seed=40)
    parts = ops.split(ndl.Tensor(a, device=device), axis)
    assert len(parts) == shape[axis]
    for i, p in enumerate(parts):
        np.testing.assert_allclose(p.numpy(), np.take(a, i, axis=axis), rtol=1e-6)
    # gradient through split: weight the pieces differently
    check_op(device, lambda x: ops.stack([ops.split(x, axis)[i] * (i + 1.0)
                                          for i in range(shape[axis])], axis),
             lambda x: x * np.arange(1, shape[axis] + 1).reshape(
                 [-1 if k == axis else 1 for k in range(len(shape))]), a)
    # a single piece used: the others get zero gradient
    check_op(device, lambda x: ops.split(x, axis)[0] * 2.0,
             lambda x: np.take(x, 0, axis=axis) * 2.0, a)


@pytest.mark.parametrize("shape,axes", [((3, 4), (0,)), ((3, 4), (0, 1)), ((2, 3, 4, 5), (1, 2)),
                                        ((2, 3, 4, 5), (0, 1, 2, 3))])
def test_flip(device, shape, axes):
    a = randn(*shape, seed=41)
    check_op(device, lambda x: ops.flip(x, axes), lambda x: np.flip(x, axes), a)


def _np_dilate(x, axes, d):
    shape = [n * (d + 1) if i in axes else n for i, n in enumerate(x.shape)]
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(x.ndim))] = x
    return out


@pytest.mark.parametrize("shape,axes,d", [((2, 5), (0,), 1), ((2, 5), (1,), 2), ((2, 5), (0, 1), 1),
                                          ((2, 3, 3, 4), (1, 2), 1), ((3, 3), (0,), 0)])
def test_dilate_undilate(device, shape, axes, d):
    a = randn(*shape, seed=42)
    check_op(device, lambda x: ops.dilate(x, axes, d), lambda x: _np_dilate(x, axes, d), a)
    big = _np_dilate(a, axes, d) + 0.5
    sl = tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(len(shape)))
    check_op(device, lambda x: ops.undilate(x, axes, d), lambda x: x[sl], big)


def test_dilate_course_values(device):
    """The course layout keeps trailing zeros: (2, 2) dilated by 1 on axis 0 is (4, 2)."""
    x = ndl.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), device=device)
    np.testing.assert_array_equal(ops.dilate(x, (0,), 1).numpy(),
                                  [[1, 2], [0, 0], [3, 4], [0, 0]])


# --------------------------------------------------------------------------------------------
# convolution


def np_conv(x, w, stride=1, padding=0):
    """NHWC x, (K, K, Cin, Cout) w, float64 reference by explicit patch sums."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    N, H, W, C = x.shape
    K = w.shape[0]
    Ho, Wo = (H - K) // stride + 1, (W - K) // stride + 1
    out = np.zeros((N, Ho, Wo, w.shape[3]))
    for i in range(K):
        for j in range(K):
            patch = x[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride, :]
            out += patch @ w[i, j]
    return out


CONV_CASES = [
    # (N, H, W, Cin, Cout, K, stride, padding)
    (2, 5, 5, 3, 4, 3, 1, 0),
    (2, 5, 5, 3, 4, 3, 1, 1),
    (1, 6, 6, 2, 3, 3, 2, 1),
    (2, 7, 6, 2, 2, 3, 2, 0),   # (H + 2P - K) not divisible by the stride
    (1, 5, 5, 1, 2, 1, 1, 0),
    (1, 6, 6, 2, 3, 5, 1, 2),
    (1, 4, 4, 2, 2, 3, 1, 3),   # padding > K - 1
    (1, 8, 8, 2, 2, 4, 3, 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv_forward_backward(device, case):
    N, H, W, Cin, Cout, K, s, p = case
    x, w = randn(N, H, W, Cin, seed=50), randn(K, K, Cin, Cout, seed=51)
    check_op(device, lambda a, b: ops.conv(a, b, stride=s, padding=p),
             lambda a, b: np_conv(a, b, s, p), x, w, rtol=1e-4, atol=1e-4)


def test_conv_noncontiguous_input(device):
    """An NCHW tensor permuted to NHWC (a view) convolves like its compact copy."""
    x = randn(2, 3, 5, 5, seed=52)  # NCHW
    w = randn(3, 3, 3, 2, seed=53)
    check_op(device, lambda a, b: ops.conv(ops.permute(a, (0, 2, 3, 1)), b, stride=1, padding=1),
             lambda a, b: np_conv(a.transpose(0, 2, 3, 1), b, 1, 1), x, w, rtol=1e-4, atol=1e-4)


def test_conv_bad_shapes(device):
    x = ndl.Tensor(randn(1, 5, 5, 3), device=device)
    with pytest.raises(ValueError, match=r"\(3, 3, 2, 4\)"):
        ops.conv(x, ndl.Tensor(randn(3, 3, 2, 4), device=device))
    with pytest.raises(ValueError, match="stride"):
        ops.conv(x, ndl.Tensor(randn(3, 3, 3, 4), device=device), stride=0)


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (2, 2)])
def test_conv_matches_torch(device, stride, padding):
    torch = pytest.importorskip("torch")
    x, w = randn(3, 9, 9, 4, seed=54), randn(3, 3, 4, 5, seed=55)
    X = ndl.Tensor(x, device=device)
    Wt = ndl.Tensor(w, device=device)
    y = ops.conv(X, Wt, stride=stride, padding=padding)
    c = randn(*y.shape, seed=56)
    (y * ndl.Tensor(c, device=device)).sum().backward()

    tx = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding)
    (ty * torch.tensor(c.transpose(0, 3, 1, 2))).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Wt.grad.numpy(), tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# dtypes


def test_math_on_integer_tensor_raises(device):
    q = ndl.Tensor(np.array([1, 2, 3], dtype=np.int8), device=device, dtype="int8",
                   requires_grad=False)
    with pytest.raises(TypeError, match="int8"):
        ops.exp(q)
