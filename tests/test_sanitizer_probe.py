"""Under ``make sanitize`` only: the run really is instrumented and a memory error really fails it.

Skipped in ordinary runs. Checks that the modules in use carry ASan and UBSan checks, and that
an out-of-bounds read in a subprocess (like the fuzz suite's workers) ends that process with
SIGABRT and leaves a report, the two things tests/sanitize_runner.py and tests/fuzz_harness.py
rely on to count it.
"""
import os
import signal
import subprocess
import sys

import pytest

import needle.backend_ndarray as nd

UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
pytestmark = pytest.mark.skipif(not UNDER_ASAN, reason="only under make sanitize")


@pytest.mark.parametrize("name", ["cpu", "cuda_host"])
def test_modules_in_use_are_instrumented(name):
    if name == "cpu":
        path = nd.cpu().mod.__file__
    else:
        from needle.backend_ndarray import ndarray_backend_cuda as C
        if not hasattr(C, "emulate"):
            pytest.skip("no CUDA host emulation in this build")
        path = C.__file__
    assert os.path.dirname(path) == os.environ["NEEDLE_BACKEND_DIR"], path
    data = open(path, "rb").read()
    assert b"__asan_report_load" in data and b"__ubsan_handle_" in data, \
        f"{path} was built without -fsanitize=address,undefined"


def test_out_of_bounds_read_aborts_with_a_report(tmp_path):
    """ASan's memcpy check on a heap block read 8 bytes too far (from Python, through ctypes)."""
    opts = dict(kv.split("=", 1) for kv in os.environ.get("ASAN_OPTIONS", "").split(":") if kv)
    opts["log_path"] = str(tmp_path / "probe")  # keep this deliberate report out of the run's
    env = dict(os.environ, ASAN_OPTIONS=":".join(f"{k}={v}" for k, v in opts.items()))
    code = ("import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p;"
            "p = libc.malloc(16); ctypes.string_at(p, 24); print('not caught')")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    reports = [f.read_text() for f in tmp_path.iterdir()]
    assert p.returncode == -signal.SIGABRT, (p.returncode, p.stdout, p.stderr[-500:])
    assert "not caught" not in p.stdout
    assert len(reports) == 1 and "heap-buffer-overflow" in reports[0], reports
