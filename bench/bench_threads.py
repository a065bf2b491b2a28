"""Threads under load: MnistCNN images/s, float32 and int8, on 1 and 2 threads, with the
machine as it is ("idle") and with a load generator keeping one core busy ("loaded").

On a 2-vCPU machine (Colab's case) a second OpenMP thread only helps when the runtime's idle
threads give their core back quickly: a thread that spins at a join while the other core also
runs a busy process steals the time the working thread needs. The goal this measures: 2
threads never more than 10% slower than 1 thread, loaded or not.

    .venv/bin/python bench/bench_threads.py [--batch 32] [--seconds 6] [--env KEY=VALUE ...]

The load generator is one Python process spinning for at most ``--seconds`` times the number
of measurements (it is also stopped as soon as they are done). Each measurement is a fresh
subprocess (bench/common.py fixes the thread pools before any library starts); ``--env``
adds variables to it (e.g. OMP_WAIT_POLICY=active to see the old behaviour).
From Python: ``run(batch=32, seconds=6) -> dict``.
"""
import argparse
import json
import os
import subprocess
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

_SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def measure(threads, batch, seconds):
    """{float_img_s, int8_img_s} of MnistCNN at ``batch`` on ``threads`` threads, each timed
    interleaved for about ``seconds`` in total."""
    import needle as ndl
    from needle.nn import zoo
    from needle.quant import quantize_model
    common.set_needle_threads(threads)
    try:
        model = zoo.pretrained_mnist_cnn()
    except (FileNotFoundError, OSError, KeyError, ValueError):
        model = zoo.MnistCNN()
    model.eval()
    x_np = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    x = ndl.Tensor(x_np, requires_grad=False)
    qmodel = quantize_model(model, [x_np], num_batches=1, progress=False)
    fns = {"float": lambda: model(x).numpy(), "int8": lambda: qmodel(x).numpy()}
    t0 = time.perf_counter()
    for f in fns.values():
        f()
    one = max(time.perf_counter() - t0, 1e-4)
    repeats = int(max(5, min(400, seconds / one)))
    timing = common.time_interleaved(fns, repeats=repeats, warmup=2)
    out = {f"{name}_img_s": round(batch / t["median_s"], 1) for name, t in timing.items()}
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    return out


def _worker(threads, batch, seconds, extra_env):
    env = common.bench_env(threads)
    env.update(extra_env)
    cmd = [sys.executable, str(Path(__file__)), "--worker", str(threads), "--batch", str(batch),
           "--seconds", str(seconds)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(batch=32, seconds=6.0, extra_env=None, rounds=2):
    """Rows {load, threads, float_img_s, int8_img_s} (best of ``rounds`` interleaved
    1-thread / 2-thread measurements per load), plus the 2-thread / 1-thread ratios."""
    extra_env = dict(extra_env or {})
    rows = []
    for load in ("idle", "loaded"):
        spinner = None
        if load == "loaded":
            bound = seconds * 2 * rounds * 3 + 60  # never outlives the measurements for long
            spinner = subprocess.Popen([sys.executable, "-c", _SPIN.format(s=bound)])
        try:
            best = {}
            for _ in range(rounds):
                for t in (1, 2):
                    got = _worker(t, batch, seconds, extra_env)
                    policy = got.pop("omp_wait_policy")
                    for key, v in got.items():
                        best[(t, key)] = max(best.get((t, key), 0.0), v)
        finally:
            if spinner is not None:
                spinner.terminate()
                spinner.wait()
        for t in (1, 2):
            rows.append({"load": load, "threads": t, "batch": batch,
                         "float_img_s": best[(t, "float_img_s")],
                         "int8_img_s": best[(t, "int8_img_s")]})
    ratios = {}
    for load in ("idle", "loaded"):
        one, two = [r for r in rows if r["load"] == load]
        ratios[load] = {k: round(two[k] / one[k], 2) for k in ("float_img_s", "int8_img_s")}
    return {"benchmark": "threads_under_load", "machine": common.machine_info(),
            "env": extra_env, "omp_wait_policy": policy, "results": rows,
            "two_over_one": ratios}


def format_table(data):
    lines = ["| load | threads | float32 img/s | int8 img/s |", "| --- | ---: | ---: | ---: |"]
    for r in data["results"]:
        lines.append(f"| {r['load']} | {r['threads']} | {r['float_img_s']} | {r['int8_img_s']} |")
    for load, q in data["two_over_one"].items():
        lines.append(f"| {load}: 2 threads / 1 thread | | {q['float_img_s']}x | "
                     f"{q['int8_img_s']}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", type=int)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.batch < 1 or args.seconds <= 0 or args.rounds < 1:
        p.error("--batch and --rounds must be >= 1 and --seconds > 0")
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.batch, args.seconds)))
        return None
    extra = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--env expects KEY=VALUE, got {item!r}")
        extra[key] = value
    data = run(args.batch, args.seconds, extra, args.rounds)
    print(format_table(data))
    return data


if __name__ == "__main__":
    main()
