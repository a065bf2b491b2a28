"""NDArray and the backends (cpu_numpy, cpu, cuda) against numpy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from needle import backend_ndarray as nd
from conftest import DEVICES, DTYPES

INFO = {d: np.iinfo(d) for d in ("int8", "uint8", "int32")}


def sample(rng, shape, dtype):
    """Random values covering the dtype's range (float32: standard normal)."""
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    lo, hi = INFO[dtype].min, INFO[dtype].max
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


def check(x, expected, atol=1e-5, rtol=1e-5):
    """x is an NDArray equal (same shape and dtype, values within tolerance) to ``expected``."""
    assert isinstance(x, nd.NDArray)
    got = x.numpy()
    expected = np.asarray(expected)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert got.dtype == expected.dtype or expected.dtype == np.float64, (got.dtype, expected.dtype)
    if got.dtype == np.float32:
        np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol)
    else:
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- creation and round trips

def test_devices_compare_by_name_and_repr():
    assert nd.cpu_numpy() == nd.cpu_numpy()
    assert nd.cpu() != nd.cpu_numpy()
    assert repr(nd.cpu()) == "cpu()" and repr(nd.cuda()) == "cuda()"
    assert nd.cpu_numpy().enabled()
    assert nd.default_device() == (nd.cpu() if nd.cpu().enabled() else nd.cpu_numpy())
    assert nd.cpu_numpy() in nd.all_devices()
    assert len({nd.cpu(), nd.cpu(), nd.cpu_numpy()}) == 2


def test_creation_per_dtype(device, dtype, rng):
    x = sample(rng, (3, 4, 5), dtype)
    a = nd.NDArray(x, device=device)
    assert a.dtype == dtype and a.shape == (3, 4, 5) and a.strides == (20, 5, 1)
    assert a.ndim == 3 and a.size == 60 and a.device == device and a.is_compact()
    check(a, x)
    assert device.empty((2, 3), dtype=dtype).dtype == dtype
    check(device.full((2, 3), 7, dtype=dtype), np.full((2, 3), 7, dtype))
    check(device.zeros(2, 3, dtype=dtype), np.zeros((2, 3), dtype))
    check(device.ones((4,), dtype=dtype), np.ones(4, dtype))
    check(nd.full((2, 2), 3, dtype=dtype, device=device), np.full((2, 2), 3, dtype))


def test_numpy_round_trip_extremes(device, dtype):
    if dtype == "float32":
        x = np.array([0.0, -0.0, 1e-38, 3.4e38, -3.4e38, np.inf, -np.inf, 0.1], np.float32)
    else:
        x = np.array([INFO[dtype].min, INFO[dtype].max, 0, 1, INFO[dtype].max - 1], dtype)
    got = nd.NDArray(x, device=device).numpy()
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, x)


def test_dtype_normalisation_and_defaults(device):
    assert nd.NDArray(np.zeros(2, np.int8), device=device).dtype == "int8"
    assert nd.NDArray([1, 2], device=device, dtype=np.uint8).dtype == "uint8"
    assert nd.NDArray([1, 2], device=device, dtype=np.dtype("int32")).dtype == "int32"
    assert nd.NDArray([1, 2], device=device).dtype == "float32"  # lists: float32 as in the course
    assert nd.NDArray(np.zeros(2, np.float64), device=device).dtype == "float32"
    assert nd.NDArray(np.zeros(2, np.int64), device=device).dtype == "float32"
    if "float64" not in device.dtypes:  # cpu_numpy holds float64: tests/test_float64.py
        with pytest.raises(TypeError, match="float64"):
            nd.NDArray([1.0], device=device, dtype="float64")
    with pytest.raises(TypeError, match="int16"):
        device.empty((2,), dtype=np.int16)


def test_scalar_and_empty_arrays(device):
    s = nd.NDArray(np.float32(2.5), device=device)
    assert s.shape == () and s.size == 1
    check(s * 2, np.float32(5.0))
    e = nd.NDArray(np.zeros((0, 3), np.float32), device=device)
    assert e.shape == (0, 3) and e.numpy().shape == (0, 3)
    check(e.sum(axis=0), np.zeros(3, np.float32))


