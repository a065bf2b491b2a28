"""Command line of the PTQ toolkit.

    python -m needle.quant quantize  --checkpoint F --out Q      fuse, calibrate, quantize, save
    python -m needle.quant evaluate  --model F_or_Q              accuracy and images/s
    python -m needle.quant report    --checkpoint F --quantized Q [--plots DIR]
    python -m needle.quant demo                                  the whole story (make demo)
    python -m needle.quant demo --model lm                       the LSTM: float / dynamic int8
                                                                 / int4-g128 / int4-g32 table

Every command takes ``--json PATH`` (``-`` for stdout) to write its results as JSON, and
``--data-dir`` / ``--device``. Data: the offline split of the MNIST test set (calibration
from images 0..7999, evaluation on the 2,000 held-out images 8000..9999).
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from .._atomic import atomic_write

DEFAULT_OUT_DIR = Path("build")


# ---------------------------------------------------------------------------------- helpers

def _device(name):
    import needle as ndl
    if name is None:
        return ndl.default_device()
    dev = {"cpu": ndl.cpu, "cuda": ndl.cuda, "cpu_numpy": ndl.cpu_numpy}[name]()
    if not dev.enabled():
        raise SystemExit(f"error: device {name} is not available")
    return dev


def _splits(args):
    from needle.data import mnist_offline_split
    try:
        return mnist_offline_split(args.data_dir)
    except Exception as e:  # missing files, failed download, corrupt data
        raise SystemExit(f"error: cannot load the MNIST offline split: {e}") from None


def _loader(dataset, batch_size, limit=None):
    from needle.data import DataLoader
    if limit is not None:
        idx = np.arange(min(limit, len(dataset)))
        images, labels = dataset.get_batch(idx)
        return [(images[i:i + batch_size], labels[i:i + batch_size])
                for i in range(0, len(idx), batch_size)]
    return DataLoader(dataset, batch_size=batch_size, as_numpy=True)


def _load_float(path, device):
    from needle.nn.zoo import pretrained_mnist_cnn
    try:
        return pretrained_mnist_cnn(path, device=device)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None


def _load_any(path, device):
    """(model, "float" | "int8") from a float checkpoint or a quantized model file."""
    from needle.quant.convert import SPEC_KEY, load_quantized
    from needle.serialization import load_metadata
    if not Path(path).is_file():
        raise SystemExit(f"error: model file {path} not found")
    if SPEC_KEY in load_metadata(path):
        return load_quantized(path, device=device), "int8"
    return _load_float(path, device), "float"


def _config(args):
    from needle.quant import QConfig
    extra = {}
    if args.percentile is not None:
        extra["percentile"] = args.percentile
    try:
        return QConfig(activation_observer=args.observer, weight_observer=args.weight_observer,
                       weight_granularity=args.granularity, weight_bits=args.weight_bits,
                       activation_dtype=args.activation_dtype, observer_args=extra)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from None


def _write_json(result, path):
    text = json.dumps(result, indent=2, sort_keys=True, default=float)
    if path == "-":
        print(text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def _say(args, *msg):
    if args.json != "-":
        print(*msg)


def _quantize(args, device):
    """Load the float model, calibrate, quantize. Returns (float model, qmodel, seconds)."""
    from needle.quant import quantize_model
    config = _config(args)
    model = _load_float(args.checkpoint, device)
    splits = _splits(args)
    calib = _loader(splits.train, args.batch_size, limit=args.calibration_images)
    t0 = time.perf_counter()
    qmodel = quantize_model(model, calib, config, progress=not args.no_progress)
    return model, qmodel, time.perf_counter() - t0, splits


def _eval(model, splits, args, device, desc):
    from needle.quant.report import evaluate
    loader = _loader(splits.heldout, args.batch_size, limit=args.eval_images)
    return evaluate(model, loader, device=device, progress=not args.no_progress, desc=desc)


# --------------------------------------------------------------------------------- commands

def cmd_quantize(args):
    import needle as ndl
    device = _device(args.device)
    _, qmodel, seconds, _ = _quantize(args, device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    ndl.save(qmodel, args.out)
    result = {"checkpoint": str(args.checkpoint), "out": str(args.out),
              "bytes": os.path.getsize(args.out), "seconds": seconds,
              "config": qmodel.config.to_dict(),
              "calibration_images": args.calibration_images}
    _say(args, f"wrote {args.out} ({result['bytes']} bytes) in {seconds:.1f} s")
    return result


def cmd_evaluate(args):
    device = _device(args.device)
    model, kind = _load_any(args.model, device)
    r = _eval(model, _splits(args), args, device, desc=f"evaluate {kind}")
    result = {"model": str(args.model), "kind": kind, "accuracy": r["accuracy"],
              "images": r["images"], "images_per_s": r["images_per_s"],
              "device": device.name}
    _say(args, f"{kind} model {args.model}: accuracy {100 * r['accuracy']:.2f}% on "
               f"{r['images']} held-out images, {r['images_per_s']:.0f} images/s on "
               f"{device.name}")
    return result


def cmd_report(args):
    from needle.quant import report
    from needle.quant.convert import load_quantized
    device = _device(args.device)
    splits = _splits(args)
    model = _load_float(args.checkpoint, device)
    qmodel = load_quantized(args.quantized, device=device)
    rf = _eval(model, splits, args, device, "evaluate float")
    rq = _eval(qmodel, splits, args, device, "evaluate int8")
    from needle.autograd import Tensor
    x = Tensor(splits.heldout.get_batch(np.arange(64))[0], device=device, requires_grad=False)
    layers = report.layer_sqnr(model, qmodel, x)
    result = {
        "float": {"accuracy": rf["accuracy"], "images_per_s": rf["images_per_s"],
                  "file_bytes": report.file_size(args.checkpoint),
                  "memory_bytes": report.memory_bytes(model)},
        "int8": {"accuracy": rq["accuracy"], "images_per_s": rq["images_per_s"],
                 "file_bytes": report.file_size(args.quantized),
                 "memory_bytes": report.memory_bytes(qmodel),
                 "breakdown": report.quantized_breakdown(qmodel)},
        "logit_agreement": float((rf["logits"].argmax(1) == rq["logits"].argmax(1)).mean()),
        "layers": layers, "config": qmodel.config.to_dict(), "device": device.name,
    }
    if args.plots:
        result["plots"] = report.plot_histograms(model, qmodel, x, args.plots)
    _say(args, _table(result))
    _say(args, "\nper-layer SQNR (float vs dequantized activations):")
    for layer in layers:
        _say(args, f"  {layer['layer']:<16} {str(tuple(layer['shape'])):<18} "
                   f"{layer['sqnr_db']:6.1f} dB")
    if args.plots:
        _say(args, "histograms: " + ", ".join(result["plots"]))
    return result


def _table(result):
    f, q = result["float"], result["int8"]
    rows = [("", "float32", "int8", ""),
            ("accuracy (held-out)", f"{100 * f['accuracy']:.2f}%", f"{100 * q['accuracy']:.2f}%",
             f"{100 * (q['accuracy'] - f['accuracy']):+.2f} pts"),
            ("file size", f"{f['file_bytes']:,} B", f"{q['file_bytes']:,} B",
             f"{f['file_bytes'] / q['file_bytes']:.2f}x smaller"),
            ("memory (params+buffers)", f"{f['memory_bytes']:,} B",
             f"{q['memory_bytes']:,} B", f"{f['memory_bytes'] / q['memory_bytes']:.2f}x"),
            ("throughput", f"{f['images_per_s']:,.0f} img/s", f"{q['images_per_s']:,.0f} img/s",
             f"{q['images_per_s'] / f['images_per_s']:.2f}x")]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def cmd_demo_lm(args):
    from needle.quant.lm import lm_demo, lm_table
    if args.test_chars is not None and args.test_chars < 24:
        raise SystemExit(f"error: --test-chars must be at least 24 (3 rows of the batch of 8), "
                         f"got {args.test_chars}")
    if args.lm_steps < 1:
        raise SystemExit(f"error: --lm-steps must be positive, got {args.lm_steps}")
    device = _device(args.device)
    _say(args, f"quantize the character LSTM ({args.lm_checkpoint or 'the shipped checkpoint'}) "
               f"to dynamic int8 and int4, on {device.name}")
    result = lm_demo(args.lm_checkpoint, device, args.out_dir, args.test_chars, args.lm_steps,
                     outliers=not args.no_outliers, say=lambda *m: _say(args, *m))
    _say(args, "")
    _say(args, lm_table(result))
    for name, ok in result["goals"].items():
        _say(args, f"  [{'ok' if ok else 'MISSED'}] {name}")
    if args.json is None:
        json_path = str(Path(args.out_dir) / "demo_lm.json")
        _write_json(result, json_path)
        _say(args, f"\nwrote {json_path}")
    return result


def cmd_demo(args):
    if args.model == "lm":
        return cmd_demo_lm(args)
    import needle as ndl
    from needle.quant import report
    from needle.quant.convert import load_quantized
    device = _device(args.device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qpath = out_dir / "mnist_cnn_int8.safetensors"

    _say(args, f"1/4 load {args.checkpoint} and quantize (fuse BN, calibrate on "
               f"{args.calibration_images} offline-train images)")
    model, qmodel, qseconds, splits = _quantize(args, device)
    _say(args, f"2/4 save {qpath} and load it back")
    ndl.save(qmodel, qpath)
    reloaded = load_quantized(qpath, device=device)
    _say(args, f"3/4 evaluate float and int8 on {args.eval_images or len(splits.heldout)} "
               f"held-out images ({device.name})")
    rf = _eval(model, splits, args, device, "evaluate float")
    rq = _eval(reloaded, splits, args, device, "evaluate int8")
    check = _loader(splits.heldout, args.batch_size, limit=args.check_images)
    rq_mem = report.evaluate(qmodel, check, device=device)
    identical = bool(np.array_equal(rq_mem["logits"], rq["logits"][:rq_mem["images"]]))

    result = {
        "float": {"accuracy": rf["accuracy"], "images_per_s": rf["images_per_s"],
                  "file_bytes": report.file_size(args.checkpoint),
                  "memory_bytes": report.memory_bytes(model)},
        "int8": {"accuracy": rq["accuracy"], "images_per_s": rq["images_per_s"],
                 "file_bytes": report.file_size(qpath),
                 "memory_bytes": report.memory_bytes(reloaded),
                 "breakdown": report.quantized_breakdown(reloaded),
                 "path": str(qpath), "quantize_seconds": qseconds},
        "held_out_images": rf["images"], "calibration_images": args.calibration_images,
        "device": device.name, "config": qmodel.config.to_dict(),
        "logit_agreement": float((rf["logits"].argmax(1) == rq["logits"].argmax(1)).mean()),
        "reload_identical_logits": identical, "reload_checked_images": rq_mem["images"],
    }
    result["accuracy_drop_points"] = 100 * (rf["accuracy"] - rq["accuracy"])
    result["size_ratio"] = result["float"]["file_bytes"] / result["int8"]["file_bytes"]
    from needle.autograd import Tensor
    x = Tensor(splits.heldout.get_batch(np.arange(64))[0], device=device, requires_grad=False)
    result["layers"] = report.layer_sqnr(model, qmodel, x)
    _say(args, "4/4 results\n")
    _say(args, _table(result))
    _say(args, f"\nsave -> load -> evaluate gives identical logits: {identical} "
               f"({rq_mem['images']} images checked); top-1 agreement float vs int8: "
               f"{100 * result['logit_agreement']:.2f}%")
    targets = {"accuracy within 0.3 points": result["accuracy_drop_points"] <= 0.3,
               "file >= 3.8x smaller": result["size_ratio"] >= 3.8,
               "identical logits after reload": identical}
    result["targets"] = targets
    for name, ok in targets.items():
        _say(args, f"  [{'ok' if ok else 'MISSED'}] {name}")
    json_path = args.json or str(out_dir / "demo.json")
    if args.json is None:
        _write_json(result, json_path)
        _say(args, f"\nwrote {json_path}")
    return result


# ------------------------------------------------------------------------------------ parser

def _common(p):
    p.add_argument("--data-dir", default=None,
                   help="data directory (default $NEEDLE_DATA_DIR, else <repo>/data)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "cpu_numpy"],
                   help="device (default: cpu when the C++ backend is built, else cpu_numpy)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--eval-images", type=int, default=None,
                   help="evaluate on only the first N held-out images (default: all 2,000)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the results as JSON to PATH ('-': stdout, nothing else printed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _quant_options(p):
    from needle.nn.zoo import DEFAULT_CHECKPOINT
    from needle.quant.config import ACTIVATION_DTYPES, GRANULARITIES, OBSERVERS
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="float MnistCNN checkpoint (default: the shipped one)")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="offline-train images used for calibration (default 512)")
    p.add_argument("--observer", default="minmax", choices=OBSERVERS,
                   help="activation observer")
    p.add_argument("--weight-observer", default="minmax", choices=OBSERVERS)
    p.add_argument("--percentile", type=float, default=None,
                   help="percentile of the percentile observer (default 99.99)")
    p.add_argument("--granularity", default="per_channel", choices=GRANULARITIES,
                   help="weight scales per output channel or per tensor")
    p.add_argument("--weight-bits", type=int, default=8, choices=range(2, 9), metavar="{2..8}")
    p.add_argument("--activation-dtype", default="uint8", choices=ACTIVATION_DTYPES)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m needle.quant",
                                     description="Post-training int8 quantization of needle "
                                                 "models (MnistCNN on the MNIST offline split).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quantize", help="fuse, calibrate and quantize a float checkpoint",
                       description="Fuse BatchNorm, calibrate on offline-train images, quantize "
                                   "to int8 and save the quantized model (safetensors).")
    _quant_options(p)
    _common(p)
    p.add_argument("--out", default=str(DEFAULT_OUT_DIR / "mnist_cnn_int8.safetensors"),
                   help="where to write the quantized model")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="accuracy and images/s of a float or quantized model",
                       description="Evaluate a float checkpoint or a quantized model file on "
                                   "the held-out images (the kind is read from the file).")
    p.add_argument("--model", required=True, help="float checkpoint or quantized model file")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="sizes, accuracy, speed, per-layer SQNR, histograms",
                       description="Compare a quantized model with its float checkpoint.")
    from needle.nn.zoo import DEFAULT_CHECKPOINT
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="float checkpoint")
    p.add_argument("--quantized", default=str(DEFAULT_OUT_DIR / "mnist_cnn_int8.safetensors"),
                   help="quantized model file")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write weight/activation histograms (PNG) to DIR")
    _common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="quantize the shipped MnistCNN end to end (make demo)",
                       description="Load the float checkpoint, fuse, calibrate, quantize, save, "
                                   "reload, evaluate float and int8 on the held-out images and "
                                   "print the table; results go to build/demo.json.")
    _quant_options(p)
    _common(p)
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR),
                   help="where the quantized model and demo.json go (default build/)")
    p.add_argument("--check-images", type=int, default=500,
                   help="held-out images whose logits are compared before/after reload")
    p.add_argument("--model", default="cnn", choices=["cnn", "lm"],
                   help="cnn: the MnistCNN int8 story (default); lm: the character LSTM with "
                        "dynamic int8 and weight-only int4")
    p.add_argument("--lm-checkpoint", default=None,
                   help="LanguageModel checkpoint for --model lm (default: the shipped one)")
    p.add_argument("--test-chars", type=int, default=None,
                   help="--model lm: evaluate only the first N test characters (default all)")
    p.add_argument("--lm-steps", type=int, default=64,
                   help="--model lm: generation steps timed for tokens/s (default 64)")
    p.add_argument("--no-outliers", action="store_true",
                   help="--model lm: skip the outlier / SmoothQuant study")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "eval_images", None) is not None and args.eval_images < 1:
        raise SystemExit("error: --eval-images must be positive")
    result = args.func(args)
    if args.json is not None:
        _write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
