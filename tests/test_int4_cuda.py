"""The CUDA backend's int4_gemm against ``int4_gemm_reference``, bit for bit.

Its warp phases (src/cuda/int4_gemv.cuh) run on the CPU through
``ndarray_backend_cuda.emulate.int4_gemm`` (built with nvcc, or by the host compiler with
NEEDLE_EMULATION_HOST), so the summation order is checked without a GPU; with a GPU the real
kernel is checked too, through ``Int4Weight`` on ``needle.cuda()``.
"""
import numpy as np
import pytest

import needle as ndl
from needle.quant import reference as R
from needle.quant.int4 import Int4Weight, has_native_int4

from test_int4_kernel import operands


def _emulate():
    try:
        from needle.backend_ndarray import ndarray_backend_cuda as C
    except ImportError:
        return None
    e = getattr(C, "emulate", None)
    return e if hasattr(e, "int4_gemm") else None


EMU = _emulate()
needs_emulation = pytest.mark.skipif(EMU is None, reason="CUDA backend / emulation not built")
needs_gpu = pytest.mark.skipif(not ndl.cuda().enabled(), reason="no CUDA GPU")


def assert_same(got, want):
    """Bit for bit, except that any NaN equals any NaN (a GPU's NaN has its own payload)."""
    assert got.dtype == np.float32 and got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    bad = got.view(np.uint32)[~nan] != want.view(np.uint32)[~nan]
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs differ"


def reference(x, packed, scales, zeros, group):
    with np.errstate(all="ignore"):
        return R.int4_gemm_reference(x, packed, scales, zeros, group, x.shape[1])


@needs_emulation
@pytest.mark.parametrize("group", [8, 16, 24, 32, 64, 128])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 100, 257])
def test_emulated_kernel_every_group_size_and_tail(group, k):
    x, packed, scales, zeros = operands(2, 5, k, group, seed=group * 1000 + k)
    assert_same(EMU.int4_gemm(x, packed, scales, zeros, group),
                reference(x, packed, scales, zeros, group))


@needs_emulation
@pytest.mark.parametrize("m,n", [(1, 1), (1, 7), (3, 4), (4, 9)])
def test_emulated_kernel_rows_and_channels(m, n):
    x, packed, scales, zeros = operands(m, n, 320, 64, seed=m * 10 + n)
    want = reference(x, packed, scales, zeros, 64)
    assert_same(EMU.int4_gemm(x, packed, scales, zeros, 64), want)
    # and it is the product with the dequantized weight, up to float32 rounding
    w = R.dequantize_int4(packed, scales, zeros, 64, 320).astype(np.float64)
    exact = x.astype(np.float64) @ w.T
    assert (np.abs(want - exact) <= 1e-4 * (np.abs(x).astype(np.float64) @ np.abs(w).T)).all()


@needs_emulation
@pytest.mark.parametrize("what", ["inf", "nan", "subnormal", "signed_zero"])
def test_emulated_kernel_extreme_values(what):
    x, packed, scales, zeros = operands(2, 6, 97, 32, seed=len(what))
    tiny = np.float32(np.finfo(np.float32).tiny)
    if what == "inf":
        x[0, 3], x[1, 40], scales[2, 0] = np.inf, -np.inf, np.inf
    elif what == "nan":
        x[0, 17], scales[4, 2] = np.nan, np.nan
    elif what == "subnormal":
        x[:, ::2], x[:, 1::2] = tiny / np.float32(8), -tiny / np.float32(1024)
    else:
        x[:] = -0.0
        x[:, 50] = 1.0
    want = reference(x, packed, scales, zeros, 32)
    assert_same(EMU.int4_gemm(x, packed, scales, zeros, 32), want)
    if what in ("inf", "nan"):
        assert np.isnan(want).any()


@needs_emulation
def test_emulated_kernel_refuses_bad_operands():
    x, packed, scales, zeros = operands(1, 3, 64, 32, seed=1)
    bad_zeros = zeros.copy()
    bad_zeros[1, 1] = 16
    with pytest.raises(ValueError, match="zero point 16"):
        EMU.int4_gemm(x, packed, scales, bad_zeros, 32)
    with pytest.raises(ValueError, match="codes must be"):
        EMU.int4_gemm(x, packed[:, :-1], scales, zeros, 32)
    with pytest.raises(ValueError, match="scales and zeros"):
        EMU.int4_gemm(x, packed, scales[:, :1], zeros, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        EMU.int4_gemm(x, packed, scales, zeros, 12)
    with pytest.raises(TypeError, match="float32"):
        EMU.int4_gemm(x.astype(np.float64), packed, scales, zeros, 32)


@needs_gpu
@pytest.mark.parametrize("m,n,k,group", [(1, 7, 257, 32), (3, 64, 512, 64), (1, 33, 100, 128)])
def test_gpu_kernel_is_bit_exact(m, n, k, group):
    x, packed, scales, zeros = operands(m, n, k, group, seed=k + n)
    dev = ndl.cuda()
    assert has_native_int4(dev)
    weight = Int4Weight(packed, scales, zeros, (n, k), group, "asymmetric", device=dev)
    assert_same(weight.matmul(x), reference(x, packed, scales, zeros, group))


@needs_gpu
def test_gpu_kernel_refuses_a_bad_zero_point():
    from needle import backend_ndarray as nd
    dev = ndl.cuda()
    x, packed, scales, zeros = operands(1, 2, 32, 32, seed=2)
    zeros[0, 0] = 200
    arr = lambda a: nd.NDArray(np.ascontiguousarray(a), device=dev, dtype=a.dtype.name)
    out = nd.NDArray.make((1, 2), device=dev, dtype="float32")
    with pytest.raises(ValueError, match="zero point 200"):
        dev.mod.int4_gemm(arr(x)._handle, arr(packed)._handle, arr(scales)._handle,
                          arr(zeros)._handle, out._handle, 1, 2, 32, 32)
    # an Int4Weight checks its zero points once, before its device copy, and then skips
    # the per-call copy to the host
    weight = Int4Weight(packed, scales, zeros, (2, 32), 32, "asymmetric", device=dev)
    with pytest.raises(ValueError, match="zero point 200"):
        weight.matmul(x)
