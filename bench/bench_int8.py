"""Int8 GEMM benchmark: needle's qgemm against needle/numpy/torch float32 and torch's int8.

Cases (GEMMs are M x N x K: activations [M, K], weights [N, K], output [M, N]):

* square and tall GEMMs: 256^3, 1024^3, 4096x128x1152, 8192x128x1152;
* every distinct convolution of MnistCNN and ResNet9 (needle/nn/zoo.py) at batch 128, as the
  GEMM of its NHWC im2col: M = 128 * H_out * W_out, N = C_out, K = k * k * C_in.

Contenders, all on prepared operands so only the GEMM is timed:

* ``needle_int8``   backend ``qgemm``: uint8 activations, prepacked int8 weights, fused
                    per-channel requantization to uint8 (the layer as the quantizer runs it);
* ``needle_int8_fused_conv``  (conv rows) backend ``qconv2d_nhwc`` on the NHWC image: the
                    same layer with im2col done inside the kernel, so it is timed *with* im2col;
* ``needle_f32``    backend ``matmul`` (float32 Arrays);
* ``numpy_f32``     ``np.matmul`` into a preallocated output;
* ``torch_f32``     ``torch.mm`` (when torch is installed);
* ``torch_int8_<engine>``  ``torch.ao.nn.quantized.Linear`` (quint8 in/out, per-channel
                    qint8 weights) on each int8 engine torch offers here: onednn (AMX where the
                    CPU has it), x86, fbgemm;
* ``torch_int_mm``  ``torch._int_mm`` (int8 x int8 -> int32, no requantization: less work
                    than the others).

The bar is the fastest torch int8 contender of each row ("best torch int8", engine named).

GOP/s counts 2*M*N*K. Each library runs in its own subprocesses (bench/common.py fixes
OpenMP/BLAS/torch threads), alternated over rounds; see :func:`run`. The machine peak is *measured* with register-only loops compiled into the backend
(``_qgemm_peak_gops`` for vpdpbusd, ``_f32_peak_gflops`` for FMA) on one thread and scaled
by the thread count.

    .venv/bin/python bench/bench_int8.py [--threads 1 2] [--repeats 9] [--quick] [--out PATH]

From Python: ``run(threads=(1, 2), repeats=9, quick=False) -> dict``.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402  (bench/common.py)

DEFAULT_OUT = common.RESULTS_DIR / "int8.json"
# torch's int8 engines (those torch.backends.quantized.supported_engines lists) and its raw
# int8 x int8 -> int32 matmul; the best of them per shape is the bar for needle's int8.
TORCH_ENGINES = ("onednn", "x86", "fbgemm")
TORCH_INT8 = tuple(f"torch_int8_{e}" for e in TORCH_ENGINES) + ("torch_int_mm",)
CONTENDERS = ("needle_int8", "needle_int8_fused_conv", "needle_f32", "numpy_f32",
              "torch_f32") + TORCH_INT8

GEMM_CASES = [("gemm 256^3", 256, 256, 256), ("gemm 1024^3", 1024, 1024, 1024),
              ("gemm 4096x128x1152", 4096, 128, 1152), ("gemm 8192x128x1152", 8192, 128, 1152)]

# (model, c_in, c_out, kernel, stride, input height = width) of each convolution
CONV_LAYERS = [
    ("MnistCNN", 1, 8, 3, 1, 28), ("MnistCNN", 8, 16, 3, 2, 28), ("MnistCNN", 16, 16, 3, 1, 14),
    ("MnistCNN", 16, 32, 3, 2, 14), ("MnistCNN", 32, 32, 3, 2, 7),
    ("ResNet9", 3, 16, 7, 4, 32), ("ResNet9", 16, 32, 3, 2, 8), ("ResNet9", 32, 32, 3, 1, 4),
    ("ResNet9", 32, 64, 3, 2, 4), ("ResNet9", 64, 128, 3, 2, 2), ("ResNet9", 128, 128, 3, 1, 1),
]
BATCH = 128
SLOW_CALL_S = 0.15  # one call slower than this: timed once, not repeated


def conv_cases(batch=BATCH):
    """(name, M, N, K, geometry) of each distinct convolution (k//2 padding, so
    H_out = ceil(H / s))."""
    cases, seen = [], set()
    for model, cin, cout, k, s, hw in CONV_LAYERS:
        ho = -(-hw // s)
        shape = (batch * ho * ho, cout, k * k * cin)
        if shape in seen:
            continue
        seen.add(shape)
        cases.append((f"{model} conv{k}x{k}/{s} {cin}->{cout} @{hw}", *shape,
                      dict(batch=batch, hw=hw, cin=cin, cout=cout, k=k, s=s)))
    return cases


# ---- one thread count (inside a worker subprocess) --------------------------------------------
def _torch(threads):
    """(torch, [int8 engines offered]) or (None, [])."""
    try:
        import torch
    except ImportError:
        return None, []
    torch.set_num_threads(int(threads))
    offered = torch.backends.quantized.supported_engines
    return torch, [e for e in TORCH_ENGINES if e in offered]


def _needle_int8(mod, a, w, rng):
    """A qgemm call on prepared backend Arrays (uint8 in, uint8 out, per-channel requant)."""
    from needle.quant.reference import quantize_multiplier, weight_colsum
    m, k = a.shape
    n = w.shape[0]

    def arr(x):
        out = mod.Array(x.size, str(x.dtype))
        mod.from_numpy(np.ascontiguousarray(x).reshape(-1), out)
        return out

    mult, shift = quantize_multiplier(rng.uniform(0.5, 2.0, n) / (64.0 * np.sqrt(k)))
    args = (arr(a), mod.qpack_weights(arr(w), n, k), mod.Array(m * n, "uint8"), m, n, k, 7,
            arr(weight_colsum(w)), arr(rng.integers(-1000, 1000, n, dtype=np.int32)),
            arr(mult), arr(shift), 3, True)
    return lambda: mod.qgemm(*args)


def _needle_qconv(mod, geo, w, rng):
    """The fused NHWC convolution (im2col inside the kernel) of the same layer."""
    from needle.quant.reference import quantize_multiplier, weight_colsum
    b, hw, cin, cout, k, s = (geo[key] for key in ("batch", "hw", "cin", "cout", "k", "s"))
    ho = (hw + 2 * (k // 2) - k) // s + 1

    def arr(x):
        out = mod.Array(x.size, str(x.dtype))
        mod.from_numpy(np.ascontiguousarray(x).reshape(-1), out)
        return out

    x = arr(rng.integers(0, 256, (b, hw, hw, cin), dtype=np.uint8))
    mult, shift = quantize_multiplier(rng.uniform(0.5, 2.0, cout) / (64.0 * np.sqrt(k * k * cin)))
    args = (x, mod.qpack_weights(arr(w), cout, k * k * cin), mod.Array(b * ho * ho * cout, "uint8"),
            b, hw, hw, cin, cout, k, k, s, k // 2, 7, arr(weight_colsum(w)),
            arr(np.zeros(cout, np.int32)), arr(mult), arr(shift), 3, True)
    return lambda: mod.qconv2d_nhwc(*args)


def _torch_int8(torch, engine, a_f, w_f, n, k):
    """A quantized Linear packed for ``engine``; the engine is selected again before each call."""
    torch.backends.quantized.engine = engine
    qlin = torch.ao.nn.quantized.Linear(k, n)
    w_scale = torch.tensor(np.abs(w_f).max(axis=1) / 127.0 + 1e-8, dtype=torch.float64)
    qw = torch.quantize_per_channel(torch.from_numpy(w_f), w_scale,
                                    torch.zeros(n, dtype=torch.int64), 0, torch.qint8)
    qlin.set_weight_bias(qw, torch.zeros(n))
    qlin.scale, qlin.zero_point = float(np.sqrt(k) / 40.0), 3
    xq = torch.quantize_per_tensor(torch.from_numpy(a_f), 1.0 / 64, 7, torch.quint8)

    def call():
        torch.backends.quantized.engine = engine
        return qlin(xq)

    with torch.no_grad():
        call()
    return call


def _torch_int_mm(torch, a, w):
    """torch._int_mm(int8 [M, K], int8 [K, N]) -> int32, or None where torch refuses the shape."""
    ta = torch.from_numpy((a.astype(np.int16) - 128).astype(np.int8))
    tb = torch.from_numpy(w).t()
    try:
        torch._int_mm(ta, tb)
    except (RuntimeError, AttributeError):
        return None
    return lambda: torch._int_mm(ta, tb)


# Contenders that share one worker process. Libraries never share a process: idle OpenMP or
# BLAS worker threads of one would otherwise spin on the cores the next one needs.
GROUPS = (("needle_int8", "needle_int8_fused_conv"), ("needle_f32",), ("numpy_f32",),
          ("torch_f32",), TORCH_INT8)


def _cases(quick):
    cases = [("gemm", *c, None) for c in GEMM_CASES] + [("conv", *c) for c in conv_cases()]
    if quick:
        cases = [c for c in cases if c[0] == "gemm" and c[2] <= 1024]
        cases = [(g, nm, m // 4, n, k, geo) for g, nm, m, n, k, geo in cases]
        cases += [("conv", *c) for c in conv_cases(batch=BATCH // 4)]
    return cases


def measure(threads, contenders, repeats=9, quick=False):
    """Time `contenders` (names from CONTENDERS) on every case at the current thread settings.
    Returns ({case name: {contender: median seconds}}, info)."""
    from needle import backend_ndarray as nd
    want = set(contenders)
    dev = nd.cpu()
    mod = dev.mod if dev.enabled() and want & {"needle_int8", "needle_int8_fused_conv",
                                               "needle_f32"} else None
    has_q = mod is not None and hasattr(mod, "qgemm")
    if mod is not None:
        common.set_needle_threads(threads)
    torch, engines = _torch(threads) if want & {"torch_f32", *TORCH_INT8} else (None, [])
    rng = np.random.default_rng(0)
    times, case_paths = {}, {}
    for group, name, m, n, k, geo in _cases(quick):
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        w = rng.integers(-127, 128, (n, k), dtype=np.int8)
        a_f = ((a.astype(np.float32) - 7) / 64).astype(np.float32)
        w_f = (w.astype(np.float32) / 127).astype(np.float32)
        wt_f = np.ascontiguousarray(w_f.T)
        fns = {}
        if "numpy_f32" in want:
            out_f = np.empty((m, n), np.float32)
            fns["numpy_f32"] = lambda a_f=a_f, wt_f=wt_f, out_f=out_f: np.matmul(a_f, wt_f, out=out_f)
        if has_q and "needle_int8" in want:
            fns["needle_int8"] = _needle_int8(mod, a, w, rng)
        if (has_q and "needle_int8_fused_conv" in want and geo is not None
                and hasattr(mod, "qconv2d_nhwc")):
            fns["needle_int8_fused_conv"] = _needle_qconv(mod, geo, w, rng)
        if mod is not None and "needle_f32" in want:
            fa, fb, fo = mod.Array(m * k), mod.Array(k * n), mod.Array(m * n)
            mod.from_numpy(a_f.reshape(-1), fa)
            mod.from_numpy(wt_f.reshape(-1), fb)
            fns["needle_f32"] = lambda fa=fa, fb=fb, fo=fo, m=m, k=k, n=n: mod.matmul(fa, fb, fo, m, k, n)
        if torch is not None and "torch_f32" in want:
            ta, tb = torch.from_numpy(a_f), torch.from_numpy(wt_f)
            to = torch.empty((m, n))
            fns["torch_f32"] = lambda ta=ta, tb=tb, to=to: torch.mm(ta, tb, out=to)
        for engine in engines:
            if f"torch_int8_{engine}" in want:
                try:
                    fns[f"torch_int8_{engine}"] = _torch_int8(torch, engine, a_f, w_f, n, k)
                except Exception as e:  # noqa: BLE001 - an engine quirk must not stop the run
                    print(f"torch int8 ({engine}) failed on {name}: {e}", file=sys.stderr)
        if torch is not None and "torch_int_mm" in want:
            fn = _torch_int_mm(torch, a, w)
            if fn is not None:
                fns["torch_int_mm"] = fn
        if not fns:
            continue
        # a contender far off the pace (torch._int_mm without a VNNI kernel runs at well
        # under 1 GOP/s) is timed once instead of holding up the run
        slow = {}
        for who, fn in list(fns.items()):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if dt > SLOW_CALL_S:
                slow[who] = dt
                del fns[who]
        timing = common.time_interleaved(fns, repeats=repeats, warmup=1,
                                         min_time=0.05 if quick else 0.2) if fns else {}
        times[name] = {who: t["median_s"] for who, t in timing.items()}
        times[name].update(slow)
        if has_q and hasattr(mod, "_qgemm_isa_for"):
            # the path this product takes (AMX gives short, narrow products to VNNI)
            case_paths[name] = mod._qgemm_isa_for(n, k)
    info = {"case_paths": case_paths} if case_paths else {}
    if torch is not None:
        info.update(torch=torch.__version__, torch_int8_engines=engines,
                    torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    if "numpy_f32" in want:
        info["blas"] = common.blas_info()
    if has_q and "needle_int8" in want:
        info["int8_path"] = mod._qgemm_isa("auto")
        info["int8_paths"] = list(mod._qgemm_isas())
        info["amx_status"] = mod._amx_status() if hasattr(mod, "_amx_status") else None
        vnni = [p for p in ("amx", "vnni", "avxvnni", "avx512", "avx2") if p in info["int8_paths"]]
        if vnni:
            info["peak_int8_path"] = vnni[0]
            info["peak_int8_gops_1thread"] = round(mod._qgemm_peak_gops(vnni[0], 0.3), 1)
        try:
            info["peak_f32_gflops_1thread"] = round(mod._f32_peak_gflops(0.3), 1)
        except ValueError:
            pass
    return times, info


def _rows(threads, samples, quick):
    """One row per case from {case: {contender: [median per round]}}."""
    rows = []
    for group, name, m, n, k, _ in _cases(quick):
        ops = 2.0 * m * n * k
        row = {"group": group, "case": name, "M": m, "N": n, "K": k, "threads": threads}
        for who in CONTENDERS:
            t = samples.get(name, {}).get(who)
            med = float(np.median(t)) if t else None
            row[f"{who}_ms"] = None if med is None else round(med * 1e3, 4)
            row[f"{who}_gops"] = None if med is None else round(ops / med / 1e9, 1)
        rows.append(row)
    return rows


def add_ratios(rows, info):
    """int8/float32 speed-ups, needle int8 over the best torch int8 contender, and fractions
    of the measured peak (scaled by threads)."""
    for r in rows:
        q = r.get("needle_int8_gops")
        for who in ("needle_f32", "numpy_f32", "torch_f32"):
            v = r.get(f"{who}_gops")
            r[f"int8_over_{who}"] = round(q / v, 2) if q and v else None
        peers = {who: r.get(f"{who}_gops") for who in TORCH_INT8 if r.get(f"{who}_gops")}
        best = max(peers, key=peers.get) if peers else None
        r["torch_int8_best"] = best and best.replace("torch_int8_", "").replace("torch_", "")
        r["torch_int8_best_gops"] = peers.get(best)
        # the fused convolution counts too where it beats the plain GEMM on the same layer
        mine = max(v for v in (q, r.get("needle_int8_fused_conv_gops"), 0) if v is not None)
        r["int8_over_torch_best"] = round(mine / peers[best], 2) if mine and best else None
        r["needle_path"] = info.get("case_paths", {}).get(r["case"])
        pk = info.get("peak_int8_gops_1thread")
        r["int8_frac_peak"] = round(q / (pk * r["threads"]), 3) if q and pk else None
        pf = info.get("peak_f32_gflops_1thread")
        f = r.get("needle_f32_gops")
        r["f32_frac_peak"] = round(f / (pf * r["threads"]), 3) if f and pf else None
    return rows


def run(threads=(1, 2), repeats=9, quick=False, rounds=2):
    """Benchmark every case at each thread count; returns
    {"benchmark", "machine", "info": {threads: ...}, "results": [row, ...]}.

    Each group of GROUPS runs in its own subprocess, ``rounds`` times per thread count in
    alternating order (so slow drifts in background load hit every library alike), each time
    doing ``repeats / rounds`` interleaved calls per case; a row reports the median of the
    per-round medians."""
    rows, infos = [], {}
    per_round = max(1, -(-repeats // max(1, rounds)))
    for t in threads:
        samples, info = {}, {}
        for r in range(max(1, rounds)):
            for grp in (GROUPS if r % 2 == 0 else GROUPS[::-1]):
                args = ["--worker", t, "--contenders", ",".join(grp), "--repeats", per_round]
                out = common.run_worker(Path(__file__), args + (["--quick"] if quick else []),
                                        threads=t)
                info.update(out["info"])
                for case, by_who in out["times"].items():
                    for who, sec in by_who.items():
                        samples.setdefault(case, {}).setdefault(who, []).append(sec)
        infos[str(t)] = info
        rows.extend(add_ratios(_rows(t, samples, quick), info))
    return {"benchmark": "int8_gemm", "machine": common.machine_info(), "info": infos,
            "method": f"{len(GROUPS)} process groups x {rounds} rounds, {per_round} "
                      f"interleaved calls per case and round, median of round medians",
            "peak_note": "peak = one-thread register-loop measurement x threads",
            "results": rows}


def format_table(data):
    """Markdown table: GOP/s of each contender, needle int8 over the best torch int8 engine
    and over needle float32, fraction of the int8 peak."""
    fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
    rows = data["results"]
    peers = [w for w in TORCH_INT8 if any(r.get(f"{w}_gops") for r in rows)]
    head = (["case", "M x N x K", "thr", "needle int8", "path", "needle fused conv", "needle f32",
             "numpy f32", "torch f32"] + [w.replace("torch_int8_", "torch ").replace("_", " ")
                                          for w in peers]
            + ["best torch int8", "needle / best torch int8", "int8 / needle f32", "int8 % peak"])
    lines = ["| " + " | ".join(head) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |"]
    for r in rows:
        pk = r.get("int8_frac_peak")
        cells = [r["case"], f"{r['M']}x{r['N']}x{r['K']}", r["threads"], r["needle_int8_gops"],
                 r.get("needle_path"), r.get("needle_int8_fused_conv_gops"), r["needle_f32_gops"], r["numpy_f32_gops"],
                 r["torch_f32_gops"]] + [r.get(f"{w}_gops") for w in peers]
        cells += [r.get("torch_int8_best"), r.get("int8_over_torch_best"),
                  r["int8_over_needle_f32"], None if pk is None else f"{100 * pk:.0f}%"]
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def _worker_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    args = p.parse_args(argv)
    times, info = measure(args.worker, args.contenders.split(","), args.repeats, args.quick)
    info["NEEDLE_ISA"] = os.environ.get("NEEDLE_ISA")
    print(json.dumps({"times": times, "info": info}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return _worker_main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="smaller GEMMs (smoke test)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    data = run(tuple(args.threads), args.repeats, args.quick)
    common.write_json(args.out, data)
    print(format_table(data))
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
