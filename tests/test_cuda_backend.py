"""Tests of the CUDA backend module ``ndarray_backend_cuda``.

Three layers, each skipped when it cannot run:

* module: the extension imports and behaves without a GPU (``device_count() == 0``, a clear error
  when allocating), and ``needle.cuda().enabled()`` agrees with it;
* emulation: the kernels' own tile code, run on the host by ``ndarray_backend_cuda.emulate``,
  matches numpy and is bit-exact against ``needle.quant.reference`` (no GPU needed);
* device: every function of the backend interface on a real GPU, against numpy and the reference.
"""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import needle
from needle.quant import reference as R

try:
    cuda_mod = importlib.import_module("needle.backend_ndarray.ndarray_backend_cuda")
except ImportError:
    cuda_mod = None

needs_module = pytest.mark.skipif(cuda_mod is None, reason="CUDA backend not built (no nvcc)")
# make sanitize loads a host-only build of the module: `emulate` and device_count(), no arrays
needs_full_module = pytest.mark.skipif(cuda_mod is not None and not hasattr(cuda_mod, "Array"),
                                       reason="host-only emulation build (make sanitize)")
HAS_GPU = cuda_mod is not None and cuda_mod.device_count() > 0
needs_gpu = pytest.mark.skipif(not needle.cuda().enabled(), reason="no CUDA device")

DTYPES = ("float32", "int8", "uint8", "int32")
QGEMM_SHAPES = [  # (m, n, k): k not a multiple of 4, m or n = 1, partial and multiple tiles
    (1, 1, 1), (1, 7, 3), (5, 1, 9), (3, 4, 4), (2, 3, 0), (17, 13, 130), (65, 66, 67),
    (64, 64, 64), (130, 3, 5),
]


def rng(seed=0):
    return np.random.default_rng(seed)


def random_of(dtype, shape, g):
    if dtype == "float32":
        return g.standard_normal(shape).astype(np.float32)
    info = np.iinfo(dtype)
    return g.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def qgemm_case(m, n, k, a_dtype, out_dtype, g, scale_lo=1e-4, scale_hi=2e-2):
    """Random operands for qgemm: returns a dict of numpy arguments."""
    a = random_of(a_dtype, (m, k), g)
    w = g.integers(-127, 127, size=(n, k), endpoint=True).astype(np.int8)
    if a_dtype == "uint8":
        a_zp = int(g.integers(0, 255, endpoint=True))
    else:
        a_zp = int(g.integers(-128, 127, endpoint=True))
    mult, shift = R.quantize_multiplier(g.uniform(scale_lo, scale_hi, n))
    if out_dtype == "uint8":
        out_zp = int(g.integers(0, 255, endpoint=True))
    else:
        out_zp = int(g.integers(-128, 127, endpoint=True))
    return dict(a=a, w=w, a_zp=a_zp, colsum=R.weight_colsum(w),
                bias=g.integers(-20000, 20000, size=n).astype(np.int32),
                mult=mult.astype(np.int32), shift=shift.astype(np.int32), out_zp=out_zp)


def reference_qgemm(c, relu, out_dtype):
    return R.qgemm_reference(c["a"], c["w"], c["a_zp"], c["bias"], c["mult"], c["shift"],
                             c["out_zp"], relu, out_dtype, c["colsum"])


# ---- the module, with or without a GPU ------------------------------------------------------
@needs_module
@needs_full_module
def test_module_imports_and_names():
    assert cuda_mod.__device_name__ == "cuda"
    for name in ("Array", "to_numpy", "from_numpy", "fill", "compact", "ewise_setitem",
                 "scalar_setitem", "astype", "ewise_add", "ewise_mul", "ewise_div",
                 "ewise_maximum", "ewise_eq", "ewise_ge", "scalar_add", "scalar_mul",
                 "scalar_div", "scalar_power", "scalar_maximum", "scalar_eq", "scalar_ge",
                 "ewise_log", "ewise_exp", "ewise_tanh", "matmul", "reduce_max", "reduce_sum",
                 "qpack_weights", "qgemm", "device_count"):
        assert callable(getattr(cuda_mod, name)), name


