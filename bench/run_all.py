"""`make bench`: every benchmark, one report.

Runs, at 1 and 2 threads (each thread count in its own subprocess):

* bench_int8.py   int8 GEMM (needle qgemm) vs needle/numpy/torch float32 and torch int8, on
                  square/tall GEMMs and the im2col GEMM of every MnistCNN / ResNet9 convolution;
* bench_matmul.py needle's float32 matmul vs numpy (when present);
* bench_models.py end-to-end images/s of the float and int8 MnistCNN / ResNet9 (batch 128).

Writes bench/results/bench.json (everything), bench/results/bench.md (markdown tables) and
bench/results/bench.png (GOP/s bars). Timing only: nothing here passes or fails. The default
run takes a few minutes on 2 cores; ``--quick`` is a ~1 minute smoke run with smaller shapes.

    .venv/bin/python bench/run_all.py [--quick] [--threads 1 2] [--repeats N]
"""
import argparse
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
import bench_int8  # noqa: E402
import bench_models  # noqa: E402


def _section(name, fn):
    """Run one benchmark; a failure is reported in the results instead of stopping the rest."""
    t0 = time.perf_counter()
    print(f"== {name} ...", flush=True)
    try:
        data = fn()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        data = {"error": f"{type(e).__name__}: {e}"}
    data["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(f"== {name} done in {data['elapsed_s']} s", flush=True)
    return data


def plot(int8, path):
    """Grouped bars of GOP/s per case, one panel per thread count (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = int8.get("results", [])
    threads = sorted({r["threads"] for r in rows})
    if not rows:
        return None
    who = [w for w in bench_int8.CONTENDERS if any(r.get(f"{w}_gops") for r in rows)]
    fig, axes = plt.subplots(len(threads), 1, figsize=(15, 4.4 * len(threads)), squeeze=False)
    for ax, t in zip(axes[:, 0], threads):
        rs = [r for r in rows if r["threads"] == t]
        width = 0.8 / len(who)
        for i, w in enumerate(who):
            vals = [r.get(f"{w}_gops") or 0 for r in rs]
            ax.bar([j + i * width for j in range(len(rs))], vals, width, label=w.replace("_", " "))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rs))])
        ax.set_xticklabels([f"{r['case']}\n{r['M']}x{r['N']}x{r['K']}" for r in rs],
                           rotation=30, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("GOP/s (2 ops per multiply-add)")
        info = int8.get("info", {}).get(str(t), {})
        pk = info.get("peak_int8_gops_1thread")
        if pk:
            ax.axhline(pk * t, color="k", ls="--", lw=0.8, label=f"int8 peak ({pk * t:.0f})")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(report):
    m = report["machine"]
    out = ["# needle benchmarks", "",
           f"{m['cpu']}, {m['cores']} cores, load average (1, 5, 15 min) at start "
           f"{m['loadavg_1_5_15min']}, at the end {report.get('loadavg_end')}; "
           f"{report['mode']} run, {report['elapsed_s']} s.", ""]
    loads = (m["loadavg_1_5_15min"] or [0])[:1] + (report.get("loadavg_end") or [0])[:1]
    if max(loads) > 0.8 and m["cores"] and m["cores"] <= 2 and max(report["threads"]) > 1:
        out += ["**Other work was running** (1-minute load average above 0.8 on "
                f"{m['cores']} cores): multi-thread rows measure the contention more than the "
                "kernels; compare the 1-thread rows.", ""]
    int8 = report["int8"]
    if "results" in int8:
        out += ["## Int8 GEMM (GOP/s, median of interleaved repeats)", ""]
        for t, info in int8["info"].items():
            out.append(f"* {t} thread(s): int8 path `{info.get('int8_path')}`, measured peak "
                       f"{info.get('peak_int8_gops_1thread')} GOP/s int8 "
                       f"(`{info.get('peak_int8_path')}`) and {info.get('peak_f32_gflops_1thread')} "
                       f"GFLOP/s float32 FMA per thread; AMX: {info.get('amx_status')}; "
                       f"torch {info.get('torch')} ({info.get('torch_cpu_capability')}) int8 "
                       f"engines {info.get('torch_int8_engines')}.")
        out += ["", bench_int8.format_table(int8), ""]
    else:
        out += ["## Int8 GEMM", "", f"failed: {int8.get('error')}", ""]
    mm = report.get("matmul")
    if mm is not None:
        out += ["## Float32 matmul (bench_matmul.py)", ""]
        if "results" in mm:
            import bench_matmul
            out += [bench_matmul.format_table(mm), ""]
        else:
            out += [f"failed: {mm.get('error')}", ""]
    models = report["models"]
    out += ["## End to end (images/s)", ""]
    out += [bench_models.format_table(models) if "results" in models
            else f"failed: {models.get('error')}", ""]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    threads = tuple(args.threads)
    reps = args.repeats or (3 if args.quick else 9)
    t0 = time.perf_counter()
    report = {"mode": "quick" if args.quick else "full", "threads": list(threads),
              "machine": common.machine_info()}
    report["int8"] = _section("int8 GEMM", lambda: bench_int8.run(threads, reps, args.quick))
    try:
        import bench_matmul
    except ImportError:
        bench_matmul = None
    if bench_matmul is not None and hasattr(bench_matmul, "run"):
        report["matmul"] = _section("float32 matmul",
                                    lambda: bench_matmul.run(threads=threads, repeats=reps,
                                                             quick=args.quick))
    report["models"] = _section("models end to end",
                                lambda: bench_models.run(threads, min(reps, 5), args.quick))
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    try:
        report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        report["loadavg_end"] = None
    out = args.out_dir
    common.write_json(out / "bench.json", report)
    md = markdown(report)
    tmp = out / "bench.md.tmp"
    tmp.write_text(md + "\n")
    tmp.replace(out / "bench.md")
    try:
        plot(report["int8"], out / "bench.png")
    except Exception:  # noqa: BLE001 - the numbers are already saved
        traceback.print_exc()
    print(md)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return report


if __name__ == "__main__":
    main()
