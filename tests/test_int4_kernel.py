"""The native int4 kernel (``int4_gemm``) against ``int4_gemm_reference``, bit for bit.

Operands are drawn directly (any codes, any zero point 0..15, any float32 scale and
activation), not through quantization, so the shapes and values the vector path treats
specially are all reached: group sizes that are and are not multiples of 16, a short last
group, odd k, channel counts that are not multiples of the 4-channel block, one and several
activation rows (the register path and the unpacked-tile path), huge, tiny, subnormal,
infinite and NaN values. Each case runs on every path (NEEDLE_ISA=scalar forces scalar).
"""
import numpy as np
import pytest

from needle import backend_ndarray as nd
from needle.quant import reference as R

CPU = nd.cpu()
pytestmark = pytest.mark.skipif(not CPU.enabled() or not hasattr(CPU.mod, "int4_gemm"),
                                reason="C++ CPU backend (with int4_gemm) not built")
ISAS = ["avx512", "avx2", "scalar"]  # NEEDLE_ISA caps: a level the CPU lacks runs the next one


def operands(m, n, k, group, seed, x_scale=1.0):
    """Random x [m, k], packed codes [n, ceil(k/2)], scales and zero points [n, G]."""
    rng = np.random.default_rng(seed)
    ng = -(-k // group)
    x = (rng.standard_normal((m, k)) * x_scale).astype(np.float32)
    x[:, ::5] *= 1000.0                       # large dynamic range: the order shows
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    scales = rng.uniform(0.001, 2.0, (n, ng)).astype(np.float32)
    zeros = rng.integers(0, 16, (n, ng)).astype(np.uint8)
    return x, R.pack_int4(codes), scales, zeros


def kernel(x, packed, scales, zeros, group):
    m, k = x.shape
    n = packed.shape[0]
    arr = lambda a: nd.NDArray(np.ascontiguousarray(a), device=CPU, dtype=a.dtype.name)
    out = nd.NDArray(np.full((m, n), 7.0, np.float32), device=CPU, dtype="float32")
    CPU.mod.int4_gemm(arr(x)._handle, arr(packed)._handle, arr(scales)._handle,
                      arr(zeros)._handle, out._handle, m, n, k, group)
    return out.numpy()


def assert_bits_equal(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} outputs differ, first at "
                           f"{np.argwhere(bad)[0]}: {got[bad][0]!r} vs {want[bad][0]!r}")


def check(monkeypatch, isa, x, packed, scales, zeros, group):
    monkeypatch.setenv("NEEDLE_ISA", isa)
    with np.errstate(all="ignore"):
        want = R.int4_gemm_reference(x, packed, scales, zeros, group, x.shape[1])
    assert_bits_equal(kernel(x, packed, scales, zeros, group), want)
    return want


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("group", [8, 16, 24, 32, 48, 64, 128, 256])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 100, 257])
def test_every_group_size_and_tail(monkeypatch, isa, group, k):
    check(monkeypatch, isa, *operands(2, 6, k, group, seed=group * 1000 + k), group)
    # one row of x and 17 channels: the AVX-512 path's two 8-channel blocks and a last one
    x, packed, scales, zeros = operands(1, 17, k, group, seed=group * 1000 + k + 1)
    check(monkeypatch, isa, x, packed, scales, zeros, group)
    # one zero point everywhere (the symmetric scheme's 8, and another): the lookup path
    for z in (8, k % 16):
        check(monkeypatch, isa, x, packed, scales, np.full_like(zeros, z), group)
    # uniform in the first channels only
    zeros[:8] = 3
    check(monkeypatch, isa, x, packed, scales, zeros, group)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("group", [32, 48, 64, 128])
@pytest.mark.parametrize("zero_points", ["mixed", "uniform", "uniform_but_one"])
def test_many_groups(monkeypatch, isa, group, zero_points):
    # 17 full groups and a short one: two whole 8-group tree batches (scales transposed in
    # registers), a partial batch and the tail; 10 channels: two whole 4-channel blocks, a
    # partial one
    k = 17 * group + 16
    x, packed, scales, zeros = operands(1, 10, k, group, seed=group + 7)
    if zero_points != "mixed":
        zeros[:] = 8
    if zero_points == "uniform_but_one":
        zeros[5, 11] = 2                     # one group of the second block differs
    check(monkeypatch, isa, x, packed, scales, zeros, group)
    x2 = operands(2, 10, k, group, seed=group + 8)[0]
    check(monkeypatch, isa, x2, packed, scales, zeros, group)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 7, 9])