@pytest.mark.parametrize("dst", DEVICES)
def test_to_device_keeps_values_and_dtype(device, dst, dtype, rng):
    x = sample(rng, (5, 6), dtype)
    a = nd.NDArray(x, device=device).permute(1, 0)
    b = a.to(dst)
    assert b.device == dst and b.dtype == dtype
    check(b, x.T)
    c = nd.NDArray(a, device=dst)
    check(c, x.T)


def test_ndarray_copy_constructor_copies(device):
    a = nd.NDArray(np.arange(4, dtype=np.float32), device=device)
    b = nd.NDArray(a)
    b[0] = 100.0
    assert a.numpy()[0] == 0.0
    check(nd.NDArray(a, dtype="int32"), np.arange(4, dtype=np.int32))


# ---------------------------------------------------------------- views and compact

VIEWS = {
    "permute": (lambda a: a.permute((2, 0, 1)), lambda x: x.transpose(2, 0, 1)),
    "permute_neg": (lambda a: a.permute(-1, 1, 0), lambda x: x.transpose(2, 1, 0)),
    "transpose": (lambda a: a.transpose(), lambda x: x.T),
    "broadcast": (lambda a: a[:, :1, :].broadcast_to((2, 3, 4, 5)),
                  lambda x: np.broadcast_to(x[:, :1, :], (2, 3, 4, 5))),
    "getitem_steps": (lambda a: a[1:, ::2, 1:5:3], lambda x: x[1:, ::2, 1:5:3]),
    "getitem_negative": (lambda a: a[-2:, -3:-1, -1], lambda x: x[-2:, -3:-1, -1]),
    "getitem_int_mixed": (lambda a: a[1, :, 2:], lambda x: x[1, :, 2:]),
    "getitem_ellipsis": (lambda a: a[..., 1], lambda x: x[..., 1]),
    "flip_one": (lambda a: a.flip(1), lambda x: np.flip(x, 1)),
    "flip_all": (lambda a: a.flip(), lambda x: np.flip(x)),
    "flip_of_slice": (lambda a: a[:, 1:, ::2].flip((0, 2)), lambda x: np.flip(x[:, 1:, ::2], (0, 2))),
    "reshape_view": (lambda a: a.reshape(6, -1), lambda x: x.reshape(6, -1)),
    "reshape_noncompact": (lambda a: a.permute(1, 0, 2).reshape(4, 15),
                           lambda x: x.transpose(1, 0, 2).reshape(4, 15)),
}


@pytest.mark.parametrize("view", list(VIEWS))
def test_compact_of_views(device, dtype, view, rng):
    x = sample(rng, (3, 4, 5), dtype)
    f_nd, f_np = VIEWS[view]
    a = f_nd(nd.NDArray(x, device=device))
    expected = f_np(x)
    assert a.shape == expected.shape
    check(a, expected)
    c = a.compact()
    assert c.is_compact() and c.strides == nd.NDArray.compact_strides(expected.shape)
    check(c, expected)


@pytest.mark.parametrize("shape,axes", [((40, 50), (1, 0)), ((6, 37, 41), (2, 0, 1)),
                                        ((3, 9, 10, 11), (0, 3, 1, 2)), ((8, 8, 5), (1, 2, 0))])
def test_compact_of_large_permutes(device, dtype, shape, axes, rng):
    x = sample(rng, shape, dtype)
    a = nd.NDArray(x, device=device)
    check(a.permute(axes).compact(), x.transpose(axes))
    check(a.flip(0).permute(axes).compact(), np.flip(x, 0).transpose(axes))
    check(a.permute(axes).flip(-1)[..., ::3].compact(), np.flip(x.transpose(axes), -1)[..., ::3])


def test_views_share_the_buffer(device):
    a = nd.NDArray(np.zeros((3, 4), np.float32), device=device)
    v = a[1:, ::2]
    assert not v.is_compact() and v.offset == 4
    v[0, 1] = 5.0
    assert a.numpy()[1, 2] == 5.0
    a.flip(0)[0, 0] = 7.0
    assert a.numpy()[2, 0] == 7.0


def test_as_strided_im2col(device, rng):
    x = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)  # NHWC
    a = nd.NDArray(x, device=device)
    N, H, W, C = a.shape
    Ns, Hs, Ws, Cs = a.strides
    k = 3
    cols = a.as_strided((N, H - k + 1, W - k + 1, k, k, C), (Ns, Hs, Ws, Hs, Ws, Cs))
    expected = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    check(cols.compact(), expected)
    with pytest.raises(ValueError, match="outside"):
        a.as_strided((N, H, W, C + 1), (Ns, Hs, Ws, Cs))