@needs_module
def test_enabled_matches_device_count():
    assert isinstance(cuda_mod.device_count(), int)
    assert needle.cuda().enabled() == (cuda_mod.device_count() > 0)


@needs_module
@needs_full_module
@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
def test_array_without_gpu_raises_clearly():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda_mod.Array(4, "float32")


@needs_module
@needs_full_module
def test_array_rejects_bad_arguments_before_allocating():
    with pytest.raises(TypeError, match="float64"):
        cuda_mod.Array(4, "float64")
    with pytest.raises(TypeError, match="float64"):
        cuda_mod.Array(4, np.float64)
    with pytest.raises(ValueError, match="-1"):
        cuda_mod.Array(-1, "int8")


# ---- host emulation of the kernels (no GPU needed) ---------------------------------------------
@needs_module
@pytest.mark.parametrize("m,k,p", [(1, 1, 1), (3, 5, 7), (64, 16, 64), (65, 17, 130),
                                   (130, 33, 1), (2, 0, 3)])
def test_emulated_matmul_matches_numpy(m, k, p):
    g = rng(m * 1000 + k * 10 + p)
    a = g.standard_normal((m, k)).astype(np.float32)
    b = g.standard_normal((k, p)).astype(np.float32)
    got = cuda_mod.emulate.matmul(a, b)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def emulated_qgemm(c, relu, out_dtype, path):
    return cuda_mod.emulate.qgemm(c["a"], c["w"], c["a_zp"], c["colsum"].tolist(),
                                  c["bias"].tolist(), c["mult"].tolist(), c["shift"].tolist(),
                                  c["out_zp"], relu, out_dtype, path)


@needs_module
@pytest.mark.parametrize("path", ["dp4a", "mma"])
@pytest.mark.parametrize("m,n,k", QGEMM_SHAPES)
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("out_dtype", ["uint8", "int8", "int32"])
def test_emulated_qgemm_bit_exact(m, n, k, a_dtype, out_dtype, path):
    g = rng(m * 7919 + n * 31 + k)
    c = qgemm_case(m, n, k, a_dtype, out_dtype, g)
    for relu in (False, True):
        got = emulated_qgemm(c, relu, out_dtype, path)
        ref = reference_qgemm(c, relu, out_dtype)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


@needs_module
def test_emulated_qgemm_extremes():
    """Multipliers >= 1 (negative n), the largest shift, and accumulator saturation."""
    g = rng(3)
    m, n, k = 9, 6, 37
    c = qgemm_case(m, n, k, "uint8", "int8", g)
    c["a"][:] = 255
    c["w"][:2] = 127
    c["colsum"] = R.weight_colsum(c["w"])
    c["bias"][:] = [2**31 - 1, -(2**31), 5, -5, 0, 1]
    mult, shift = R.quantize_multiplier(np.array([3.0, 2.0**29, 2.0**-31 * 1.5, 0.5,
                                                  2.0**-32 * 1.5, 1.0]))
    c["mult"], c["shift"] = mult.astype(np.int32), shift.astype(np.int32)
    assert shift.min() == -30 and shift.max() == 31
    for out_dtype in ("uint8", "int8", "int32"):
        for relu in (False, True):
            for path in ("dp4a", "mma"):
                np.testing.assert_array_equal(emulated_qgemm(c, relu, out_dtype, path),
                                              reference_qgemm(c, relu, out_dtype))


@needs_module
@needs_full_module
def test_qgemm_path_setting():
    before = cuda_mod.get_qgemm_path()
    try:
        for path in ("dp4a", "mma", "auto"):
            cuda_mod.set_qgemm_path(path)
            assert cuda_mod.get_qgemm_path() == path
        with pytest.raises(ValueError, match="tensor"):
            cuda_mod.set_qgemm_path("tensor")
    finally:
        cuda_mod.set_qgemm_path(before)


