"""The C++ float32 GEMM (src/cpu/gemm_f32.cc) through NDArray matmul on cpu().

Every instruction-set path is exercised on one machine by capping it with NEEDLE_ISA, which
the kernel reads on each call (paths the CPU lacks fall back to the next lower one, so each
case still checks *a* correct path). References are numpy float64 products; the tolerance is
the float32 worst-case dot-product error bound, so any indexing or packing mistake (an O(1)
error) fails while rounding differences do not.
"""
import numpy as np
import pytest

from needle import backend_ndarray as nd

CPU = nd.cpu()
pytestmark = pytest.mark.skipif(not CPU.enabled(), reason="C++ backend not built (run `make build`)")

ISAS = ["scalar", "avx2", "avx512", "vnni"]

# (M, K, N): [M, K] @ [K, N]. Sizes straddle the register tiles (4x8, 6x16, 12x32), the
# cache blocks (kc = 256, mc = 120/192) and the threading threshold.
SHAPES = [
    (1, 1, 1), (1, 7, 1), (1, 300, 33), (33, 300, 1), (5, 1, 9),
    (2, 3, 4), (6, 16, 16), (12, 32, 32), (13, 17, 33), (11, 257, 31),
    (25, 513, 65), (97, 64, 130), (193, 260, 47), (130, 129, 400),
]


