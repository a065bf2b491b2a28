"""Tensor construction, dtypes, devices, and the backward pass (topological order, summing
gradients over paths, detaching)."""
import numpy as np
import pytest

import needle as ndl
from needle import ops
from needle.autograd import find_topo_sort


def test_tensor_defaults(device):
    x = ndl.Tensor([[1.0, 2.0], [3.0, 4.0]], device=device)
    assert x.shape == (2, 2)
    assert x.dtype == "float32"
    assert x.device == device
    assert x.requires_grad
    assert x.is_leaf()
    np.testing.assert_array_equal(x.numpy(), [[1, 2], [3, 4]])


def test_tensor_default_device():
    x = ndl.Tensor(np.zeros(3))
    assert x.device == ndl.default_device()


def test_float64_numpy_becomes_float32(device):
    x = ndl.Tensor(np.array([0.1, 0.2], dtype=np.float64), device=device)
    assert x.dtype == "float32"
    np.testing.assert_array_equal(x.numpy(), np.array([0.1, 0.2], dtype=np.float32))


def test_scalar_tensor(device):
    x = ndl.Tensor(3.0, device=device)
    assert x.shape == ()
    y = x * x
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 6.0)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32"])
def test_integer_tensors(device, dtype):
    """Integer tensors hold data (e.g. quantized weights) and never require gradients."""
    values = np.array([[-3, 0], [5, 100]], dtype=np.int64)
    if dtype == "uint8":
        values = np.abs(values)
    nd = ndl.backend_ndarray.array(values.astype(dtype), device=device)
    t = ndl.Tensor(nd, requires_grad=False)
    assert t.dtype == dtype and t.device == device
    assert not t.requires_grad
    np.testing.assert_array_equal(t.numpy(), values)
    # an NDArray keeps its dtype without dtype=; conversions follow the astype rules
    t2 = ndl.Tensor(nd)
    assert t2.dtype == dtype and not t2.requires_grad
    t3 = ndl.Tensor(np.array([1.5, 2.5, -300.0]), dtype=dtype, device=device)
    expected = {"int8": [2, 2, -128], "uint8": [2, 2, 0], "int32": [2, 2, -300]}[dtype]
    np.testing.assert_array_equal(t3.numpy(), expected)
    assert t3.dtype == dtype
    f = t.astype("float32")
    assert f.dtype == "float32"
    np.testing.assert_array_equal(f.numpy(), values)


def test_tensor_from_tensor_and_devices(device):
    x = ndl.Tensor(np.arange(6.0).reshape(2, 3), device=device)
    y = ndl.Tensor(x, device=ndl.cpu_numpy())
    assert y.device == ndl.cpu_numpy()
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    z = x.to(ndl.cpu_numpy())
    np.testing.assert_array_equal(z.numpy(), x.numpy())


def test_detach_and_data(device):
    x = ndl.Tensor(np.ones((2, 2)), device=device)
    y = x * 2
    d = y.detach()
    assert d.is_leaf() and not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), 2 * np.ones((2, 2)))
    assert not x.data.requires_grad
    x.data = ndl.Tensor(np.zeros((2, 2)), device=device)
    np.testing.assert_array_equal(x.numpy(), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="int8"):
        x.data = ndl.Tensor(np.zeros((2, 2)), device=device, dtype="int8", requires_grad=False)


def test_no_graph_without_requires_grad(device):
    x = ndl.Tensor(np.ones(3), device=device, requires_grad=False)
    y = ops.exp(x) + 1
    assert y.is_leaf() and not y.requires_grad


def test_gradient_sums_over_paths(device):
    """d/dx of x*x + x*3 + exp(x) uses x along three paths."""
    a = np.array([0.5, -1.0, 2.0])
    x = ndl.Tensor(a, device=device)
    y = x * x + x * 3 + ops.exp(x)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * a + 3 + np.exp(a), rtol=1e-5)


def test_diamond_graph_and_intermediate_grads(device):
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = ndl.Tensor(a, device=device)
    u = x * 2
    v = u + u * u
    v.backward(ndl.Tensor(np.ones((2, 2)), device=device))
    np.testing.assert_allclose(u.grad.numpy(), 1 + 2 * (2 * a), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), 2 * (1 + 2 * (2 * a)), rtol=1e-6)


