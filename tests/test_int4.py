"""Weight-only int4: the reference math, the native kernel (bit for bit), the file format."""
import json

import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd
from needle.quant import reference as R
from needle.quant.int4 import INT4_KEY, Int4Weight, has_native_int4, load_int4, save_int4
from needle.serialization import SerializationError

CPU = nd.cpu()
needs_cpu = pytest.mark.skipif(not CPU.enabled() or not hasattr(CPU.mod, "int4_gemm"),
                               reason="C++ CPU backend (with int4_gemm) not built")


def weight(n, k, seed=0, outlier=False):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    if outlier:
        w[:, k // 3] = 50.0
    return w


# ---- reference -------------------------------------------------------------------------------
def test_nibble_order_low_nibble_is_the_even_code():
    codes = np.array([[1, 2, 3], [15, 0, 7]], np.uint8)
    packed = R.pack_int4(codes)
    assert packed.tolist() == [[0x21, 0x03], [0x0F, 0x07]]
    assert np.array_equal(R.unpack_int4(packed, 3), codes)


@pytest.mark.parametrize("k", [1, 8, 37, 64, 130])
def test_pack_roundtrip(k):
    codes = np.random.default_rng(k).integers(0, 16, (5, k)).astype(np.uint8)
    assert np.array_equal(R.unpack_int4(R.pack_int4(codes), k), codes)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        R.pack_int4(np.array([[16]]))


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantize_error_is_half_a_step_per_group(scheme, group):
    w = weight(6, 200, outlier=True)
    codes, scales, zeros = R.quantize_int4(w, group, scheme)
    assert codes.shape == w.shape and codes.max() <= 15
    assert scales.shape == zeros.shape == (6, -(-200 // group))
    if scheme == "symmetric":
        assert np.all(zeros == 8)
    err = np.abs(R.dequantize_int4(R.pack_int4(codes), scales, zeros, group, 200) - w)
    step = np.repeat(scales, group, axis=1)[:, :200].astype(np.float64)
    # symmetric clips +max to code 7 (a half step beyond), asymmetric stays within the grid
    assert np.all(err <= step * (0.5 + 1e-5) + 1e-7)
    # groups are independent: an outlier column only coarsens its own group
    g_out = (200 // 3) // group
    others = [g for g in range(scales.shape[1]) if g != g_out]
    assert scales[:, g_out].min() > 5 * scales[:, others].max()


def test_asymmetric_beats_symmetric_on_one_sided_weights():
    w = np.abs(weight(8, 128))
    errs = {}
    for scheme in ("symmetric", "asymmetric"):
        c, s, z = R.quantize_int4(w, 32, scheme)
        errs[scheme] = np.abs(R.dequantize_int4(R.pack_int4(c), s, z, 32, 128) - w).mean()
    assert errs["asymmetric"] < 0.6 * errs["symmetric"]


def test_group_size_must_be_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        R.quantize_int4(weight(2, 16), 12)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("m,n,k,group", [(1, 5, 37, 32), (3, 7, 200, 64), (2, 4, 130, 128)])
def test_gemm_reference_matches_float64_product(scheme, m, n, k, group):
    w4 = Int4Weight.from_float(weight(n, k, seed=m), group, scheme, device=ndl.cpu_numpy())
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    got = R.int4_gemm_reference(x, w4.codes, w4.scales, w4.zeros, group, k)
    want = x.astype(np.float64) @ w4.dequantize().astype(np.float64).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_gemm_reference_follows_the_documented_lane_order():
    # float32 rounding depends on the order: t = 0 and t = 16 share a partial sum, t = 2 has
    # its own, so 1e8 - 1e8 cancels before the 1 is added
    k, group = 32, 32
    codes = np.full((1, k), 9, np.uint8)            # u - z = 1 with z = 8
    x = np.zeros((1, k), np.float32)
    x[0, 0], x[0, 2], x[0, 16] = 1e8, 1.0, -1e8
    y = R.int4_gemm_reference(x, R.pack_int4(codes), np.ones((1, 1), np.float32),
                              np.full((1, 1), 8, np.uint8), group, k)
    assert y[0, 0] == 1.0                            # a left-to-right sum would give 0
    x[0, 2], x[0, 1] = 0.0, 1.0                      # t = 1 sums with the odd codes
    y = R.int4_gemm_reference(x, R.pack_int4(codes), np.ones((1, 1), np.float32),
                              np.full((1, 1), 8, np.uint8), group, k)
    assert y[0, 0] == 1.0


# ---- kernel ----------------------------------------------------------------------------------
SHAPES = [(1, 1, 8, 8), (1, 7, 37, 32), (1, 64, 512, 64), (3, 9, 200, 64), (32, 130, 128, 128),
          (1, 5, 1, 32), (2, 6, 15, 8), (4, 33, 257, 32)]


@needs_cpu
@pytest.mark.parametrize("isa", ["avx2", "scalar"])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_kernel_is_bit_exact(monkeypatch, isa, scheme, m, n, k, group):
    monkeypatch.setenv("NEEDLE_ISA", isa)
    w4 = Int4Weight.from_float(weight(n, k, seed=n + k), group, scheme, device=CPU)
    x = np.random.default_rng(k).standard_normal((m, k)).astype(np.float32)
    x[:, ::7] *= 100.0                               # large dynamic range: order matters
    got = w4.matmul(x)
    want = R.int4_gemm_reference(x, w4.codes, w4.scales, w4.zeros, group, k)
    assert got.dtype == np.float32 and got.shape == (m, n)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@needs_cpu
def test_kernel_path_follows_needle_isa(monkeypatch):
    monkeypatch.setenv("NEEDLE_ISA", "scalar")
    assert CPU.mod._int4_gemm_isa() == "scalar"
    monkeypatch.delenv("NEEDLE_ISA")
    assert CPU.mod._int4_gemm_isa() in ("avx512", "avx2", "scalar")


@needs_cpu
def test_kernel_large_matrix_threads_agree():
    n, k, group = 512, 1024, 64
    w4 = Int4Weight.from_float(weight(n, k), group, device=CPU)
    x = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
    want = R.int4_gemm_reference(x, w4.codes, w4.scales, w4.zeros, group, k)
    old = CPU.mod.get_num_threads()
    try:
        for t in (1, 2):
            CPU.mod.set_num_threads(t)
            assert np.array_equal(w4.matmul(x), want)
    finally:
        CPU.mod.set_num_threads(old)


def _arrays(m=1, n=4, k=16, group=8):
    f = lambda shape, dt: nd.NDArray(np.zeros(shape, dt), device=CPU, dtype=np.dtype(dt).name)
    return [f((m, k), np.float32), f((n, (k + 1) // 2), np.uint8),
            f((n, -(-k // group)), np.float32), f((n, -(-k // group)), np.uint8),
            f((m, n), np.float32)]


@needs_cpu
@pytest.mark.parametrize("change,error,match", [
    ({"group": 12}, ValueError, "multiple of 8"),
    ({"group": 0}, ValueError, "multiple of 8"),
    ({"k": 0}, ValueError, "k >= 1"),
    ({"m": -1}, ValueError, "m >= 0"),
    ({"k": 18}, ValueError, "x has"),
    ({"n": 5}, ValueError, "codes has"),
    ({"n": 2 ** 40, "k": 2 ** 40}, ValueError, "limit|has"),
])
def test_kernel_rejects_bad_sizes(change, error, match):
    args = dict(m=1, n=4, k=16, group=8)
    a = _arrays()
    args.update(change)
    with pytest.raises(error, match=match):
        CPU.mod.int4_gemm(*[h._handle for h in a], args["m"], args["n"], args["k"],
                          args["group"])


@needs_cpu
def test_kernel_rejects_bad_dtypes_and_zero_points():
    a = _arrays()
    bad = nd.NDArray(np.zeros((4, 8), np.int8), device=CPU, dtype="int8")
    with pytest.raises(TypeError, match="codes must be uint8"):
        CPU.mod.int4_gemm(a[0]._handle, bad._handle, a[2]._handle, a[3]._handle, a[4]._handle,
                          1, 4, 16, 8)
    zeros = nd.NDArray(np.full((4, 2), 16, np.uint8), device=CPU, dtype="uint8")
    with pytest.raises(ValueError, match=r"outside \[0, 15\]"):
        CPU.mod.int4_gemm(a[0]._handle, a[1]._handle, a[2]._handle, zeros._handle,
                          a[4]._handle, 1, 4, 16, 8)
    # the CPU paths index tables by zero point: a caller's word does not skip the check
    with pytest.raises(ValueError, match=r"zero point 16 at 0 is outside \[0, 15\]"):
        CPU.mod.int4_gemm(a[0]._handle, a[1]._handle, a[2]._handle, zeros._handle,
                          a[4]._handle, 1, 4, 16, 8, zeros_checked=True)


@pytest.mark.parametrize("device", ["numpy", pytest.param("cpu", marks=needs_cpu)])
def test_weight_checks_its_zero_points_once_before_the_device_copy(device):
    dev = ndl.cpu_numpy() if device == "numpy" else CPU
    w4 = Int4Weight.from_float(weight(3, 16), 8, "asymmetric", device=dev)
    x = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    want = R.int4_gemm_reference(x, w4.codes, w4.scales, w4.zeros, 8, 16)
    bad_zeros = w4.zeros.copy()
    bad_zeros[2, 1] = 31
    with pytest.raises(ValueError, match=r"zero point 31 at flat index 5 .*outside \[0, 15\]"):
        Int4Weight(w4.codes, w4.scales, bad_zeros, (3, 16), 8, "asymmetric", device=dev)
    # the weight keeps read-only copies: an edit after the device copies exist cannot be
    # silently ignored, and the caller's arrays stay the caller's
    with pytest.raises(ValueError, match="read-only"):
        w4.zeros[2, 1] = 31
    assert bad_zeros.flags.writeable
    # results are the reference's bits; the device copies are made (and checked) once
    assert np.array_equal(w4.matmul(x).view(np.uint32), want.view(np.uint32))
    handles = w4._handles
    assert (handles is not None) == has_native_int4(dev)
    assert np.array_equal(w4.matmul(x).view(np.uint32), want.view(np.uint32))
    assert w4._handles is handles


def test_matmul_shape_check():
    w4 = Int4Weight.from_float(weight(3, 16), 8, device=ndl.cpu_numpy())
    with pytest.raises(ValueError, match=r"\[M, 16\]"):
        w4.matmul(np.zeros((2, 15), np.float32))
    assert w4.matmul(np.ones(16, np.float32)).shape == (3,)


# ---- file format -----------------------------------------------------------------------------
def _saved(tmp_path, scheme="asymmetric"):
    w = {"a": Int4Weight.from_float(weight(6, 37), 32, scheme),
         "b.w": Int4Weight.from_float(weight(3, 64, 1), 64, "symmetric")}
    path = tmp_path / "w.safetensors"
    save_int4(path, w, tensors={"bias": np.arange(3, dtype=np.float32)})
    return path, w


def test_file_roundtrip(tmp_path):
    path, w = _saved(tmp_path)
    got, rest, meta = load_int4(path)
    assert set(got) == {"a", "b.w"} and list(rest) == ["bias"]
    for name in w:
        for field in ("codes", "scales", "zeros"):
            assert np.array_equal(getattr(got[name], field), getattr(w[name], field))
        assert (got[name].group, got[name].scheme) == (w[name].group, w[name].scheme)


def _rewrite(path, tensors=None, desc=None):
    """Re-save the file with some tensors and/or the int4 description replaced."""
    from needle.serialization import load_numpy
    arrays, meta = load_numpy(path)
    arrays.update(tensors or {})
    meta = {k: v for k, v in meta.items() if k not in ("needle.format_version", "needle.kind")}
    if desc is not None:
        meta[INT4_KEY] = desc if isinstance(desc, str) else json.dumps(desc)
    ndl.save(arrays, path, metadata=meta)


@pytest.mark.parametrize("desc,match", [
    ("{not json", "corrupt"),
    ({"a": {"shape": [6, 37], "group": 32}}, "exactly shape, group and scheme"),
    ({"a": {"shape": [6, 37], "group": 12, "scheme": "asymmetric"}}, "multiple of 8"),
    ({"a": {"shape": [6, -1], "group": 32, "scheme": "asymmetric"}}, "shape must be"),
    ({"a": {"shape": [2 ** 40, 37], "group": 32, "scheme": "asymmetric"}}, "shape must be"),
    ({"a": {"shape": [6, 39], "group": 32, "scheme": "asymmetric"}}, "codes"),
    ({"a": {"shape": [6, 37], "group": 64, "scheme": "asymmetric"}}, "scales"),
    ({"a": {"shape": [6, 37], "group": 32, "scheme": "nf4"}}, "scheme"),
    ({"c": {"shape": [6, 37], "group": 32, "scheme": "asymmetric"}}, "no tensor 'c.codes'"),
    ([1, 2], "must map"),
])
def test_file_metadata_is_validated(tmp_path, desc, match):
    path, _ = _saved(tmp_path)
    _rewrite(path, desc=desc)
    with pytest.raises(SerializationError, match=match):
        load_int4(path)


@pytest.mark.parametrize("key,value,match", [
    ("a.codes", np.zeros((6, 19), np.float32), "codes"),
    ("a.zeros", np.full((6, 2), 99, np.uint8), r"outside \[0, 15\]"),
    ("a.scales", np.full((6, 2), np.nan, np.float32), "finite"),
    ("a.scales", np.zeros((6, 2), np.float32), "> 0"),
    ("b.w.zeros", np.full((3, 1), 3, np.uint8), "must all be 8"),
])
def test_file_values_are_validated(tmp_path, key, value, match):
    path, _ = _saved(tmp_path)
    _rewrite(path, tensors={key: value})
    with pytest.raises(SerializationError, match=match):
        load_int4(path)


def test_file_without_int4_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    ndl.save({"x": np.zeros(2, np.float32)}, path)
    with pytest.raises(SerializationError, match="not an int4 weight file"):
        load_int4(path)
