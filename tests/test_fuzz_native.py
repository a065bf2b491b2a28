"""Seeded fuzzing of the kernels through the public API, each case in a subprocess
(fuzz_harness.py): views, elementwise ops, reductions, matmul, the int8 GEMM and convolution,
needle.quant.kernels and the CUDA host emulation. Goal: no crash, hang, silent wrong result
or memory blow-up; invalid input is refused with ValueError/TypeError.

NEEDLE_FUZZ_SCALE multiplies the number of cases (``make fuzz`` runs 10x).
"""
import os

import pytest

import fuzz_harness as H
from needle.backend_ndarray import cpu

SCALE = float(os.environ.get("NEEDLE_FUZZ_SCALE", "1"))

NATIVE = {"views_python": 250, "views_native": 350, "elementwise": 120, "reductions": 120,
          "matmul": 120, "qgemm": 160, "qconv": 120, "quant_kernels_python": 30}
EMULATION = {"emulate_compact": 250, "emulate_qgemm": 80, "emulate_misc": 120}

pytestmark = pytest.mark.skipif(not cpu().enabled(), reason="the C++ backend is not built")


def _run(families, seed0):
    cases = [(f, seed0 + s) for f, n in families.items() for s in range(max(1, int(n * SCALE)))]
    results = H.run_cases(cases)
    assert len(results) == len(cases)
    counts = H.summary(results)
    bad = H.failures(results)
    assert not bad, f"{counts}; first findings: {list(bad.items())[:5]}"
    assert counts.get("ok", 0) > len(cases) // 5, counts  # the valid paths were exercised
    assert counts.get("clean", 0) > len(cases) // 5, counts  # and so were the hostile ones
    return counts


def test_fuzz_native_kernels():
    print(_run(NATIVE, 0))


def test_fuzz_cuda_emulation():
    pytest.importorskip("needle.backend_ndarray.ndarray_backend_cuda")
    print(_run(EMULATION, 0))
