"""A process forked after the native kernels ran (multiprocessing's "fork" start method, a
DataLoader worker, a grader) can still run them: the child gets a working thread pool of its
own instead of deadlocking on, or silently going without, the parent's helper threads.

Each scenario runs in a subprocess with a timeout, so a hang is a failure, not a stuck suite.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import needle.backend_ndarray as nd

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(not nd.cpu().enabled(), reason="C++ backend not built"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

# Shared by every scenario: an int8 GEMM large enough to be split over two threads, checked
# against the reference, and the float32 GEMM (OpenMP and the same pool), checked against numpy.
_KERNELS = """
import os, sys, threading, numpy as np
import needle.backend_ndarray as nd
from needle.backend_ndarray import NDArray
from needle.quant import kernels as K
from needle.quant import reference as R
dev = nd.cpu()
dev.mod.set_num_threads(2)
rng = np.random.default_rng(0)
A = rng.integers(0, 256, (256, 512), dtype=np.uint8)
W = rng.integers(-127, 128, (192, 512), dtype=np.int8)
packed = K.PackedWeights(NDArray(W, device=dev, dtype="int8"))
X = rng.standard_normal((200, 300)).astype(np.float32)
Y = rng.standard_normal((300, 150)).astype(np.float32)
bias = np.zeros(192, np.int32)
want_q = R.qgemm_reference(A, W, 3, bias, np.zeros(192, np.int32), np.zeros(192, np.int32), 0,
                           False, "int32", colsum=packed.colsum)
want_f = X.astype(np.float64) @ Y.astype(np.float64)

def run_kernels():
    got = K.qgemm(NDArray(A, device=dev, dtype="uint8"), packed, 3, bias, None, None, 0,
                  False, "int32").numpy()
    assert np.array_equal(got, want_q), "int8 GEMM differs from the reference"
    f = (NDArray(X, device=dev) @ NDArray(Y, device=dev)).numpy()
    assert np.allclose(f, want_f, rtol=1e-4, atol=1e-3), "float32 GEMM differs from numpy"

def threads_now():
    return len(os.listdir("/proc/self/task"))

def in_child(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
            code = 0
        except BaseException as e:
            print("child:", type(e).__name__, e, flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
"""


def _run(script, timeout=120):
    code = textwrap.dedent(_KERNELS) + textwrap.dedent(script) + "\nprint('PASSED')\n"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="2")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung for {timeout} s (a forked child waiting on its parent's pool?): "
                    f"{(e.stdout or b'')[-500:]!r}")
    assert p.returncode == 0 and "PASSED" in p.stdout, (p.returncode, p.stdout[-800:],
                                                         p.stderr[-1500:])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc/self/task")
def test_child_rebuilds_the_pool_and_gets_exact_results():
    """After the parent used its helper threads, a forked child computes the same results and
    starts a helper of its own (the inherited pool names threads that do not exist)."""
    _run("""
        run_kernels()
        def child():
            before = threads_now()
            assert before == 1, f"a fresh child has {before} threads"
            for _ in range(3):
                run_kernels()
            assert threads_now() > before, "the child ran without any helper thread"
        in_child(child)
        run_kernels()  # the parent's pool still works after the fork
        in_child(child)
    """)


def test_fork_while_other_threads_run_kernels():
    """Forking while another thread is inside the pool (its lock held, helpers busy) never
    leaves the child waiting forever: the fork waits until the pool is idle."""
    _run("""
        run_kernels()
        stop = threading.Event()
        def hammer():
            while not stop.is_set():
                run_kernels()
        t = threading.Thread(target=hammer)
        t.start()
        try:
            for _ in range(4):
                in_child(run_kernels)
        finally:
            stop.set()
            t.join()
    """, timeout=240)