def _check(got, a, b):
    """|got - a @ b| <= 2 K u (|a| @ |b|) elementwise, u = float32 unit roundoff."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    bound = 2 * max(a.shape[1], 1) * 2.0 ** -24 * (np.abs(a64) @ np.abs(b64)) + 1e-30
    assert got.shape == ref.shape and got.dtype == np.float32
    bad = np.abs(got.astype(np.float64) - ref) > bound
    assert not bad.any(), (f"{bad.sum()} of {bad.size} entries wrong, first at "
                           f"{np.argwhere(bad)[0]}: {got[bad][0]} vs {ref[bad][0]}")


def _matmul(a, b):
    return (nd.NDArray(a, device=CPU) @ nd.NDArray(b, device=CPU)).numpy()


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("NEEDLE_ISA", request.param)
    return request.param


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matmul_matches_float64(isa, m, k, n):
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    _check(_matmul(a, b), a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_large_threaded(isa, threads):
    # Big enough to be split across threads (rows), with ragged edges in every dimension.
    before = CPU.get_num_threads()
    CPU.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        a = rng.standard_normal((301, 515)).astype(np.float32)
        b = rng.standard_normal((515, 263)).astype(np.float32)
        _check(_matmul(a, b), a, b)
        # Few rows, many columns: threads split the columns instead.
        a = rng.standard_normal((7, 600)).astype(np.float32)
        b = rng.standard_normal((600, 1100)).astype(np.float32)
        _check(_matmul(a, b), a, b)
    finally:
        CPU.set_num_threads(before)


# [M <= 16, K] @ [K, N] takes the few-rows path (no packing: B streamed once per group of 4
# rows, the columns in chunks shared by the threads): ragged row groups, chunk edges (4096 / M
# columns for M <= 4, 256 above), K not a multiple of the 4 rows of B taken at once; 17 rows
# is the blocked kernel again.
FEW_ROWS = [(1, 4, 4097), (1, 4099, 3), (2, 9, 2049), (3, 1, 1500), (4, 130, 1025),
            (5, 31, 257), (8, 6, 513), (13, 77, 300), (16, 300, 1000), (3, 700, 3000),
            (17, 33, 65)]


@pytest.mark.parametrize("m,k,n", FEW_ROWS)
def test_few_rows(isa, m, k, n):
    rng = np.random.default_rng(m * 7 + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    before = CPU.get_num_threads()
    try:
        got = {}
        for threads in (1, 2):
            CPU.set_num_threads(threads)
            got[threads] = _matmul(a, b)
            _check(got[threads], a, b)
    finally:
        CPU.set_num_threads(before)
    if m <= 16:
        # each output sums k = 0 .. K-1 in order, however the columns are shared out
        np.testing.assert_array_equal(got[1], got[2])


@pytest.mark.parametrize("m,k,n", [(20, 8300, 300), (5, 33000, 40)])
def test_deep_products(isa, m, k, n):
    # K large enough that the packed-B budget narrows the column panel (several panels) and,
    # for the deepest, packs B in several depth blocks; many kc slices accumulate into C.
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    _check(_matmul(a, b), a, b)


def test_exact_small_integers(isa):
    # Small integers multiply and add exactly in float32: the result must be bit-exact.
    rng = np.random.default_rng(3)
    a = rng.integers(-8, 9, (37, 70)).astype(np.float32)
    b = rng.integers(-8, 9, (70, 45)).astype(np.float32)
    np.testing.assert_array_equal(_matmul(a, b), (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float32))


def test_output_is_overwritten_not_accumulated(isa):
    # Two products into fresh buffers (which may reuse freed memory) must not leak into each other.
    a = np.ones((13, 5), np.float32)
    b = np.full((5, 40), 2.0, np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(_matmul(a, b), np.full((13, 40), 10.0, np.float32))


def test_non_compact_operands(isa):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((50, 40)).astype(np.float32)
    a_t = nd.NDArray(a, device=CPU).permute((1, 0))        # [30, 40] view
    b_t = nd.NDArray(b, device=CPU).permute((1, 0))        # [40, 50] view
    _check((a_t @ b_t).numpy(), a.T.copy(), b.T.copy())


def test_nan_and_inf_propagate(isa):
    a = np.ones((14, 3), np.float32)
    b = np.ones((3, 35), np.float32)
    a[2, 1] = np.nan
    b[0, 33] = np.inf
    got = _matmul(a, b)
    assert np.isnan(got[2]).all()
    assert np.isposinf(got[np.arange(14) != 2, 33]).all()
    rest = np.ones((14, 35), bool)
    rest[2] = False
    rest[:, 33] = False
    np.testing.assert_array_equal(got[rest], 3.0)


@pytest.mark.parametrize("m,k,n", [(3, 0, 4), (0, 5, 4), (3, 5, 0), (0, 0, 0)])
def test_empty_dimensions(isa, m, k, n):
    a = np.ones((m, k), np.float32)
    b = np.ones((k, n), np.float32)
    got = _matmul(a, b)
    assert got.shape == (m, n)
    np.testing.assert_array_equal(got, np.zeros((m, n), np.float32))


def test_backend_matmul_k0_overwrites(isa):
    # Called directly, the backend must zero the output for an empty sum (not leave garbage).
    out = nd.NDArray(np.full((3, 4), 7.0, np.float32), device=CPU)
    a = nd.NDArray(np.zeros((3, 0), np.float32), device=CPU)
    b = nd.NDArray(np.zeros((0, 4), np.float32), device=CPU)
    CPU.matmul(a._handle, b._handle, out._handle, 3, 0, 4)
    np.testing.assert_array_equal(out.numpy(), np.zeros((3, 4), np.float32))


def test_bad_isa_name_raises(monkeypatch):
    monkeypatch.setenv("NEEDLE_ISA", "sse9")
    a = nd.NDArray(np.ones((4, 4), np.float32), device=CPU)
    with pytest.raises(ValueError, match="sse9"):
        a @ a


def test_reports_kernel_path(monkeypatch):
    probe = getattr(CPU.mod, "gemm_f32_isa", None)
    if probe is None:
        pytest.skip("backend does not expose gemm_f32_isa")
    monkeypatch.setenv("NEEDLE_ISA", "scalar")
    assert probe() == "scalar"
    monkeypatch.setenv("NEEDLE_ISA", "avx2")
    assert probe() in ("avx2", "scalar")


def test_concurrent_callers():
    # matmul releases the GIL: products from several Python threads at once must not share
    # packing buffers or work queues.
    import threading
    rng = np.random.default_rng(11)
    pairs = [(rng.standard_normal((150 + 7 * i, 90)).astype(np.float32),
              rng.standard_normal((90, 130 - 5 * i)).astype(np.float32)) for i in range(4)]
    results = [None] * len(pairs)

    def work(i):
        a, b = pairs[i]
        for _ in range(5):
            results[i] = _matmul(a, b)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a, b), got in zip(pairs, results):
        _check(got, a, b)