def test_getitem_errors(device):
    a = nd.NDArray(np.zeros((3, 4), np.float32), device=device)
    with pytest.raises(IndexError, match="3"):
        a[3]
    with pytest.raises(IndexError, match="too many"):
        a[0, 0, 0]
    with pytest.raises(ValueError, match="positive"):
        a[::-1]
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 4\)"):
        a.broadcast_to((5, 4))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5,\)"):
        a.reshape(5)
    with pytest.raises(ValueError, match="permutation"):
        a.permute(0, 0)


# ---------------------------------------------------------------- setitem, pad, astype

def test_setitem(device, dtype, rng):
    x = sample(rng, (4, 5, 6), dtype)
    a = nd.NDArray(x, device=device)
    v = sample(rng, (2, 3), dtype)
    a[1:3, ::2, -1] = nd.NDArray(v, device=device)
    x[1:3, ::2, -1] = v
    check(a, x)
    row = sample(rng, (6,), dtype)
    a[0] = nd.NDArray(row, device=device)  # broadcast (6,) into (5, 6)
    x[0] = row
    check(a, x)
    a[-1, 1:4, ::3] = 9
    x[-1, 1:4, ::3] = 9
    check(a, x)
    a[...] = nd.NDArray(x[:, :, ::-1].copy(), device=device).flip(2)  # whole array, flipped source
    check(a, x)
    a[2, 1] = x[0, 0]  # a numpy value
    x[2, 1] = x[0, 0]
    check(a, x)


def test_setitem_errors(device):
    a = nd.NDArray(np.zeros((2, 3), np.int8), device=device)
    with pytest.raises(ValueError, match="out of range"):
        a[0, 0] = 200
    with pytest.raises(TypeError, match="float32"):
        a[0] = nd.NDArray(np.zeros(3, np.float32), device=device)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        a[0] = nd.NDArray(np.zeros(2, np.int8), device=device)


def test_pad_with_value(device, dtype, rng):
    x = sample(rng, (2, 3, 4), dtype)
    pads = ((0, 0), (1, 2), (2, 1))
    value = 0 if dtype == "uint8" else -3
    if dtype == "uint8":
        value = 128  # a uint8 zero point
    got = nd.NDArray(x, device=device).permute(0, 2, 1).pad(((0, 0), (2, 1), (1, 2)), value=value)
    check(got, np.pad(x.transpose(0, 2, 1), ((0, 0), (2, 1), (1, 2)), constant_values=value))
    check(nd.NDArray(x, device=device).pad(pads), np.pad(x, pads))
    with pytest.raises(ValueError, match="pair"):
        nd.NDArray(x, device=device).pad(((1, 1),))


def test_astype_float_to_int_rounds_half_to_even_and_saturates(device):
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 126.5, 127.5, 200.0, -129.0,
                  np.nan, np.inf, -np.inf, 254.5, 255.5, 3e9, -3e9], np.float32)
    a = nd.NDArray(x, device=device)
    check(a.astype("int8"), np.array([0, 2, 2, 0, -2, -2, 0, 126, 127, 127, -128, 0, 127, -128,
                                      127, 127, 127, -128], np.int8))
    check(a.astype("uint8"), np.array([0, 2, 2, 0, 0, 0, 0, 126, 128, 200, 0, 0, 255, 0,
                                       254, 255, 255, 0], np.uint8))
    check(a.astype(np.int32), np.array([0, 2, 2, 0, -2, -2, 0, 126, 128, 200, -129, 0, 2**31 - 1,
                                        -(2**31), 254, 256, 2**31 - 1, -(2**31)], np.int32))


