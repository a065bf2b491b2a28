"""The AMX-INT8 int8 GEMM path.

Its tile code runs on the hardware where the CPU and kernel allow it (path "amx") and, on any
CPU, on a portable model of the tile instructions (path "amx-emulated"): the same driver,
packing, tile sequence and epilogue, checked bit for bit against the numpy reference on the
shapes that stress the tiles (k not a multiple of 4 or of a 64-byte tile row, k blocks, one
row or channel, partial 16-row and 16-channel tiles) and on saturating values.
"""
import numpy as np
import pytest

from test_qgemm import _CPU, check, make_case

pytestmark = pytest.mark.skipif(not _CPU.enabled(), reason="C++ backend not built")

# (m, n, k): k = 63/65 (tile tail), 512/513/1030 (k blocks of 512 bytes), M, N = 1,
# 16/17/33 rows (one or two row tiles, partial), 17/33/48 channels (partial panel pairs);
# uint8 A with k a multiple of 64 is read in place, 16-row tiles (64 x 16 x 64, 96 x 40 x 576,
# 128 x 17 x 1024: several blocks and work items; 48 x 16 x 128: a block of one tile), and
# packed when a tile would pass the end of A (100 x 33 x 640, 40 x 16 x 128).
TILE_SHAPES = [(1, 1, 1), (1, 16, 64), (16, 1, 63), (17, 17, 65), (33, 33, 127), (32, 48, 128),
               (2, 33, 512), (40, 20, 513), (5, 3, 1030), (97, 34, 200), (64, 16, 64),
               (96, 40, 576), (128, 17, 1024), (100, 33, 640), (48, 16, 128),
               (40, 16, 128)]


def _tile_paths():
    isas = _CPU.mod._qgemm_isas() if _CPU.enabled() else []
    return [isa for isa in ("amx-emulated", "amx") if isa in isas]


@pytest.fixture(params=_tile_paths())
def tile_path(request):
    _CPU.mod._qgemm_isa(request.param)
    yield _CPU
    _CPU.mod._qgemm_isa("auto")


def test_emulated_path_is_always_offered():
    assert "amx-emulated" in _CPU.mod._qgemm_isas()
    assert _CPU.mod._qgemm_isa("amx-emulated") == "amx-emulated"
    _CPU.mod._qgemm_isa("auto")
    # never chosen automatically
    assert _CPU.mod._qgemm_isa("auto") != "amx-emulated"


@pytest.mark.parametrize("shape", TILE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_tile_kernel_matches_reference(tile_path, rng, shape, a_dtype):
    m, n, k = shape
    for out_dtype in ("uint8", "int8", "int32"):
        case = make_case(rng, m, n, k, a_dtype, out_dtype)
        check(tile_path, case, out_dtype == "uint8", out_dtype)


def test_tile_kernel_saturates_like_reference(tile_path):
    """255 * -128 in every product over a long k, with biases at the int32 limits."""
    m, n, k = 18, 33, 4100
    a = np.full((m, k), 255, np.uint8)
    w = np.full((n, k), -128, np.int8)
    w[::2] = 127
    bias = np.zeros(n, np.int32)
    bias[::3] = 2 ** 31 - 1
    bias[1::3] = -(2 ** 31)
    case = dict(a=a, w=w, a_zp=0, colsum=w.astype(np.int64).sum(1).astype(np.int32),
                bias=bias, mult=np.full(n, 2 ** 30, np.int32), shift=np.full(n, -30, np.int32),
                out_zp=0)
    acc = check(tile_path, case, False, "int32")
    assert acc.max() == 2 ** 31 - 1 and acc.min() == -(2 ** 31)
    check(tile_path, case, True, "uint8")


def test_needle_isa_amx_demands_amx(monkeypatch, rng):
    """NEEDLE_ISA=amx (read on every call) runs the AMX path, or fails with the reason."""
    has_amx = "amx" in _CPU.mod._qgemm_isas()
    monkeypatch.setenv("NEEDLE_ISA", "amx")
    case = make_case(rng, 8, 8, 8, "uint8", "uint8")
    if has_amx:
        assert _CPU.mod._qgemm_isa("auto") == "amx"
        check(_CPU, case, False, "uint8")
    else:
        with pytest.raises(RuntimeError, match="NEEDLE_ISA=amx, but the AMX int8 path is not"):
            _CPU.mod._qgemm_isa("auto")
        with pytest.raises(RuntimeError, match="Unset NEEDLE_ISA"):
            check(_CPU, case, False, "uint8")
        with pytest.raises(ValueError, match="'amx' is not available here"):
            _CPU.mod._qgemm_isa("amx")
    monkeypatch.setenv("NEEDLE_ISA", "vnni")
    assert "amx" not in _CPU.mod._qgemm_isas()
    assert _CPU.mod._qgemm_isa("auto") != "amx"
    check(_CPU, case, False, "uint8")


def test_short_narrow_products_leave_amx_for_vnni(monkeypatch):
    """An automatically chosen AMX path gives k < 256 (or k < 512 with n < 48) to VNNI; a
    forced path or NEEDLE_ISA=amx always runs as asked; without AMX nothing changes."""
    mod = _CPU.mod
    monkeypatch.delenv("NEEDLE_ISA", raising=False)
    auto = mod._qgemm_isa("auto")
    if auto != "amx":
        assert {mod._qgemm_isa_for(n, k) for n, k in [(8, 9), (1024, 1024)]} == {auto}
        return
    assert mod._qgemm_isa_for(8, 9) == "vnni"
    assert mod._qgemm_isa_for(32, 288) == "vnni"
    assert mod._qgemm_isa_for(47, 511) == "vnni"
    assert mod._qgemm_isa_for(48, 256) == "amx"
    assert mod._qgemm_isa_for(16, 512) == "amx"
    assert mod._qgemm_isa_for(1024, 1024) == "amx"
    try:
        mod._qgemm_isa("amx")
        assert mod._qgemm_isa_for(8, 9) == "amx"
    finally:
        mod._qgemm_isa("auto")
    monkeypatch.setenv("NEEDLE_ISA", "amx")
    assert mod._qgemm_isa_for(8, 9) == "amx"