def test_backward_out_grad(device):
    a = np.array([1.0, 2.0, 3.0])
    x = ndl.Tensor(a, device=device)
    y = x * x
    y.backward(ndl.Tensor(np.array([1.0, 0.0, -2.0]), device=device))
    np.testing.assert_allclose(x.grad.numpy(), 2 * a * [1, 0, -2])
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        y.backward(ndl.Tensor(np.ones(2), device=device))


def test_backward_replaces_previous_grad(device):
    """A new backward call sets .grad afresh (optimizers call reset_grad between steps)."""
    x = ndl.Tensor(np.array([1.0, 2.0]), device=device)
    (x * 3).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5, 5])


def test_topo_sort_order():
    a = ndl.Tensor(np.ones(2))
    b = ndl.Tensor(np.ones(2))
    c = a * b
    d = c + a
    e = d * c
    order = find_topo_sort([e])
    pos = {id(n): i for i, n in enumerate(order)}
    assert len(order) == 5
    for node in order:
        for inp in node.inputs:
            assert pos[id(inp)] < pos[id(node)]


def test_deep_graph_no_recursion_limit(device):
    x = ndl.Tensor(np.array([1.0]), device=device)
    y = x
    for _ in range(3000):
        y = y + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_constant_inputs_get_no_grad(device):
    x = ndl.Tensor(np.ones(2), device=device)
    c = ndl.Tensor(np.full(2, 3.0), device=device, requires_grad=False)
    (x * c).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3, 3])
    assert getattr(c, "grad", None) is None


def test_tensor_methods(device):
    a = np.arange(24.0).reshape(2, 3, 4)
    x = ndl.Tensor(a, device=device)
    np.testing.assert_allclose(x.sum((0, 2)).numpy(), a.sum(axis=(0, 2)))
    np.testing.assert_allclose(x.reshape((6, 4)).numpy(), a.reshape(6, 4))
    np.testing.assert_allclose(x.transpose().numpy(), a.swapaxes(1, 2))
    np.testing.assert_allclose(x.transpose((0, 1)).numpy(), a.swapaxes(0, 1))
    np.testing.assert_allclose(x.permute((2, 0, 1)).numpy(), a.transpose(2, 0, 1))
    np.testing.assert_allclose(x.max((1,)).numpy(), a.max(axis=1))
    np.testing.assert_allclose(ndl.Tensor(a[:1, :1, :1], device=device).broadcast_to((2, 2, 2)).numpy(),
                               np.zeros((2, 2, 2)))
    assert x.ndim == 3
    assert "Tensor" in repr(x)


def test_tuple_ops(device):
    x = ndl.Tensor(np.array([1.0, 2.0]), device=device)
    y = ndl.Tensor(np.array([3.0, 4.0]), device=device)
    t = ops.make_tuple(x, y)
    assert len(t) == 2
    np.testing.assert_array_equal(t[1].numpy(), [3, 4])
    a, b = ops.fused_add_scalars(x, 1.0, 2.0)
    np.testing.assert_array_equal(a.numpy(), [2, 3])
    (a * b).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), (x.numpy() + 2) + (x.numpy() + 1))


def test_topo_sort_follows_input_order():
    """Post-order depth-first search visiting inputs left to right (the course order)."""
    a, b = 0.88282157, 0.90170084
    a1, b1 = ndl.Tensor(np.asarray([[a]])), ndl.Tensor(np.asarray([[b]]))
    c1 = 3 * a1 * a1 + 4 * b1 * a1 - a1
    order = [float(x.numpy()[0, 0]) for x in find_topo_sort([c1])]
    expected = [a, 3 * a, 3 * a * a, b, 4 * b, 4 * b * a, 3 * a * a + 4 * b * a, -a,
                3 * a * a + 4 * b * a - a]
    np.testing.assert_allclose(order, expected, rtol=1e-6)


def test_bad_dtype_and_mixed_devices_raise(device):
    if "float64" not in device.dtypes:  # cpu_numpy holds float64: tests/test_float64.py
        with pytest.raises(TypeError, match="float64"):
            ndl.Tensor(np.zeros(3), device=device, dtype="float64")
    if device != ndl.cpu_numpy():
        a = ndl.Tensor(np.zeros(3), device=device)
        b = ndl.Tensor(np.zeros(3), device=ndl.cpu_numpy())
        with pytest.raises(ValueError, match="different devices"):
            a + b