def test_astype_int_rules(device):
    x = np.array([-(2**31), -1000, -129, -5, 0, 127, 128, 300, 2**24 + 1, 2**31 - 1], np.int32)
    a = nd.NDArray(x, device=device)
    check(a.astype("int8"), np.clip(x, -128, 127).astype(np.int8))
    check(a.astype("uint8"), np.clip(x, 0, 255).astype(np.uint8))
    f = a.astype("float32").numpy()
    np.testing.assert_array_equal(f, x.astype(np.float32))  # round to nearest for large int32
    assert f[8] == 16777216.0
    b = nd.NDArray(np.array([-128, -5, 0, 127], np.int8), device=device)
    check(b.astype("uint8"), np.array([0, 0, 0, 127], np.uint8))
    check(b.astype("float32"), np.array([-128, -5, 0, 127], np.float32))
    c = nd.NDArray(np.array([0, 127, 128, 255], np.uint8), device=device)
    check(c.astype("int8"), np.array([0, 127, 127, 127], np.int8))
    check(c.astype("int32"), np.array([0, 127, 128, 255], np.int32))
    assert a.astype("int32") is a


def test_astype_of_view(device, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32) * 100
    a = nd.NDArray(x, device=device)[::2, 1:].permute(1, 0)
    check(a.astype("int8"), np.clip(np.rint(x[::2, 1:].T), -128, 127).astype(np.int8))


# ---------------------------------------------------------------- float32 math

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "eq": (lambda a, b: a == b, lambda x, y: (x == y).astype(np.float32)),
    "ne": (lambda a, b: a != b, lambda x, y: (x != y).astype(np.float32)),
    "ge": (lambda a, b: a >= b, lambda x, y: (x >= y).astype(np.float32)),
    "gt": (lambda a, b: a > b, lambda x, y: (x > y).astype(np.float32)),
    "lt": (lambda a, b: a < b, lambda x, y: (x < y).astype(np.float32)),
    "le": (lambda a, b: a <= b, lambda x, y: (x <= y).astype(np.float32)),
}


@pytest.mark.parametrize("op", list(BINARY))
def test_ewise_ops(device, op, rng):
    x = rng.standard_normal((6, 7)).astype(np.float32)
    y = rng.standard_normal((7, 6)).astype(np.float32).T  # non-compact operand
    y[0, :3] = x[0, :3]  # some equal elements for the comparisons
    f_nd, f_np = BINARY[op]
    check(f_nd(nd.NDArray(x, device=device), nd.NDArray(y.T, device=device).permute(1, 0)), f_np(x, y))


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("scalar", [0.5, -2, 0.0])
def test_scalar_ops(device, op, scalar, rng):
    x = rng.standard_normal((5, 8)).astype(np.float32)
    x[0, 0] = scalar
    f_nd, f_np = BINARY[op]
    if op == "div" and scalar == 0.0:
        scalar = 3.0
    check(f_nd(nd.NDArray(x, device=device), scalar), f_np(x, np.float32(scalar)))


def test_reflected_and_unary_ops(device, rng):
    x = rng.uniform(0.5, 2.0, (4, 9)).astype(np.float32)
    a = nd.NDArray(x, device=device)
    check(2 - a, 2 - x)
    check(1 / a, 1 / x)
    check(3 + a, 3 + x)
    check(0.5 * a, 0.5 * x)
    check(np.float32(2) * a, 2 * x)
    check(-a, -x)
    check(a ** 2, x ** 2)
    check(a ** 0.5, np.sqrt(x))
    check(a ** -1.5, x ** -1.5)
    check((a - 1.25) ** 2, (x - 1.25) ** 2)
    check((a - 1.25) ** 3, (x - 1.25) ** 3)
    check(a.log(), np.log(x))
    check(nd.exp(a - 1), np.exp(x - 1))
    check(nd.tanh(a - 1), np.tanh(x - 1))
    check(nd.maximum(a - 1, 0), np.maximum(x - 1, 0))


def test_unary_on_views(device, rng):
    x = rng.standard_normal((5, 6)).astype(np.float32)
    a = nd.NDArray(x, device=device)[1:, ::2].flip(0)
    check(a.exp(), np.exp(np.flip(x[1:, ::2], 0)), rtol=1e-5)
    check(a.tanh(), np.tanh(np.flip(x[1:, ::2], 0)))


# ---------------------------------------------------------------- reductions

REDUCE_AXES = [None, 0, 1, 2, -1, (0, 2), (2, 0), (0, 1, 2), ()]


