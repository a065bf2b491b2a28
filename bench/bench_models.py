"""End-to-end inference speed of the zoo models: float32 needle vs the int8 model from
``needle.quant.quantize_model``, batch 128, images per second.

Models: MnistCNN (the shipped checkpoint when present, else random weights) on [128, 1, 28, 28]
and ResNet9 (random weights) on [128, 3, 32, 32]. Calibration uses one random batch: this
measures speed, not accuracy (``agree`` is the fraction of equal argmax predictions, a sanity
check only). Each thread count runs in its own subprocess (bench/common.py); float and int8
forwards run interleaved, median reported.

    .venv/bin/python bench/bench_models.py [--threads 1 2] [--repeats 5]

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

BATCH = 128
MODELS = (("MnistCNN", (BATCH, 1, 28, 28)), ("ResNet9", (BATCH, 3, 32, 32)))


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


def measure(threads, repeats=5, quick=False):
    """Rows of {model, threads, float_img_s, int8_img_s, int8_over_float, agree, error}."""
    import needle as ndl
    common.set_needle_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in MODELS:
        row = {"model": name, "batch": BATCH, "threads": threads, "float_img_s": None,
               "int8_img_s": None, "int8_over_float": None, "agree": None, "error": None}
        try:
            model, weights = _build(name)
            row["weights"] = weights
            x_np = rng.random(shape, dtype=np.float32)
            x = ndl.Tensor(x_np, requires_grad=False)
            fns = {"float": lambda: model(x).numpy()}
            try:
                from needle.quant import quantize_model
                qmodel = quantize_model(model, [x_np], num_batches=1, progress=False)
                fns["int8"] = lambda: qmodel(x).numpy()
                row["agree"] = float(np.mean(fns["int8"]().argmax(1) == fns["float"]().argmax(1)))
            except Exception as e:  # noqa: BLE001 - the float number is still worth reporting
                row["error"] = f"int8: {type(e).__name__}: {e}"
            timing = common.time_interleaved(fns, repeats=2 if quick else repeats, warmup=1)
            row["float_img_s"] = round(BATCH / timing["float"]["median_s"], 1)
            if "int8" in timing:
                row["int8_img_s"] = round(BATCH / timing["int8"]["median_s"], 1)
                row["int8_over_float"] = round(row["int8_img_s"] / row["float_img_s"], 2)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    return rows


def run(threads=(1, 2), repeats=5, quick=False):
    rows = []
    for t in threads:
        args = ["--worker", t, "--repeats", repeats] + (["--quick"] if quick else [])
        rows.extend(common.run_worker(Path(__file__), args, threads=t)["rows"])
    return {"benchmark": "models_e2e", "machine": common.machine_info(), "results": rows}


def format_table(data):
    fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
    lines = ["| model | batch | threads | float32 img/s | int8 img/s | int8/float | agree | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in data["results"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {fmt(r['float_img_s'])} | "
                     f"{fmt(r['int8_img_s'])} | {fmt(r['int8_over_float'])} | {fmt(r['agree'])} | "
                     f"{r.get('weights', '')} {r['error'] or ''} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", type=int)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps({"rows": measure(args.worker, args.repeats, args.quick)}))
        return None
    data = run(tuple(args.threads), args.repeats, args.quick)
    print(format_table(data))
    return data


if __name__ == "__main__":
    main()
