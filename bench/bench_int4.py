"""Weight-only int4 matrix-vector benchmark: the backend's ``int4_gemm`` against float32.

Batch-1 generation multiplies one activation vector by every weight matrix: the product is
memory-bound, so reading 4-bit codes (plus one scale and zero point per group) instead of
float32 should win by close to the ratio of bytes. Cases are N x K weights times a [M, K]
activation, M = 1 (and M = 32 for the batched case); contenders, on prepared operands:

* ``int4_g{32,64,128}``  ``int4_gemm`` on symmetric group-wise codes (AVX-512, AVX2 or scalar
                         path, as the backend picks at run time; NEEDLE_ISA=avx2 or scalar
                         caps it);
* ``numpy_f32``          ``W @ x`` with W float32 [N, K] (OpenBLAS sgemv/sgemm);
* ``needle_f32``         the backend's float32 ``matmul`` (x [M, K] @ W^T [K, N]).

Each thread count runs in its own subprocess (bench/common.py fixes every thread pool),
contenders interleaved, medians reported; the record names the CPU model and flags. On one
thread the CPU time of each call (``time.thread_time``) is recorded too: on a shared machine
wall time mostly measures how much of a core the process got, and a compute-bound kernel
loses more of it than a memory-bound one.

    /work/venv/bin/python bench/bench_int4.py [--threads 1 2] [--size 4096] [--repeats 21]

Writes bench/results/int4.json and prints a markdown table.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402

DEFAULT_OUT = common.RESULTS_DIR / "int4.json"
GROUPS = (32, 64, 128)


def measure(threads, size, batches, repeats):
    """{case: {contender: timing}} for this process's thread settings."""
    from needle import backend_ndarray as nd
    from needle.quant import reference as R
    from needle.quant.int4 import Int4Weight

    dev = nd.cpu()
    common.set_needle_threads(threads)
    rng = np.random.default_rng(0)
    n = k = size
    w = rng.standard_normal((n, k)).astype(np.float32)
    wt_nd = nd.NDArray(np.ascontiguousarray(w.T), device=dev)
    weights = {g: Int4Weight.from_float(w, g, "symmetric", device=dev) for g in GROUPS}
    out = {}
    for m in batches:
        x = rng.standard_normal((m, k)).astype(np.float32)
        xt = np.ascontiguousarray(x.T)
        x_nd = nd.NDArray(x, device=dev)
        y_nd = nd.NDArray.make((m, n), device=dev, dtype="float32")
        fns = {"numpy_f32": lambda: w @ xt, "needle_f32": lambda: x_nd @ wt_nd}
        for g, w4 in weights.items():
            codes, scales, zeros = w4._device_arrays()
            fns[f"int4_g{g}"] = (lambda c=codes, s=scales, z=zeros, g=g: dev.int4_gemm(
                x_nd._handle, c._handle, s._handle, z._handle, y_nd._handle, m, n, k, g,
                zeros_checked=True))
        timing = common.time_interleaved(fns, repeats=repeats, warmup=3, min_time=0.2)
        if threads == 1:
            # CPU seconds of this thread: what a busy machine's time slicing does not inflate
            for name, fn in fns.items():
                cpu = []
                for _ in range(max(3, repeats // 2)):
                    t0 = time.thread_time()
                    fn()
                    cpu.append(time.thread_time() - t0)
                timing[name]["cpu_median_s"] = float(np.median(cpu))
        # correctness after timing: the kernel's bits against the reference
        exact = {}
        for g, w4 in weights.items():
            got = w4.matmul(x)
            ref = R.int4_gemm_reference(x, w4.codes, w4.scales, w4.zeros, g, k)
            exact[f"int4_g{g}"] = bool(np.array_equal(got, ref))
        out[f"{n}x{k} m={m}"] = {"timing": timing, "bit_exact": exact,
                                 "int4_bytes": {f"int4_g{g}": w4.nbytes
                                                for g, w4 in weights.items()},
                                 "f32_bytes": w.nbytes}
    return {"cases": out, "int4_isa": dev.mod._int4_gemm_isa(), "blas": common.blas_info()}


def run(threads=(1, 2), size=4096, batches=(1, 32), repeats=21):
    results = {}
    for t in threads:
        results[str(t)] = common.run_worker(
            Path(__file__), ["--worker", t, "--size", size, "--repeats", repeats,
                             "--batches", *batches], t)
    return {"benchmark": "int4_gemv", "machine": common.machine_info(), "threads": results}


def format_table(data):
    lines = ["| case | threads | numpy f32 ms | needle f32 ms | int4 g32 ms | int4 g64 ms | "
             "int4 g128 ms | speedup g64 vs numpy | vs needle | CPU-time speedup vs numpy "
             "g32 / g64 / g128 | bit-exact |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, res in data["threads"].items():
        for case, row in res["cases"].items():
            ms = {c: v["median_s"] * 1e3 for c, v in row["timing"].items()}
            cpu = {c: v.get("cpu_median_s") for c, v in row["timing"].items()}
            cpu_ratio = " / ".join(
                f"{cpu['numpy_f32'] / cpu[f'int4_g{g}']:.2f}x" if cpu[f"int4_g{g}"] else "-"
                for g in GROUPS)
            lines.append(
                f"| {case} | {t} | {ms['numpy_f32']:.3f} | {ms['needle_f32']:.3f} | "
                f"{ms['int4_g32']:.3f} | {ms['int4_g64']:.3f} | {ms['int4_g128']:.3f} | "
                f"{ms['numpy_f32'] / ms['int4_g64']:.2f}x | "
                f"{ms['needle_f32'] / ms['int4_g64']:.2f}x | {cpu_ratio} | "
                f"{all(row['bit_exact'].values())} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", type=int)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.worker is not None:
        import json
        print(json.dumps(measure(args.worker, args.size, args.batches, args.repeats)))
        return
    data = run(args.threads, args.size, args.batches, args.repeats)
    common.write_json(args.out, data)
    m = data["machine"]
    print(f"CPU: {m.get('cpu_model', m)}")
    print(f"int4 path: {next(iter(data['threads'].values()))['int4_isa']}")
    print(format_table(data))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