@pytest.mark.parametrize("axis", REDUCE_AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(device, axis, keepdims, rng):
    x = rng.standard_normal((5, 7, 9)).astype(np.float32)
    a = nd.NDArray(x, device=device)
    x64 = x.astype(np.float64)
    check(a.sum(axis=axis, keepdims=keepdims), x64.sum(axis=axis, keepdims=keepdims), atol=1e-4)
    check(a.max(axis=axis, keepdims=keepdims), x64.max(axis=axis, keepdims=keepdims))
    check(nd.sum(a.permute(2, 1, 0), axis=axis, keepdims=keepdims),
          x64.transpose(2, 1, 0).sum(axis=axis, keepdims=keepdims), atol=1e-4)


def test_max_and_maximum_propagate_nan(device):
    x = np.arange(40, dtype=np.float32).reshape(2, 20)
    x[0, 13] = np.nan
    a = nd.NDArray(x, device=device)
    check(a.max(axis=1), np.array([np.nan, 39.0], np.float32))
    check(a.maximum(0.0), np.maximum(x, 0.0))
    check(nd.NDArray(np.zeros((2, 20), np.float32), device=device).maximum(a), np.maximum(0.0, x))


def test_large_sum_is_accurate(device, rng):
    x = rng.uniform(0, 1, (3, 100_000)).astype(np.float32)
    check(nd.NDArray(x, device=device).sum(axis=1), x.astype(np.float64).sum(axis=1), rtol=1e-5)


def test_reduction_axis_errors(device):
    a = nd.NDArray(np.zeros((2, 3), np.float32), device=device)
    with pytest.raises(ValueError, match="axis 2"):
        a.sum(axis=2)
    with pytest.raises(ValueError, match="repeated"):
        a.max(axis=(0, -2))


# ---------------------------------------------------------------- matmul

@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (7, 13, 5), (65, 129, 33), (16, 16, 16),
                                   (2, 300, 3), (33, 1, 17), (128, 64, 96)])
def test_matmul(device, m, n, p, rng):
    x = rng.standard_normal((m, n)).astype(np.float32)
    y = rng.standard_normal((n, p)).astype(np.float32)
    expected = x.astype(np.float64) @ y.astype(np.float64)
    check(nd.NDArray(x, device=device) @ nd.NDArray(y, device=device), expected, atol=1e-4, rtol=1e-4)
    # non-compact operands (a transposed view)
    yt = nd.NDArray(y.T.copy(), device=device).permute(1, 0)
    check(nd.matmul(nd.NDArray(x, device=device), yt), expected, atol=1e-4, rtol=1e-4)


def test_matmul_errors(device):
    a = nd.NDArray(np.zeros((2, 3), np.float32), device=device)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 3\)"):
        a @ a
    with pytest.raises(ValueError, match="shapes"):
        a @ nd.NDArray(np.zeros((3, 2, 1), np.float32), device=device)


# ---------------------------------------------------------------- stack / split / helpers

def test_stack_split(device, rng):
    xs = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    arrs = [nd.NDArray(x, device=device) for x in xs]
    for axis in (0, 1, 2, -1):
        s = nd.stack(arrs, axis=axis)
        check(s, np.stack(xs, axis=axis))
        for got, x in zip(nd.split(s, axis=axis), xs):
            check(got, x)


def test_random_helpers(device):
    np.random.seed(0)
    r = device.rand(3, 4)
    assert r.shape == (3, 4) and r.dtype == "float32"
    v = r.numpy()
    assert (v >= 0).all() and (v < 1).all()
    np.random.seed(0)
    np.testing.assert_array_equal(device.rand((3, 4)).numpy(), v)
    assert device.randn(2, 5).shape == (2, 5)
    oh = device.one_hot(4, np.array([3, 0, 1]))
    check(oh, np.eye(4, dtype=np.float32)[[3, 0, 1]])
    with pytest.raises(IndexError, match="4"):
        device.one_hot(4, np.array([4]))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("int_dtype", ["int8", "uint8", "int32"])
def test_math_needs_float32(device, int_dtype):
    a = nd.NDArray(np.ones((2, 2), int_dtype), device=device)
    f = nd.NDArray(np.ones((2, 2), np.float32), device=device)
    for fn in (lambda: a + 1, lambda: a * a, lambda: f + a, lambda: a.log(), lambda: a.exp(),
               lambda: a.sum(), lambda: a.max(axis=0), lambda: a @ a, lambda: a ** 2,
               lambda: 1 - a, lambda: a == a, lambda: -a):
        with pytest.raises(TypeError, match=f"needs float32, got {int_dtype}"):
            fn()