def test_rows_of_x_and_channel_counts(monkeypatch, isa, m, n):
    # n not a multiple of the 4-channel block; m = 1 (registers) and m > 1 (tiles)
    check(monkeypatch, isa, *operands(m, n, 200, 64, seed=10 * m + n), 64)
    check(monkeypatch, isa, *operands(m, n, 256, 32, seed=10 * m + n + 1), 32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 3])
def test_every_zero_point_and_code(monkeypatch, isa, m):
    # every (code, zero point) pair: u - z covers -15..15 on both nibbles
    group, k = 32, 16 * 32
    codes = np.tile(np.arange(16, dtype=np.uint8), (16, k // 16))
    codes[:, 1::2] = codes[:, 1::2][:, ::-1]              # odd nibbles run the other way
    zeros = (np.arange(16)[:, None] + np.arange(k // group)[None, :]) % 16
    scales = np.linspace(0.5, 3.0, 16 * (k // group), dtype=np.float32).reshape(16, -1)
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    want = check(monkeypatch, isa, x, R.pack_int4(codes), scales, zeros.astype(np.uint8), group)
    w = R.dequantize_int4(R.pack_int4(codes), scales, zeros, group, k).astype(np.float64)
    np.testing.assert_allclose(want, x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [2, 3, 4, 5, 7, 32])
@pytest.mark.parametrize("group,k", [(16, 80), (32, 257), (48, 200), (64, 130), (128, 384),
                                     (1024, 2100)])
def test_several_rows_share_each_unpacked_group(monkeypatch, isa, m, group, k):
    # m >= 2 unpacks each group once for all rows (AVX-512: 8 channels, 3 rows at a time,
    # then the 1 or 2 rows left; AVX2: 4 channels); 19 channels: two blocks of 8 and a rest
    x, packed, scales, zeros = operands(m, 19, k, group, seed=m * 100 + group)
    check(monkeypatch, isa, x, packed, scales, zeros, group)
    check(monkeypatch, isa, x, packed, scales, np.full_like(zeros, 8), group)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 2])
def test_group_larger_than_the_tile(monkeypatch, isa, m):
    # a group over the tiled path's limit falls back to the register path, same bits
    check(monkeypatch, isa, *operands(m, 5, 4100, 2048, seed=m), 2048)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("what", ["huge", "tiny", "subnormal", "inf", "nan", "signed_zero"])
def test_extreme_values_propagate_as_the_reference(monkeypatch, isa, m, what):
    x, packed, scales, zeros = operands(m, 9, 97, 32, seed=len(what))
    tiny = np.float32(np.finfo(np.float32).tiny)
    if what == "huge":                       # products and sums overflow to +-inf
        with np.errstate(over="ignore"):
            x *= np.float32(1e36)
        scales[:, 1] = np.float32(3e38)
    elif what == "tiny":
        x *= tiny
        scales[:] = np.float32(1e-30)
    elif what == "subnormal":                # subnormal activations and results
        x[:, ::2] = tiny / np.float32(8)
        x[:, 1::2] = -tiny / np.float32(1024)
    elif what == "inf":
        x[0, 3], x[-1, 40] = np.inf, -np.inf   # inf * 0 (u = z) makes NaN
        scales[2, 0] = np.inf
    elif what == "nan":
        x[0, 17] = np.nan
        scales[4, 2] = np.nan
    else:                                    # -0 products and a -0 start of every lane
        x[:] = -0.0
        x[:, 50] = 1.0
    want = check(monkeypatch, isa, x, packed, scales, zeros, 32)
    if what in ("inf", "nan"):
        assert np.isnan(want).any()
    if what == "huge":
        assert not np.isfinite(want).all()


@pytest.mark.parametrize("isa", ISAS)
def test_threads_and_chunks_agree(monkeypatch, isa):
    # large enough to be split over threads; n is not a multiple of the rows per task
    x, packed, scales, zeros = operands(3, 301, 1024, 64, seed=5)
    old = CPU.mod.get_num_threads()
    try:
        for t in (1, 2):
            CPU.mod.set_num_threads(t)
            check(monkeypatch, isa, x, packed, scales, zeros, 64)
    finally:
        CPU.mod.set_num_threads(old)