@needs_module
@needs_full_module
@pytest.mark.parametrize("env,path,warns", [("auto", "auto", False), ("mma", "mma", False),
                                            ("bogus", "dp4a", True)])
def test_qgemm_path_from_environment(env, path, warns):
    code = ("import warnings; warnings.simplefilter('always'); "
            "import needle.backend_ndarray.ndarray_backend_cuda as m; print(m.get_qgemm_path())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "NEEDLE_CUDA_QGEMM": env}, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == path
    assert ("NEEDLE_CUDA_QGEMM ignored" in run.stderr) == warns


@needs_module
def test_emulated_qgemm_rejects_bad_shift():
    c = qgemm_case(2, 2, 3, "uint8", "uint8", rng(1))
    with pytest.raises(ValueError, match="32"):
        cuda_mod.emulate.qgemm(c["a"], c["w"], 0, c["colsum"].tolist(), c["bias"].tolist(),
                               c["mult"].tolist(), [0, 32], 0, False, "uint8")


VIEWS = [  # (buffer size, shape, strides, offset)
    (24, (2, 3, 4), (12, 4, 1), 0),     # compact
    (24, (4, 3, 2), (1, 4, 12), 0),     # permuted
    (24, (3, 4), (0, 1), 5),            # broadcast (stride 0)
    (24, (2, 3), (-12, -4), 23),        # flipped
    (30, (2, 2, 2), (9, 3, 1), 4),      # sliced sub-block
    (10, (2, 0, 3), (3, 3, 1), 0),      # empty
    (1, (), (), 0),                     # scalar
]


@needs_module
@pytest.mark.parametrize("size,shape,strides,offset", VIEWS)
def test_emulated_compact(size, shape, strides, offset):
    buf = np.arange(size, dtype=np.int32) * 3 - 7
    got = cuda_mod.emulate.compact(buf, shape, strides, offset)
    want = np.lib.stride_tricks.as_strided(buf[offset:], shape, [s * 4 for s in strides])
    np.testing.assert_array_equal(got, want)


@needs_module
def test_emulated_compact_rejects_out_of_bounds_view():
    with pytest.raises(ValueError, match="outside a buffer of 10"):
        cuda_mod.emulate.compact(np.zeros(10, np.float32), (3, 4), (4, 1), 0)
    with pytest.raises(ValueError, match="outside"):
        cuda_mod.emulate.compact(np.zeros(10, np.float32), (3,), (-1,), 1)


FLOATS = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 128.0, -128.5, -129.0,
                   254.5, 255.5, 256.0, np.nan, np.inf, -np.inf, 3e9, -3e9, 2147483520.0,
                   -2147483648.0, 1e-30], np.float32)
INTS = np.array([-(2**31), -129, -128, -1, 0, 127, 128, 255, 256, 2**31 - 1, 16777217],
                np.int32)


def astype_reference(x, dtype):
    """The astype rules of docs/ARCHITECTURE.md, written independently of the backends."""
    if dtype == "float32":
        return x.astype(np.float32)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    if x.dtype == np.float32:
        r = np.rint(x.astype(np.float64))
        r = np.where(np.isnan(r), 0.0, r)
        return np.clip(r, lo, hi).astype(dtype)
    return np.clip(x.astype(np.int64), lo, hi).astype(dtype)


@needs_module
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_astype_rules(dtype):
    np.testing.assert_array_equal(cuda_mod.emulate.astype(FLOATS, dtype),
                                  astype_reference(FLOATS, dtype))
    np.testing.assert_array_equal(cuda_mod.emulate.astype(INTS, dtype),
                                  astype_reference(INTS, dtype))


# ---- on a GPU ----------------------------------------------------------------------------------
def to_device(x):
    x = np.ascontiguousarray(x)
    arr = cuda_mod.Array(x.size, x.dtype.name)
    cuda_mod.from_numpy(x, arr)
    return arr