def test_shape_mismatch_names_shapes(device):
    a = nd.NDArray(np.zeros((2, 3), np.float32), device=device)
    b = nd.NDArray(np.zeros((3, 2), np.float32), device=device)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        a + b


def test_device_mismatch_names_both(device):
    other = nd.cpu_numpy() if device != nd.cpu_numpy() else nd.cpu()
    if not other.enabled():
        pytest.skip("needs a second device")
    a = nd.NDArray(np.zeros(3, np.float32), device=device)
    b = nd.NDArray(np.zeros(3, np.float32), device=other)
    with pytest.raises(ValueError, match=f"{device!r}.*{other!r}"):
        a + b


def test_backend_validates_inputs(device):
    Array = device.Array
    with pytest.raises(ValueError, match="3.*4"):
        device.from_numpy(np.zeros(3, np.float32), Array(4, "float32"))
    with pytest.raises(TypeError, match="int8"):
        device.from_numpy(np.zeros(4, np.int8), Array(4, "float32"))
    with pytest.raises(ValueError, match="outside"):
        device.compact(Array(4, "float32"), Array(4, "float32"), (2, 2), (2, 1), 1)
    with pytest.raises(ValueError, match="outside"):
        device.ewise_setitem(Array(4, "int8"), Array(4, "int8"), (2, 2), (-2, 1), 0)
    with pytest.raises(ValueError, match="ewise_add.*3.*4"):
        device.ewise_add(Array(4), Array(3), Array(4))
    with pytest.raises(ValueError, match="matmul"):
        device.matmul(Array(4), Array(4), Array(4), 2, 3, 2)
    with pytest.raises(TypeError, match="int8"):
        device.reduce_sum(Array(4, "int8"), Array(2, "float32"), 2)
    a = Array(6, "uint8")
    assert a.size == 6 and a.dtype == "uint8" and isinstance(a.ptr(), int)
    if "float64" not in device.dtypes:
        with pytest.raises(TypeError, match="float64"):
            Array(3, "float64")


# ---------------------------------------------------------------- the C++ backend only

cpu_only = pytest.mark.skipif(not nd.cpu().enabled(), reason="C++ backend not built")


@cpu_only
def test_cpu_buffers_are_aligned():
    for dtype in DTYPES:
        for size in (0, 1, 3, 100):
            assert nd.cpu().Array(size, dtype).ptr() % 64 == 0


@cpu_only
def test_cpu_threads_give_same_results(rng):
    mod = nd.cpu().mod
    before = mod.get_num_threads()
    x = rng.standard_normal((1100, 1000)).astype(np.float32)  # above the parallel threshold
    try:
        results = []
        for threads in (1, 3):
            mod.set_num_threads(threads)
            assert mod.get_num_threads() == threads
            a = nd.NDArray(x, device=nd.cpu())
            results.append([a.permute(1, 0).compact().numpy(), (a * 2 + 1).numpy(),
                            a.sum(axis=1).numpy(), a.astype("int8").numpy()])
        for r1, r3 in zip(*results):
            np.testing.assert_array_equal(r1, r3)
        np.testing.assert_array_equal(results[0][0], x.T)
    finally:
        mod.set_num_threads(before)
    with pytest.raises(ValueError, match="0"):
        mod.set_num_threads(0)


@cpu_only
def test_cpu_scalar_values_are_checked():
    mod = nd.cpu().mod
    with pytest.raises(ValueError, match="255"):
        mod.fill(mod.Array(3, "uint8"), 256)
    with pytest.raises(ValueError, match="integer"):
        mod.scalar_setitem(3, 1.5, mod.Array(3, "int8"), (3,), (1,), 0)
    with pytest.raises(ValueError, match="-1"):
        mod.Array(-1, "float32")


# ---------------------------------------------------------------- the numpy backend's int8 calls

