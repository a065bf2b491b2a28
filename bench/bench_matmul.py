"""Float32 matmul benchmark: needle's C++ backend (cpu()) against numpy on the same threads.

Cases (GEMM sizes are M x N x K, i.e. [M, K] @ [K, N]):

* ``matmul 1024^3``        a square product;
* ``matmul 8192x128x1152`` tall and skinny, the shape of a 3x3 convolution from 128 channels
  over a batch of 8 at 32x32 written as im2col + GEMM;
* ``matvec 1x4096x4096`` / ``matmul 8x4096x4096`` one and eight rows through a 4096 x 4096
  weight, batch-1 and small-batch inference (memory-bound: the few-rows path, no packing);
* ``conv3x3 64->128``      a ResNet9 layer, NHWC input [8, 32, 32, 64], 3x3 kernel, padding 1,
  timed end to end as pad + im2col (strided view + compact) + GEMM [8192, 576] @ [576, 128].
  GFLOP/s counts the GEMM's 2*M*N*K only.

Every measurement runs in a subprocess with OMP/OpenBLAS/MKL thread variables set to the
thread count and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (see bench/common.py). needle
and numpy run in separate subprocesses, alternated over a few rounds, and the median over all
timed calls is reported (see ``run``). The machine's load average is recorded with the
results: other work on the machine distorts the 2-thread numbers most.

    .venv/bin/python bench/bench_matmul.py [--threads 1 2] [--repeats 15] [--rounds 3]
                                           [--quick] [--out PATH]

From Python: ``run(threads=(1, 2)) -> dict`` (what gets written to bench/results/matmul.json).
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402  (bench/common.py)

DEFAULT_OUT = common.RESULTS_DIR / "matmul.json"

# (name, M, N, K)
GEMM_CASES = [
    ("matmul 1024^3", 1024, 1024, 1024),
    ("matmul 8192x128x1152", 8192, 128, 1152),
    ("matvec 1x4096x4096", 1, 4096, 4096),
    ("matmul 8x4096x4096", 8, 4096, 4096),
]
# (name, batch, height, width, c_in, c_out, kernel)
CONV_CASES = [
    ("conv3x3 64->128 (im2col+GEMM)", 8, 32, 32, 64, 128, 3),
]


# ---- the computations ---------------------------------------------------------------------------
def im2col_numpy(x, k):
    """NHWC x [B, H, W, C] -> patches [B*H*W, k*k*C] for a k x k 'same' convolution."""
    b, h, w, c = x.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(b, h, w, k, k, c), strides=(s[0], s[1], s[2], s[1], s[2], s[3]))
    return np.ascontiguousarray(view).reshape(b * h * w, k * k * c)


def im2col_needle(x, k):
    """The same with NDArray views: pad, as_strided, compact, reshape."""
    b, h, w, c = x.shape
    p = k // 2
    xp = x.pad(((0, 0), (p, p), (p, p), (0, 0)))
    s = xp.strides
    view = xp.as_strided((b, h, w, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return view.compact().reshape((b * h * w, k * k * c))


def _rel_err(got, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ---- one contender at one thread count (runs inside a worker subprocess) ----------------------
def _cases(quick):
    """[(name, M, N, K, conv_params or None)]; ``quick`` shrinks the GEMMs 4x (smoke test)."""
    cases = []
    for name, m, n, k in GEMM_CASES:
        if quick:
            m, k = max(1, m // 4), k // 4
            name = f"{name.split()[0]} {m}x{n}x{k}"
        cases.append((name, m, n, k, None))
    for name, bsz, h, w, cin, cout, ks in CONV_CASES:
        cases.append((name, bsz * h * w, cout, ks * ks * cin, (bsz, h, w, cin, cout, ks)))
    return cases


def _make_inputs(m, n, k, conv, seed):
    rng = np.random.default_rng(seed)
    if conv is None:
        return (rng.standard_normal((m, k), dtype=np.float32),
                rng.standard_normal((k, n), dtype=np.float32))
    bsz, h, w, cin, cout, ks = conv
    x = rng.standard_normal((bsz, h, w, cin), dtype=np.float32)
    wt = rng.standard_normal((ks * ks * cin, cout), dtype=np.float32) * np.float32(0.05)
    return x, wt


def measure(threads, contender, repeats=15, quick=False, warmup=2):
    """Time every case for one contender ("needle" or "numpy") with this process's thread
    settings. Returns {case: {"times_s": [...], "rel_err": float|None}}; rel_err (needle
    only) is max|needle - float64 reference| / max|reference|, computed after the timing."""
    import time
    from needle import backend_ndarray as nd

    dev = nd.cpu()
    if contender == "needle":
        if not dev.enabled():
            return {}
        common.set_needle_threads(threads)
    out, checks = {}, []
    for i, (name, m, n, k, conv) in enumerate(_cases(quick)):
        a, b = _make_inputs(m, n, k, conv, seed=i)
        if contender == "numpy":
            fn = (lambda: a @ b) if conv is None else (lambda: im2col_numpy(a, conv[5]) @ b)
        else:
            a_nd, b_nd = nd.NDArray(a, device=dev), nd.NDArray(b, device=dev)
            fn = (lambda: a_nd @ b_nd) if conv is None else \
                (lambda: im2col_needle(a_nd, conv[5]) @ b_nd)
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = {"times_s": times, "rel_err": None}
        if contender == "needle":
            checks.append((name, fn().numpy(), a, b, conv))
    # Accuracy last: numpy's float64 product wakes OpenBLAS's threads, which would compete
    # with needle's OpenMP threads in the timed calls that follow.
    for name, got, a, b, conv in checks:
        a64 = a.astype(np.float64) if conv is None else im2col_numpy(a, conv[5]).astype(np.float64)
        out[name]["rel_err"] = _rel_err(got, a64 @ b)
    return out


def _gemm_isa(mod):
    """The float32 GEMM path: asked from the backend when it exposes gemm_f32_isa(), else
    inferred from the CPU flags and NEEDLE_ISA the way src/cpu/cpu_features.cc decides."""
    import os
    try:
        return mod.gemm_f32_isa()
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return None
    cap = (os.environ.get("NEEDLE_ISA") or "vnni").lower()
    levels = ["scalar", "avx2", "avx512", "vnni"]
    cap = levels.index(cap) if cap in levels else 3
    if cap >= 2 and "avx512f" in flags:
        return "avx512 (inferred)"
    if cap >= 1 and "avx2" in flags and "fma" in flags:
        return "avx2 (inferred)"
    return "scalar (inferred)"


def _worker_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--contender", choices=("needle", "numpy"), required=True)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    import json
    from needle import backend_ndarray as nd
    res = measure(args.worker, args.contender, args.repeats, args.quick)
    mod = nd.cpu()
    isa = _gemm_isa(mod) if mod.enabled() else None
    print(json.dumps({"cases": res, "blas": common.blas_info(), "needle_gemm_isa": isa,
                      "needle_cpu_built": mod.enabled()}))


# ---- entry points ---------------------------------------------------------------------------
def run(threads=(1, 2), repeats=15, rounds=3, quick=False):
    """Benchmark every case at each thread count and return the results dict (what gets
    written to bench/results/matmul.json):

    {"benchmark", "machine", "blas", "needle_cpu_built", "needle_gemm_isa", "method",
     "results": [{"case", "M", "N", "K", "threads", "needle_ms", "needle_gflops", "numpy_ms",
                  "numpy_gflops", "needle_over_numpy", "needle_rel_err", "repeats"}, ...]}

    needle and numpy run in separate subprocesses, alternated ``rounds`` times per thread count
    (needle, numpy, numpy, needle, ...), each doing ``repeats / rounds`` timed calls per case;
    the median over all calls is reported. Separate processes keep OpenBLAS's and OpenMP's idle
    worker threads from competing for the same cores, which on a 2-core machine slows the
    other library's next call by orders of magnitude.
    """
    per_round = max(1, -(-repeats // rounds))
    cases = _cases(quick)
    load_before = common.machine_info()["loadavg_1_5_15min"]
    results, blas, isa, built = [], {}, None, None
    for t in threads:
        times = {c[0]: {"needle": [], "numpy": []} for c in cases}
        errs = {}
        for r in range(rounds):
            order = ("needle", "numpy") if r % 2 == 0 else ("numpy", "needle")
            for who in order:
                args = ["--worker", t, "--contender", who, "--repeats", per_round]
                out = common.run_worker(Path(__file__), args + (["--quick"] if quick else []),
                                        threads=t)
                for name, res in out["cases"].items():
                    times[name][who].extend(res["times_s"])
                    if res["rel_err"] is not None:
                        errs[name] = max(errs.get(name, 0.0), res["rel_err"])
                if who == "numpy":
                    blas[str(t)] = out["blas"]
                isa, built = out["needle_gemm_isa"], out["needle_cpu_built"]
        for name, m, n, k, _ in cases:
            timing = {who: {"median_s": statistics.median(ts), "repeats": len(ts)}
                      for who, ts in times[name].items() if ts}
            results.append(_row(name, m, n, k, t, timing, errs.get(name)))
    machine = common.machine_info()
    machine["loadavg_before"] = load_before
    return {
        "benchmark": "matmul_f32",
        "machine": machine,
        "blas": blas,
        "needle_cpu_built": built,
        "needle_gemm_isa": isa,
        "method": (f"median of {rounds * per_round} calls per contender, {rounds} alternating "
                   f"subprocess rounds; env without {', '.join(common.BLAS_OVERRIDES)}; "
                   "OMP/OPENBLAS/MKL_NUM_THREADS = threads"),
        "results": results,
    }


def _row(name, m, n, k, threads, timing, err):
    flops = 2.0 * m * n * k
    row = {"case": name, "M": m, "N": n, "K": k, "threads": threads}
    for who in ("needle", "numpy"):
        t = timing.get(who)
        row[f"{who}_ms"] = None if t is None else round(t["median_s"] * 1e3, 3)
        row[f"{who}_gflops"] = None if t is None else round(flops / t["median_s"] / 1e9, 1)
    row["needle_over_numpy"] = (round(row["needle_gflops"] / row["numpy_gflops"], 3)
                                if row["needle_gflops"] and row["numpy_gflops"] else None)
    row["needle_rel_err"] = err
    row["repeats"] = {who: t["repeats"] for who, t in timing.items()}
    return row


def format_table(data):
    """A markdown table of the results."""
    lines = ["| case | threads | needle GFLOP/s | numpy GFLOP/s | needle/numpy |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in data["results"]:
        fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
        lines.append(f"| {r['case']} | {r['threads']} | {fmt(r['needle_gflops'])} | "
                     f"{fmt(r['numpy_gflops'])} | {fmt(r['needle_over_numpy'])} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return _worker_main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller GEMMs (smoke test)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    data = run(tuple(args.threads), args.repeats, args.rounds, args.quick)
    common.write_json(args.out, data)
    print(format_table(data))
    arch = {t: [pl.get("architecture") for pl in b.get("threadpools", [])
                if isinstance(pl, dict) and pl.get("internal_api") == "openblas"]
            for t, b in data["blas"].items()}
    print(f"numpy BLAS kernels by thread count: {arch}; needle gemm: {data['needle_gemm_isa']}")
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
