"""Training and evaluation loops, and the command that trains the shipped MNIST CNN.

    python -m needle.train --epochs 3 --seed 0 --out checkpoints/mnist_cnn.safetensors

trains ``MnistCNN`` on the offline-train split (MNIST test images 0..7999) with Adam and
reports the accuracy on the offline-heldout split (images 8000..9999). See
datasets/README.md for the split and checkpoints/README.md for the shipped checkpoint.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = ["train_epoch", "train", "evaluate", "cosine_schedule", "main"]


def _progress(iterable, enabled, **kwargs):
    if enabled and tqdm is not None:
        return tqdm(iterable, **kwargs)
    return iterable


def _default_loss():
    from . import nn
    return nn.SoftmaxLoss()


def _batch_stats(logits, y, loss):
    """Number of correct predictions and the summed loss of one batch."""
    pred = np.argmax(logits.numpy(), axis=1)
    labels = y.numpy().astype(np.int64)
    n = labels.shape[0]
    return int((pred == labels).sum()), float(loss.numpy()) * n, n


def train_epoch(model, loader, optimizer, loss_fn=None, progress=True, desc="train"):
    """One pass over ``loader`` in training mode: forward, loss, backward, optimizer step.

    ``loader`` yields ``(x, y)`` Tensors (x: (B, ...) float32, y: (B,) class indices).
    Returns ``(accuracy, mean loss)`` over the samples seen (measured during training).
    """
    loss_fn = loss_fn or _default_loss()
    model.train()
    correct = total = 0
    loss_sum = 0.0
    bar = _progress(loader, progress, desc=desc, leave=False, total=len(loader))
    for x, y in bar:
        optimizer.reset_grad()
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        c, l, n = _batch_stats(logits, y, loss)
        correct += c
        loss_sum += l
        total += n
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
    if total == 0:
        raise ValueError("train_epoch: the loader yielded no batches")
    return correct / total, loss_sum / total


def evaluate(model, loader, loss_fn=None, progress=False):
    """Accuracy and mean loss of ``model`` (in eval mode) over ``loader``.

    Returns ``(accuracy, loss)``: the fraction of samples whose argmax logit equals the label,
    and the sample-weighted mean of ``loss_fn`` (softmax cross-entropy by default). The
    model's train/eval mode is restored afterwards.
    """
    loss_fn = loss_fn or _default_loss()
    was_training = getattr(model, "training", False)
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    try:
        for x, y in _progress(loader, progress, desc="eval", leave=False, total=len(loader)):
            logits = model(x)
            loss = loss_fn(logits, y)
            c, l, n = _batch_stats(logits, y, loss)
            correct += c
            loss_sum += l
            total += n
    finally:
        if was_training:
            model.train()
    if total == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return correct / total, loss_sum / total


def cosine_schedule(lr, epochs):
    """Per-epoch learning rates ``lr * (1 + cos(pi * e / epochs)) / 2`` for e = 0, 1, ...:
    the full rate in the first epoch, decaying towards zero."""
    return lambda epoch: lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def train(model, loader, epochs=1, optimizer=None, lr=1e-3, weight_decay=0.0, loss_fn=None,
          eval_loader=None, progress=True, log=print, lr_schedule=None):
    """Train ``model`` for ``epochs`` passes over ``loader``.

    ``optimizer`` defaults to ``optim.Adam(model.parameters(), lr, weight_decay)``.
    ``lr_schedule(epoch) -> lr`` (epochs count from 1), if given, sets ``optimizer.lr`` at the
    start of every epoch (e.g. ``cosine_schedule(lr, epochs)``). After each
    epoch the training accuracy/loss (and, with ``eval_loader``, the evaluation ones) are
    logged. Returns a list of per-epoch dicts: ``epoch``, ``train_acc``, ``train_loss``,
    ``seconds`` and optionally ``eval_acc``, ``eval_loss``.
    """
    from . import optim
    if optimizer is None:
        optimizer = optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(1, int(epochs) + 1):
        if lr_schedule is not None:
            optimizer.lr = lr_schedule(epoch)
        t0 = time.perf_counter()
        acc, loss = train_epoch(model, loader, optimizer, loss_fn, progress,
                                desc=f"epoch {epoch}/{epochs}")
        record = {"epoch": epoch, "lr": optimizer.lr, "train_acc": acc, "train_loss": loss,
                  "seconds": time.perf_counter() - t0}
        msg = f"epoch {epoch}/{epochs}: train acc {acc:.4f} loss {loss:.4f}"
        if eval_loader is not None:
            record["eval_acc"], record["eval_loss"] = evaluate(model, eval_loader, loss_fn)
            msg += f" | eval acc {record['eval_acc']:.4f} loss {record['eval_loss']:.4f}"
        if log is not None:
            log(msg + f" ({record['seconds']:.1f}s)")
        history.append(record)
    return history


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m needle.train", description=(
        "Train the MnistCNN on the offline-train split (MNIST test images 0..7999) and "
        "evaluate it on the offline-heldout split (images 8000..9999)."))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--cosine", type=int, default=1, choices=[0, 1],
                   help="1: cosine learning-rate decay over the epochs (default); 0: constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", type=int, default=1, metavar="PIXELS",
                   help="random shift of up to PIXELS pixels (RandomCrop padding); 0 disables")
    p.add_argument("--data-dir", default=None, help="data directory (default $NEEDLE_DATA_DIR or <repo>/data)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "cpu_numpy"])
    p.add_argument("--out", default=None, help="write the state dict here (safetensors)")
    p.add_argument("--info", default=None, help="write a JSON record of the run (default: --out with .json)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    import needle as ndl
    from .data import DataLoader, RandomCrop, mnist_offline_split
    from .nn.zoo import MnistCNN

    args = _parse_args(argv)
    device = getattr(ndl, args.device)() if args.device else ndl.default_device()
    if not device.enabled():
        raise SystemExit(f"python -m needle.train: device {args.device!r} is not available here")
    # parameter initialisation draws from numpy's global generator; data order and
    # augmentation have their own generators derived from the same seed
    np.random.seed(args.seed)
    seeds = np.random.SeedSequence(args.seed).spawn(2)
    tforms = [RandomCrop(args.augment, seed=np.random.default_rng(seeds[0]))] if args.augment else None
    train_ds, heldout_ds = mnist_offline_split(args.data_dir, train_transforms=tforms)
    train_loader = DataLoader(train_ds, args.batch_size, shuffle=True,
                              seed=np.random.default_rng(seeds[1]), device=device)
    heldout_loader = DataLoader(heldout_ds, 500, device=device)

    model = MnistCNN(device=device)
    n_params = int(sum(np.prod(p.shape) for p in model.parameters()))
    print(f"MnistCNN: {n_params} parameters on {device}; {len(train_ds)} training images, "
          f"{len(heldout_ds)} held out", flush=True)
    t0 = time.perf_counter()
    schedule = cosine_schedule(args.lr, args.epochs) if args.cosine else None
    history = train(model, train_loader, args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                    progress=not args.no_progress, lr_schedule=schedule)
    train_seconds = time.perf_counter() - t0
    acc, loss = evaluate(model, heldout_loader)
    print(f"held-out accuracy {acc:.4f} (loss {loss:.4f}) after {args.epochs} epochs, "
          f"{train_seconds:.1f}s of training", flush=True)

    info = {
        "model": "needle.nn.zoo.MnistCNN",
        "parameters": n_params,
        "data": "MNIST test set, offline split: trained on images 0..7999, evaluated on 8000..9999",
        "heldout_accuracy": round(acc, 4),
        "heldout_loss": round(loss, 4),
        "heldout_images": len(heldout_ds),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"Adam(lr={args.lr}, weight_decay={args.weight_decay})"
                     + (", cosine decay per epoch" if args.cosine else ""),
        "augmentation": f"RandomCrop(padding={args.augment})" if args.augment else "none",
        "seed": args.seed,
        "device": str(device),
        "train_seconds": round(train_seconds, 1),
        "cpu_count": os.cpu_count(),
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                    for h in history],
        "command": "python -m needle.train " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"model": info["model"], "heldout_accuracy": f"{acc:.4f}",
                    "epochs": str(args.epochs), "seed": str(args.seed)}
        ndl.save(model.state_dict(), out, metadata=metadata)
        info["checkpoint"] = out.name
        info["checkpoint_bytes"] = out.stat().st_size
        from .data import sha256_file
        info["checkpoint_sha256"] = sha256_file(out)
        print(f"wrote {out} ({info['checkpoint_bytes']} bytes)")
    info_path = args.info or (str(Path(args.out).with_suffix(".json")) if args.out else None)
    if info_path:
        Path(info_path).write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {info_path}")
    return info


if __name__ == "__main__":
    main()