def test_numpy_backend_qgemm_plumbing(rng):
    """cpu_numpy's qpack_weights copies, and its qgemm (which runs needle.quant.reference)
    stores the int32 accumulator of the documented formula."""
    d = nd.cpu_numpy()
    m, n, k = 3, 5, 7
    x = rng.integers(0, 255, (m, k), endpoint=True).astype(np.uint8)
    w = rng.integers(-127, 127, (n, k), endpoint=True).astype(np.int8)
    bias = rng.integers(-1000, 1000, n).astype(np.int32)
    colsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    arr = lambda v: nd.NDArray(v, device=d)._handle  # noqa: E731
    wa = arr(w)
    packed = d.qpack_weights(wa, n, k)
    assert packed is not wa and packed.dtype == "int8"
    np.testing.assert_array_equal(packed.array, w.reshape(-1))
    out = d.Array(m * n, "int32")
    ones = np.ones(n, np.int32)
    d.qgemm(arr(x), packed, out, m, n, k, 128, arr(colsum), arr(bias), arr(ones), arr(ones), 0, False)
    expected = (x.astype(np.int64) - 128) @ w.astype(np.int64).T + bias
    np.testing.assert_array_equal(out.array.reshape(m, n), expected)
    with pytest.raises(ValueError, match="n = 5"):
        d.qgemm(arr(x), packed, out, m, n, k, 128, arr(colsum[:4]), arr(bias), arr(ones), arr(ones), 0, False)


def _no_self_overlap(shape, strides):
    reach = 0  # the farthest element reached by the axes with smaller strides
    for n, s in sorted(((n, abs(s)) for n, s in zip(shape, strides) if n > 1), key=lambda t: t[1]):
        if s <= reach:
            return False
        reach += (n - 1) * s
    return True


@cpu_only
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_cpu_strided_kernels_match_numpy_on_random_views(data):
    """compact / ewise_setitem / scalar_setitem of random in-bounds views (zero, negative and
    large strides) agree between the C++ backend and numpy."""
    dtype = data.draw(st.sampled_from(DTYPES))
    ndim = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    strides = tuple(data.draw(st.lists(st.integers(-40, 40), min_size=ndim, max_size=ndim)))
    lo = sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    hi = sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    offset = -lo + data.draw(st.integers(0, 5))
    size = offset + hi + 1 + data.draw(st.integers(0, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    buf = sample(rng, (size,), dtype)
    item = buf.itemsize
    view = np.lib.stride_tricks.as_strided(buf[offset:], shape, tuple(s * item for s in strides))
    mod = nd.cpu().mod
    a = mod.Array(size, dtype)
    mod.from_numpy(buf, a)
    out = mod.Array(int(np.prod(shape)), dtype)
    mod.compact(a, out, shape, strides, offset)
    np.testing.assert_array_equal(mod.to_numpy(out, (out.size,), (1,), 0), view.reshape(-1))
    np.testing.assert_array_equal(mod.to_numpy(a, shape, strides, offset), view)
    if _no_self_overlap(shape, strides):  # then scatter is well defined
        vals = sample(rng, shape, dtype)
        mod.ewise_setitem(nd.NDArray(vals, device=nd.cpu())._handle, a, shape, strides, offset)
        view[...] = vals
        np.testing.assert_array_equal(mod.to_numpy(a, (size,), (1,), 0), buf)
    mod.scalar_setitem(int(np.prod(shape)), 7, a, shape, strides, offset)
    view[...] = 7
    np.testing.assert_array_equal(mod.to_numpy(a, (size,), (1,), 0), buf)


def test_backend_dtype_mismatch_is_type_error(device):
    with pytest.raises(TypeError, match="int8"):
        device.compact(device.Array(4, "int8"), device.Array(4, "float32"), (4,), (1,), 0)
    with pytest.raises(TypeError, match="uint8"):
        device.ewise_setitem(device.Array(4, "uint8"), device.Array(4, "int32"), (4,), (1,), 0)


def test_copy_and_pickle(device, dtype, rng):
    import copy
    import pickle
    x = sample(rng, (3, 4), dtype)
    a = nd.NDArray(x, device=device)[:, ::2]
    b = copy.deepcopy(a)
    assert b.device == device and b.dtype == dtype and b.is_compact()
    check(b, x[:, ::2])
    b[0, 0] = 1
    check(a, x[:, ::2])  # independent
    c = pickle.loads(pickle.dumps(a))
    assert c.device == device and c.dtype == dtype
    check(c, x[:, ::2])
    assert copy.deepcopy(device) is device
    assert pickle.loads(pickle.dumps(device)) == device