def from_device(arr, shape):
    strides = needle.backend_ndarray.ndarray.NDArray.compact_strides(tuple(shape))
    return cuda_mod.to_numpy(arr, tuple(shape), strides, 0)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_round_trip_and_fill(dtype):
    x = random_of(dtype, (3, 5), rng(1))
    arr = to_device(x)
    assert arr.size == 15 and arr.dtype == dtype and arr.ptr() != 0
    assert cuda_mod.Array(2, np.dtype(dtype)).dtype == dtype
    got = from_device(arr, (3, 5))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, x)
    cuda_mod.fill(arr, 7)
    np.testing.assert_array_equal(from_device(arr, (15,)), np.full(15, 7, dtype))
    empty = cuda_mod.Array(0, dtype)
    assert from_device(empty, (0, 4)).shape == (0, 4)


@needs_gpu
def test_gpu_from_numpy_checks_dtype_and_size():
    arr = cuda_mod.Array(4, "int8")
    with pytest.raises(TypeError, match="float32"):
        cuda_mod.from_numpy(np.zeros(4, np.float32), arr)
    with pytest.raises(ValueError, match="5"):
        cuda_mod.from_numpy(np.zeros(5, np.int8), arr)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,shape,strides,offset", VIEWS)
def test_gpu_compact_and_to_numpy_views(dtype, size, shape, strides, offset):
    buf = random_of(dtype, (size,), rng(size))
    arr = to_device(buf)
    itemsize = np.dtype(dtype).itemsize
    want = np.lib.stride_tricks.as_strided(buf[offset:], shape, [s * itemsize for s in strides])
    np.testing.assert_array_equal(cuda_mod.to_numpy(arr, shape, strides, offset), want)
    out = cuda_mod.Array(int(np.prod(shape)), dtype)
    cuda_mod.compact(arr, out, shape, strides, offset)
    np.testing.assert_array_equal(from_device(out, shape), want)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_setitem(dtype):
    g = rng(5)
    base = random_of(dtype, (6, 5), g)
    arr = to_device(base)
    src = random_of(dtype, (3, 2), g)
    # out[1:6:2, 3:0:-2] (strides (10, -2) in elements, offset 8)
    cuda_mod.ewise_setitem(to_device(src), arr, (3, 2), (10, -2), 8)
    want = base.copy()
    want[1:6:2, 3:0:-2] = src
    np.testing.assert_array_equal(from_device(arr, (6, 5)), want)
    cuda_mod.scalar_setitem(4, 3, arr, (2, 2), (5, 1), 0)
    want[:2, :2] = 3
    np.testing.assert_array_equal(from_device(arr, (6, 5)), want)
    with pytest.raises(ValueError, match="outside"):
        cuda_mod.scalar_setitem(4, 3, arr, (2, 2), (50, 1), 0)


@needs_gpu
def test_gpu_dtype_mismatch_raises():
    a = cuda_mod.Array(4, "int8")
    b = cuda_mod.Array(4, "uint8")
    with pytest.raises(TypeError, match="int8"):
        cuda_mod.compact(a, b, (4,), (1,), 0)
    with pytest.raises(TypeError, match="needs float32, got int8"):
        cuda_mod.ewise_add(a, a, a)
    f = cuda_mod.Array(3, "float32")
    with pytest.raises(ValueError, match="3"):
        cuda_mod.scalar_add(f, 1.0, cuda_mod.Array(4, "float32"))


@needs_gpu
@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_gpu_astype(src, dst):
    x = FLOATS if src == "float32" else astype_reference(INTS, src)
    out = cuda_mod.Array(x.size, dst)
    cuda_mod.astype(to_device(x), out)
    np.testing.assert_array_equal(from_device(out, x.shape), astype_reference(x, dst))


EWISE = {"ewise_add": np.add, "ewise_mul": np.multiply, "ewise_div": np.divide,
         "ewise_maximum": np.maximum, "ewise_eq": np.equal, "ewise_ge": np.greater_equal}
