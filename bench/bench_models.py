"""End-to-end inference speed of the zoo models, images per second: float32 needle, the int8
model from ``needle.quant.quantize_model``, and PyTorch's int8 twin of each model on every
int8 engine torch offers (bench/torch_models.py: BN folded, per-channel weights,
channels_last input), at batch 1, 32 and 128.

Models: MnistCNN (the shipped checkpoint when present, else random weights) on [B, 1, 28, 28]
and ResNet9 (random weights) on [B, 3, 32, 32]. Calibration uses one random batch: this
measures speed, not accuracy (``agree`` is the fraction of equal argmax predictions between
needle's float and int8 models, a sanity check only). needle and torch run in separate
subprocesses per thread count (bench/common.py); within one, the contenders run interleaved,
median reported. ``int8_over_torch_best`` = needle int8 img/s / the best torch int8 engine's.

    .venv/bin/python bench/bench_models.py [--threads 1 2] [--repeats 5] [--batches 1 32 128]

From Python: ``run(threads=(1, 2), repeats=5) -> dict``. When ``needle.quant.quantize_model``
is missing or fails, the int8 column is empty and ``error`` says why.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402  (bench/common.py)

BATCHES = (1, 32, 128)
MODELS = (("MnistCNN", (1, 28, 28)), ("ResNet9", (3, 32, 32)))
TORCH_ENGINES = ("onednn", "x86", "fbgemm")


def _build(name):
    from needle.nn import zoo
    if name == "MnistCNN":
        try:
            return zoo.pretrained_mnist_cnn(), "checkpoint"
        except (FileNotFoundError, OSError, KeyError, ValueError):
            pass
    model = getattr(zoo, name)()
    model.eval()
    return model, "random"


def _timing_repeats(fns, repeats, budget_s):
    """Enough interleaved rounds for a stable median, at most ~budget_s of calls."""
    import time
    t0 = time.perf_counter()
    for f in fns.values():
        f()
    one = max(time.perf_counter() - t0, 1e-5)
    return int(max(3, min(repeats * 4, budget_s / one)))


def measure(threads, repeats=5, quick=False, batches=BATCHES):
    """needle rows of {model, batch, threads, float_img_s, int8_img_s, int8_over_float,
    agree, error}."""
    import needle as ndl
    common.set_needle_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for name, chw in MODELS:
        try:
            model, weights = _build(name)
            calib = rng.random((32, *chw), dtype=np.float32)
            from needle.quant import quantize_model
            qmodel = quantize_model(model, [calib], num_batches=1, progress=False)
            qerr = None
        except Exception as e:  # noqa: BLE001 - the float number is still worth reporting
            model, weights, qmodel, qerr = locals().get("model"), "random", None, e
        for batch in batches:
            row = {"model": name, "batch": batch, "threads": threads, "float_img_s": None,
                   "int8_img_s": None, "int8_over_float": None, "agree": None,
                   "weights": weights, "error": None if qerr is None else
                   f"int8: {type(qerr).__name__}: {qerr}"}
            try:
                x = ndl.Tensor(rng.random((batch, *chw), dtype=np.float32), requires_grad=False)
                fns = {"float": lambda x=x: model(x).numpy()}
                if qmodel is not None:
                    fns["int8"] = lambda x=x: qmodel(x).numpy()
                    row["agree"] = float(np.mean(fns["int8"]().argmax(1) ==
                                                 fns["float"]().argmax(1)))
                reps = _timing_repeats(fns, repeats, 0.5 if quick else 2.0)
                timing = common.time_interleaved(fns, repeats=reps, warmup=1)
                row["float_img_s"] = round(batch / timing["float"]["median_s"], 1)
                if "int8" in timing:
                    row["int8_img_s"] = round(batch / timing["int8"]["median_s"], 1)
                    row["int8_over_float"] = round(row["int8_img_s"] / row["float_img_s"], 2)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
        if qmodel is not None:
            rows.append(_first_conv(ndl, model, qmodel, name, chw, max(batches), threads,
                                    repeats, quick))
    return rows


def _first_conv(ndl, model, qmodel, name, chw, batch, threads, repeats, quick):
    """The model's first convolution alone: the float block (Conv, BatchNorm, ReLU) against
    the int8 pipeline's first steps (QuantStub: float NCHW -> uint8 NHWC, then the fused
    QuantizedConv2d with ReLU), images/s; ``int8_over_float`` >= 1 means int8 is no slower."""
    x = ndl.Tensor(np.random.default_rng(1).random((batch, *chw), dtype=np.float32),
                   requires_grad=False)
    first_f, first_q = model.model.modules[0], qmodel.body.modules[0]
    fns = {"float": lambda: first_f(x).realize_cached_data(),
           "int8": lambda: first_q(qmodel.quant(x)).data.compact()}
    reps = _timing_repeats(fns, repeats, 0.5 if quick else 1.5)
    timing = common.time_interleaved(fns, repeats=reps, warmup=1)
    f, q = (batch / timing[k]["median_s"] for k in ("float", "int8"))
    return {"model": f"{name} first conv", "batch": batch, "threads": threads,
            "float_img_s": round(f, 1), "int8_img_s": round(q, 1),
            "int8_over_float": round(q / f, 2), "agree": None, "weights": "", "error": None}


def measure_torch(threads, repeats=5, quick=False, batches=BATCHES):
    """torch rows of {model, batch, threads, torch_int8_<engine>_img_s, torch_f32_img_s}."""
    import warnings
    warnings.filterwarnings("ignore")  # torch's deprecation notes about eager quantization
    try:
        import torch
    except ImportError:
        return []
    import torch_models
    torch.set_num_threads(int(threads))
    engines = [e for e in TORCH_ENGINES if e in torch.backends.quantized.supported_engines]
    rows = []
    for name, _ in MODELS:
        models = {"torch_f32": torch_models.float_model(torch, name)}
        for e in engines:
            try:
                models[f"torch_int8_{e}"] = (e, torch_models.int8_model(torch, name, e))
            except Exception as err:  # noqa: BLE001 - an engine quirk must not stop the run
                print(f"torch int8 {name} ({e}) failed: {err}", file=sys.stderr)
        for batch in batches:
            x = torch_models.example(torch, name, batch)
            fns = {}
            for who, m in models.items():
                if who == "torch_f32":
                    fns[who] = lambda m=m: m(x)
                else:
                    def call(e=m[0], m=m[1]):
                        torch.backends.quantized.engine = e
                        return m(x)
                    fns[who] = call
            with torch.inference_mode():
                reps = _timing_repeats(fns, repeats, 0.5 if quick else 2.0)
                timing = common.time_interleaved(fns, repeats=reps, warmup=1)
            row = {"model": name, "batch": batch, "threads": threads}
            row.update({f"{who}_img_s": round(batch / t["median_s"], 1)
                        for who, t in timing.items()})
            rows.append(row)
    return rows


def merge(needle_rows, torch_rows):
    """One row per (model, batch, threads) with needle's and torch's numbers and the ratio of
    needle int8 to the best torch int8 engine."""
    key = lambda r: (r["model"], r["batch"], r["threads"])  # noqa: E731
    theirs = {key(r): r for r in torch_rows}
    out = []
    for r in needle_rows:
        row = dict(r)
        t = theirs.get(key(r), {})
        row.update({k: v for k, v in t.items() if k.startswith("torch_")})
        peers = {k[len("torch_int8_"):-len("_img_s")]: v for k, v in t.items()
                 if k.startswith("torch_int8_") and v}
        best = max(peers, key=peers.get) if peers else None
        row["torch_int8_best"] = best
        row["torch_int8_best_img_s"] = peers.get(best)
        row["int8_over_torch_best"] = (round(row["int8_img_s"] / peers[best], 2)
                                       if best and row.get("int8_img_s") else None)
        out.append(row)
    return out


def run(threads=(1, 2), repeats=5, quick=False, batches=BATCHES):
    rows = []
    for t in threads:
        args = ["--worker", t, "--repeats", repeats, "--batches", *batches]
        args += ["--quick"] if quick else []
        mine = common.run_worker(Path(__file__), args, threads=t)["rows"]
        theirs = common.run_worker(Path(__file__), args + ["--torch"], threads=t)["rows"]
        rows.extend(merge(mine, theirs))
    return {"benchmark": "models_e2e", "machine": common.machine_info(), "results": rows}


def format_table(data):
    fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
    rows = data["results"]
    engines = [e for e in TORCH_ENGINES if any(r.get(f"torch_int8_{e}_img_s") for r in rows)]
    head = (["model", "batch", "threads", "needle f32", "needle int8", "int8/f32", "torch f32"]
            + [f"torch int8 {e}" for e in engines]
            + ["needle int8 / best torch int8", "agree", "note"])
    lines = ["| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head[1:-1]) + " | --- |"]
    for r in rows:
        cells = [r["model"], r["batch"], r["threads"], r["float_img_s"], r["int8_img_s"],
                 r["int8_over_float"], r.get("torch_f32_img_s")]
        cells += [r.get(f"torch_int8_{e}_img_s") for e in engines]
        best = r.get("int8_over_torch_best")
        cells += [None if best is None else f"{best} (vs {r['torch_int8_best']})", r["agree"],
                  f"{r.get('weights', '')} {r['error'] or ''}".strip()]
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", type=int)
    p.add_argument("--torch", action="store_true", help="(worker) time the torch models")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if min(args.batches) < 1 or min(args.threads) < 1 or args.repeats < 1:
        p.error("--batches, --threads and --repeats must be >= 1")
    if args.worker is not None:
        fn = measure_torch if args.torch else measure
        print(json.dumps({"rows": fn(args.worker, args.repeats, args.quick,
                                     tuple(args.batches))}))
        return None
    data = run(tuple(args.threads), args.repeats, args.quick, tuple(args.batches))
    print(format_table(data))
    return data


if __name__ == "__main__":
    main()
