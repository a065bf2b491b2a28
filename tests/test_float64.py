"""float64 end to end on the numpy device, and the clear refusal elsewhere.

cpu_numpy() holds float64: every op keeps it, forward values match numpy float64 to rounding,
gradients match central finite differences of the needle function itself to ~1e-8 (what a
float32 graph cannot reach), and float32 mixed with float64 promotes like numpy while each
gradient keeps its tensor's dtype. The compiled devices refuse float64 with a TypeError that
names the dtype and the way out; data given without a dtype stays float32 unless
NEEDLE_BACKEND=np asks for the numpy backend's semantics.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd
from needle.backend_ndarray import ndarray as nd_module

NP = nd.cpu_numpy()
COMPILED = [pytest.param(nd.cpu(), id="cpu", marks=pytest.mark.skipif(
    not nd.cpu().enabled(), reason="C++ backend not built")), pytest.param(nd.cuda(), id="cuda")]


def T(a, **kw):
    return ndl.Tensor(np.asarray(a, dtype=np.float64), device=NP, dtype="float64", **kw)


def finite_difference_grads(f, *tensors, eps=1e-5):
    """Central differences of sum(f(*tensors)) with respect to each tensor, perturbing the
    tensors' own float64 buffers in place (through ``NDArray.flat``)."""
    grads = []
    for t in tensors:
        data = t.realize_cached_data()
        g = np.zeros(t.shape)
        for j in range(data.size):
            old = float(data.flat[j].numpy())
            data.flat[j] = old + eps
            up = float(f(*tensors).numpy().sum())
            data.flat[j] = old - eps
            down = float(f(*tensors).numpy().sum())
            data.flat[j] = old
            g.flat[j] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_op(f, npf, *arrays):
    """Forward against numpy float64, dtype float64 throughout, backward against finite
    differences."""
    xs = [T(a) for a in arrays]
    out = f(*xs)
    assert out.dtype == "float64"
    np.testing.assert_allclose(out.numpy(), npf(*arrays), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    numeric = finite_difference_grads(f, *xs)
    for x, g in zip(xs, numeric):
        assert x.grad.dtype == "float64" and x.grad.realize_cached_data().dtype == "float64"
        np.testing.assert_allclose(x.grad.numpy(), g, rtol=0, atol=1e-8)


rng = np.random.default_rng(7)
A, B = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
POS = 1 + rng.random((4, 3))
CASES = {
    "add": (lambda a, b: a + b, np.add, A, B),
    "multiply": (lambda a, b: a * b, np.multiply, A, B),
    "divide": (ndl.divide, np.divide, A, POS),
    "divide_scalar": (lambda a: ndl.divide_scalar(a, np.array([2.5])), lambda a: a / 2.5, A),
    "power_scalar": (lambda a: ndl.power_scalar(a, 3), lambda a: a ** 3, A),
    "power": (ndl.power, np.power, POS, B),
    "negate": (ndl.negate, np.negative, A),
    "log": (ndl.log, np.log, POS),
    "exp": (ndl.exp, np.exp, A),
    "relu": (ndl.relu, lambda a: np.maximum(a, 0), A + 0.05),
    "tanh": (ndl.tanh, np.tanh, A),
    "matmul": (ndl.matmul, np.matmul, A, B.T.copy()),
    "matmul_batched": (ndl.matmul, np.matmul, rng.standard_normal((2, 2, 3, 2)), rng.standard_normal((2, 2, 3))),
    "matmul_2d_by_batch": (ndl.matmul, np.matmul, rng.standard_normal((3, 2)), rng.standard_normal((2, 2, 3))),
    "summation_axis": (lambda a: ndl.summation(a, axes=(1,)), lambda a: a.sum(axis=1), A),
    "summation_all": (ndl.summation, np.sum, A),
    "broadcast_to": (lambda a: ndl.broadcast_to(a, (2, 4, 3)), lambda a: np.broadcast_to(a, (2, 4, 3)), A[:1]),
    "reshape": (lambda a: ndl.reshape(a, (3, 4)), lambda a: a.reshape(3, 4), A),
    "transpose": (ndl.transpose, lambda a: a.T, A),
    "logsumexp": (lambda a: ndl.ops.logsumexp(a, axes=(1,)),
                  lambda a: np.log(np.exp(a).sum(axis=1)), A),
    "max": (lambda a: ndl.ops.max(a, axes=(0,)), lambda a: a.max(axis=0), A),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_keeps_float64_and_matches_finite_differences(name):
    f, npf, *arrays = CASES[name]
    check_op(f, npf, *arrays)


def test_composite_graph_and_gradient_of_gradient():
    a, b, c = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    check_op(lambda x, y, z: ndl.summation((x @ y + z) * (x @ y) / 3.0),
             lambda x, y, z: ((x @ y + z) * (x @ y) / 3.0).sum(), a, b, c)
    x = T([6.0])
    y = x * x * x
    y.backward()
    gx = x.grad  # 3 x^2, itself differentiable
    gx.backward()
    assert gx.dtype == x.grad.dtype == "float64"
    np.testing.assert_allclose(x.grad.numpy(), [36.0])


def test_float64_resolves_what_float32_cannot():
    x = T([1.0])
    np.testing.assert_allclose(((x + 1e-12) - x).numpy(), [1e-12], rtol=1e-3)
    assert float(((ndl.Tensor([1.0], device=NP) + 1e-12) - 1.0).numpy()[0]) == 0.0  # float32
    z = T([3.3]) / T([4.6])
    assert z.numpy()[0] == 3.3 / 4.6


def test_mixed_float32_float64_promotes_and_grads_keep_dtypes():
    x32 = ndl.Tensor(A.astype(np.float32), device=NP)
    x64 = T(B)
    out = x32 * x64 + x32
    assert out.dtype == "float64"
    np.testing.assert_allclose(out.numpy(), A.astype(np.float32) * B + A.astype(np.float32), rtol=1e-12)
    out.sum().backward()
    assert x32.grad.dtype == "float32" and x64.grad.dtype == "float64"
    np.testing.assert_allclose(x32.grad.numpy(), B + 1, rtol=1e-6)
    np.testing.assert_allclose(x64.grad.numpy(), A.astype(np.float32), rtol=1e-12)
    m = ndl.matmul(ndl.Tensor(rng.standard_normal((2, 2, 3)).astype(np.float32), device=NP),
                   T(rng.standard_normal((2, 3, 2))))
    assert m.dtype == "float64"


def test_ndarray_float64_math_views_and_conversions():
    a = nd.NDArray(A, device=NP, dtype="float64")
    assert a.dtype == "float64" and a.numpy().dtype == np.float64
    np.testing.assert_array_equal(a.numpy(), A)
    for got, want in ((a + 1e-9, A + 1e-9), (a * a, A * A), (2.0 / (a + 5), 2.0 / (A + 5)),
                      (a.permute((1, 0)).compact(), A.T), (a[1:, ::2], A[1:, ::2]),
                      (a.sum(axis=0), A.sum(axis=0)), (a.max(), A.max()), (a == a, np.ones_like(A)),
                      (a.maximum(0.0), np.maximum(A, 0)), (a.broadcast_to((2, 4, 3)), np.broadcast_to(A, (2, 4, 3)))):
        assert got.dtype == "float64"
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(a.astype("float32").numpy(), A.astype(np.float32))
    np.testing.assert_array_equal(a.astype("int8").numpy(), np.clip(np.rint(A), -128, 127).astype(np.int8))
    assert nd.NDArray(a.astype("float32")).astype("float64").dtype == "float64"
    a[0, 0] = 1e-300
    assert a.numpy()[0, 0] == 1e-300


def test_init_creators_in_float64():
    np.random.seed(3)
    want = np.random.randn(3, 2)
    np.random.seed(3)
    got = ndl.init.randn(3, 2, device=NP, dtype="float64")
    assert got.dtype == "float64"
    np.testing.assert_array_equal(got.numpy(), want)  # unrounded draws
    for t in (ndl.init.ones(2, device=NP, dtype="float64"), ndl.init.zeros_like(got),
              ndl.init.one_hot(3, [0, 2], device=NP, dtype="float64"),
              ndl.init.rand(2, device=NP, dtype="float64")):
        assert t.dtype == "float64"
    assert ndl.init.randn(3, device=NP).dtype == "float32"  # the default stays float32


@pytest.mark.parametrize("device", COMPILED)
def test_compiled_devices_refuse_float64_clearly(device):
    x64 = T(A)
    attempts = [lambda: ndl.Tensor(A, device=device, dtype="float64"),
                lambda: nd.NDArray(A, device=device, dtype=np.float64),
                lambda: x64.to(device),
                lambda: ndl.init.randn(2, device=device, dtype="float64"),
                lambda: device.check_dtype("float64")]
    if device.enabled():
        attempts.append(lambda: nd.NDArray(A.astype(np.float32), device=device).astype("float64"))
    for attempt in attempts:
        with pytest.raises(TypeError, match=rf"float64 is not available on device {re.escape(repr(device))}.*cpu_numpy"):
            attempt()
    assert "float64" not in device.dtypes and "float64" in NP.dtypes


def test_implicit_dtype_default_is_float32():
    for device in nd.all_devices():
        for data in (A, A.tolist(), 1.5, np.float64(2.0), np.arange(3)):
            assert ndl.Tensor(data, device=device).dtype == "float32"
        assert nd.NDArray(A, device=device).dtype == "float32"


def test_implicit_dtype_under_numpy_backend_semantics(monkeypatch):
    monkeypatch.setattr(nd_module, "KEEP_NUMPY_FLOATS", True)
    assert ndl.Tensor(A, device=NP).dtype == "float64"
    assert ndl.Tensor([[0.5, 2.0]], device=NP).dtype == "float64"
    assert ndl.Tensor([1, 2], device=NP).dtype == "float64"  # numpy's int64 is no kit dtype
    assert ndl.Tensor(A.astype(np.float32), device=NP).dtype == "float32"
    assert ndl.Tensor(np.int8([1]), device=NP).dtype == "float64"  # Tensors are float
    assert nd.NDArray(np.int8([1]), device=NP).dtype == "int8"
    assert nd.NDArray([0.5], device=NP).dtype == "float64"
    if nd.cpu().enabled():  # implicit data on a device without float64 becomes float32 ...
        assert ndl.Tensor(A, device=nd.cpu()).dtype == "float32"
        with pytest.raises(TypeError, match="float64"):  # ... an explicit request raises
            ndl.Tensor(A, device=nd.cpu(), dtype="float64")
    # the course's gradient-check pattern: a float64 tensor nudged through .flat by 1e-4
    x = ndl.Tensor(rng.standard_normal((3, 2)), device=NP)
    out = ndl.power_scalar(x, 3)
    grad = out.op.gradient_as_tuple(ndl.Tensor(np.ones(out.shape), device=NP), out)[0]
    assert grad.dtype == "float64"
    numeric = finite_difference_grads(lambda t: ndl.power_scalar(t, 3), x, eps=1e-4)[0]
    assert np.linalg.norm(grad.numpy() - numeric) < 1e-6


def test_needle_backend_np_selects_numpy_semantics():
    code = ("import numpy as np, needle as ndl; x = ndl.Tensor(np.random.randn(2)); "
            "print(x.device, x.dtype, ndl.Tensor(np.zeros(2, np.float32)).dtype)")
    env = dict(os.environ, NEEDLE_BACKEND="np")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["cpu_numpy()", "float64", "float32"]