SCALAR = {"scalar_add": np.add, "scalar_mul": np.multiply, "scalar_div": np.divide,
          "scalar_maximum": np.maximum, "scalar_eq": np.equal, "scalar_ge": np.greater_equal}


@needs_gpu
def test_gpu_float_ops():
    g = rng(11)
    a = g.standard_normal(1000).astype(np.float32)
    b = g.standard_normal(1000).astype(np.float32)
    b[:10] = a[:10]  # equal pairs for eq / ge
    da, db, out = to_device(a), to_device(b), cuda_mod.Array(1000, "float32")
    for name, fn in EWISE.items():
        getattr(cuda_mod, name)(da, db, out)
        np.testing.assert_allclose(from_device(out, (1000,)), fn(a, b).astype(np.float32),
                                   rtol=1e-6, err_msg=name)
    for name, fn in SCALAR.items():
        getattr(cuda_mod, name)(da, float(a[3]), out)
        np.testing.assert_allclose(from_device(out, (1000,)), fn(a, a[3]).astype(np.float32),
                                   rtol=1e-6, err_msg=name)
    pos = to_device(np.abs(a) + 0.1)
    cuda_mod.scalar_power(pos, 2.5, out)
    np.testing.assert_allclose(from_device(out, (1000,)), (np.abs(a) + 0.1) ** 2.5, rtol=1e-5)
    for name, fn, x in (("ewise_log", np.log, np.abs(a) + 0.1), ("ewise_exp", np.exp, a),
                        ("ewise_tanh", np.tanh, a)):
        getattr(cuda_mod, name)(to_device(x), out)
        np.testing.assert_allclose(from_device(out, (1000,)), fn(x.astype(np.float64)),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


@needs_gpu
def test_gpu_reduce_max_propagates_nan():
    a = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, -1.0]], np.float32)
    out = cuda_mod.Array(2, "float32")
    cuda_mod.reduce_max(to_device(a), out, 3)
    np.testing.assert_array_equal(from_device(out, (2,)), [np.nan, 5.0])
    b = np.array([np.nan, 2.0, 1.0, np.nan], np.float32)
    out4 = cuda_mod.Array(4, "float32")
    cuda_mod.ewise_maximum(to_device(b), to_device(b[::-1].copy()), out4)
    np.testing.assert_array_equal(from_device(out4, (4,)), np.maximum(b, b[::-1]))


@needs_gpu
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (5, 1000), (1000, 3)])
def test_gpu_reductions(rows, cols):
    a = rng(rows + cols).standard_normal((rows, cols)).astype(np.float32)
    out = cuda_mod.Array(rows, "float32")
    cuda_mod.reduce_max(to_device(a), out, cols)
    np.testing.assert_array_equal(from_device(out, (rows,)), a.max(axis=1))
    cuda_mod.reduce_sum(to_device(a), out, cols)
    np.testing.assert_allclose(from_device(out, (rows,)), a.astype(np.float64).sum(axis=1),
                               rtol=1e-5, atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (3, 5, 7), (64, 64, 64), (65, 129, 66),
                                   (257, 31, 1), (1, 300, 200)])
def test_gpu_matmul(m, n, p):
    g = rng(m + n + p)
    a = g.standard_normal((m, n)).astype(np.float32)
    b = g.standard_normal((n, p)).astype(np.float32)
    out = cuda_mod.Array(m * p, "float32")
    cuda_mod.matmul(to_device(a), to_device(b), out, m, n, p)
    np.testing.assert_allclose(from_device(out, (m, p)), a.astype(np.float64) @ b,
                               rtol=1e-4, atol=1e-3)


def gpu_qgemm_paths():
    """The qgemm kernels this GPU runs: dp4a everywhere, mma (tensor cores) on sm_80+."""
    if not needle.cuda().enabled():
        return ["dp4a"]
    return ["dp4a", "mma"] if cuda_mod.compute_capability() >= (8, 0) else ["dp4a"]


@pytest.fixture(params=gpu_qgemm_paths())
def qgemm_path(request):
    before = cuda_mod.get_qgemm_path()
    cuda_mod.set_qgemm_path(request.param)
    yield request.param
    cuda_mod.set_qgemm_path(before)


