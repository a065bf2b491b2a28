"""Helpers shared by the benchmarks: fair timing, thread control, machine facts, JSON output.

Benchmarks never pass or fail; they measure. Two rules keep the numbers honest on a small,
shared machine:

* contenders are timed *interleaved* (A, B, A, B, ...) and summarised by the median, so a
  burst of background load hits both sides alike;
* each thread count runs in a fresh subprocess whose environment fixes every thread pool
  (OpenMP, OpenBLAS, MKL) before any library starts, see :func:`bench_env`.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Variables some environments set that make OpenBLAS pick slower kernels than the CPU allows;
# the benchmark runs without them so numpy is compared at its best.
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def bench_env(threads):
    """A copy of os.environ for a benchmark subprocess using ``threads`` threads everywhere."""
    env = dict(os.environ)
    for var in BLAS_OVERRIDES:
        env.pop(var, None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(int(threads))
    # OpenBLAS's idle threads otherwise spin for a long while after each call: in interleaved
    # timing they hold the cores while the next contender runs (measured: needle's 2-thread
    # int4 GEMV ran at its 1-thread speed right after numpy's sgemv). 2^4 cycles, then sleep.
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(script, args, threads, timeout=900):
    """Run ``python script *args`` with :func:`bench_env` (threads) and parse the JSON it
    prints as its last stdout line. Raises RuntimeError with the worker's stderr on failure."""
    cmd = [sys.executable, str(script), *map(str, args)]
    proc = subprocess.run(cmd, env=bench_env(threads), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {cmd} failed ({proc.returncode}):\n{proc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"benchmark worker {cmd} printed nothing:\n{proc.stderr}")
    return json.loads(lines[-1])


def set_needle_threads(n):
    """Ask the C++ backend for ``n`` OpenMP threads when it offers a way; returns whether it
    did (OMP_NUM_THREADS from :func:`bench_env` applies either way)."""
    from needle import backend_ndarray as nd
    mod = nd.cpu()
    if not mod.enabled():
        return False
    for name in ("set_num_threads",):
        try:
            fn = getattr(mod, name)
        except AttributeError:
            continue
        fn(int(n))
        return True
    return False


def time_interleaved(fns, repeats=11, warmup=2, min_time=0.0):
    """Median seconds per call of each zero-argument callable in ``fns`` (name -> fn).

    Every round calls each function once, in an order that alternates between rounds, after
    ``warmup`` untimed rounds. Rounds continue past ``repeats`` until ``min_time`` seconds
    of timed calls have accumulated for the slowest function (for very fast calls).
    Returns {name: {"median_s", "min_s", "repeats"}}.

    Only interleave functions that share one thread pool (or run single-threaded): with two
    multi-threaded libraries in one process (OpenBLAS and OpenMP, say), each one's idle workers
    keep spinning after its call and starve the other's on a small machine (measured: 0.3 ms
    GEMMs taking 20-30 ms on 2 cores). Time such contenders in separate processes instead.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    rnd = 0
    while rnd < repeats or min(sum(t) for t in times.values()) < min_time:
        order = names if rnd % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
        rnd += 1
        if rnd >= 50 * max(repeats, 1):
            break
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "repeats": len(t)}
            for n, t in times.items()}


def blas_info():
    """What numpy's BLAS is and which kernel it picked (threadpoolctl when installed)."""
    import numpy as np
    info = {"numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture",
                                                      "num_threads", "threading_layer")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def machine_info():
    """CPU model and vector flags, core count, platform, Python version and the load average
    when the benchmark ran (other work on the machine skews multi-thread numbers most)."""
    model = platform.processor() or ""
    flags, named = [], False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not named:
                    model, named = line.split(":", 1)[1].strip(), True
                if line.startswith("flags"):
                    # the vector / matrix extensions the kernels choose between
                    flags = sorted(f for f in line.split(":", 1)[1].split()
                                   if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
                    break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_1_5_15min": load}


def write_json(path, data):
    """Write ``data`` as indented JSON atomically (temporary file + rename)."""
    from needle._atomic import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return path