def gpu_qgemm(c, m, n, k, out_dtype, relu):
    packed = cuda_mod.qpack_weights(to_device(c["w"]), n, k)
    out = cuda_mod.Array(m * n, out_dtype)
    cuda_mod.qgemm(to_device(c["a"]), packed, out, m, n, k, c["a_zp"], to_device(c["colsum"]),
                   to_device(c["bias"]), to_device(c["mult"]), to_device(c["shift"]),
                   c["out_zp"], relu)
    return from_device(out, (m, n))


@needs_gpu
@pytest.mark.parametrize("m,n,k", QGEMM_SHAPES)
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("out_dtype", ["uint8", "int8", "int32"])
def test_gpu_qgemm_bit_exact(m, n, k, a_dtype, out_dtype, qgemm_path):
    c = qgemm_case(m, n, k, a_dtype, out_dtype, rng(m * 7919 + n * 31 + k))
    for relu in (False, True):
        np.testing.assert_array_equal(gpu_qgemm(c, m, n, k, out_dtype, relu),
                                      reference_qgemm(c, relu, out_dtype))


@needs_gpu
def test_gpu_qgemm_large_k_and_extremes(qgemm_path):
    """A long reduction (many k tiles, k % 4 != 0) and saturating accumulators."""
    m, n, k = 33, 70, 4099
    c = qgemm_case(m, n, k, "uint8", "int8", rng(9))
    c["a"][:3] = 255
    c["w"][:5] = 127
    c["colsum"] = R.weight_colsum(c["w"])
    c["bias"][:2] = [2**31 - 1, -(2**31)]
    for out_dtype in ("int8", "int32"):
        np.testing.assert_array_equal(gpu_qgemm(c, m, n, k, out_dtype, True),
                                      reference_qgemm(c, True, out_dtype))


@needs_gpu
def test_gpu_mma_path_needs_sm80():
    before = cuda_mod.get_qgemm_path()
    try:
        cuda_mod.set_qgemm_path("mma")
        c = qgemm_case(2, 3, 5, "uint8", "uint8", rng(4))
        if cuda_mod.compute_capability() >= (8, 0):
            np.testing.assert_array_equal(gpu_qgemm(c, 2, 3, 5, "uint8", False),
                                          reference_qgemm(c, False, "uint8"))
        else:
            with pytest.raises(RuntimeError, match="compute capability 8.0"):
                gpu_qgemm(c, 2, 3, 5, "uint8", False)
    finally:
        cuda_mod.set_qgemm_path(before)


@needs_gpu
def test_gpu_qgemm_validates_arguments():
    c = qgemm_case(2, 3, 5, "uint8", "uint8", rng(2))
    c["shift"][1] = 40
    with pytest.raises(ValueError, match="40"):
        gpu_qgemm(c, 2, 3, 5, "uint8", False)
    packed = cuda_mod.qpack_weights(to_device(c["w"]), 3, 5)
    assert packed.size == 3 * 8
    args = [to_device(c[key]) for key in ("colsum", "bias", "mult", "shift")]
    with pytest.raises(ValueError, match="packed"):  # packed for k = 5, called with k = 9
        cuda_mod.qgemm(to_device(np.zeros((2, 9), np.uint8)), packed,
                       cuda_mod.Array(2 * 3, "uint8"), 2, 3, 9, 0, *args, 0, False)
    with pytest.raises(TypeError, match="float32"):
        cuda_mod.qgemm(to_device(c["a"].astype(np.float32)), packed,
                       cuda_mod.Array(6, "uint8"), 2, 3, 5, 0, *args, 0, False)


@needs_gpu
def test_gpu_ndarray_round_trip():
    x = np.arange(12, dtype=np.int8).reshape(3, 4)
    arr = needle.backend_ndarray.ndarray.NDArray(x, device=needle.cuda())
    np.testing.assert_array_equal(arr.numpy(), x)
