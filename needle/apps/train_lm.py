"""Train the shipped character-level LSTM language model on the offline license corpus.

    python -m needle.apps.train_lm --epochs 6 --threads 1 --out checkpoints/lm_char_lstm.safetensors

The corpus, its fixed split and its checksums are described in needle/data/offline_text.py
and datasets/README.md. The model is ``LanguageModel(embedding, vocabulary, hidden, layers,
'lstm')`` trained with truncated backpropagation through time (``train_ptb``'s epoch
function) and Adam with a per-epoch cosine decay. After every epoch the validation
perplexity is printed; at the end the test perplexity. ``--out`` writes the state dict
(safetensors; the model's configuration in its metadata) and a JSON record of the run
beside it. Reload it with ``needle.apps.models.load_language_model(path)``.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m needle.apps.train_lm", description=(
        "Train a character-level LSTM LanguageModel on the offline license corpus."))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--embedding", type=int, default=32, help="embedding size")
    p.add_argument("--hidden", type=int, default=128, help="LSTM hidden size")
    p.add_argument("--layers", type=int, default=1, help="LSTM layers")
    p.add_argument("--seq-len", type=int, default=64, help="truncated BPTT window")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-3, help="Adam learning rate (cosine decay per epoch)")
    p.add_argument("--clip", type=float, default=1.0, help="largest joint gradient norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP threads of the C++ backend (1 is fastest on a busy machine)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "cpu_numpy"])
    p.add_argument("--max-train-tokens", type=int, default=None,
                   help="train on only the first N training characters (quick checks)")
    p.add_argument("--out", default=None, help="write the state dict here (safetensors)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("epochs", "embedding", "hidden", "layers", "seq_len", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    import needle as ndl
    from needle._atomic import atomic_write
    from needle.data import batchify, license_corpus
    from needle.train import cosine_schedule
    from needle.apps.models import LanguageModel
    from needle.apps.simple_ml import epoch_general_ptb

    args = _parse_args(argv)
    device = getattr(ndl, args.device)() if args.device else ndl.default_device()
    if not device.enabled():
        raise SystemExit(f"python -m needle.apps.train_lm: device {args.device!r} is not available")
    if args.threads is not None and device == ndl.cpu():
        device.mod.set_num_threads(args.threads)
    np.random.seed(args.seed)
    corpus = license_corpus()
    train_ids = corpus.train[:args.max_train_tokens] if args.max_train_tokens else corpus.train
    train_data = batchify(train_ids, args.batch_size)
    eval_bs = 8
    valid_data, test_data = batchify(corpus.valid, eval_bs), batchify(corpus.test, eval_bs)
    vocab = len(corpus.dictionary)
    model = LanguageModel(args.embedding, vocab, args.hidden, args.layers, "lstm", device=device)
    n_params = int(sum(np.prod(p.shape) for p in model.parameters()))
    print(f"LanguageModel(lstm): {n_params} parameters on {device}; vocabulary {vocab}; "
          f"{len(train_ids)} training characters", flush=True)

    opt = ndl.optim.Adam(model.parameters(), lr=args.lr)
    schedule = cosine_schedule(args.lr, args.epochs)
    loss_fn = ndl.nn.SoftmaxLoss()
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        opt.lr = schedule(epoch)
        t_epoch = time.perf_counter()
        acc, loss = epoch_general_ptb(train_data, model, args.seq_len, loss_fn, opt, args.clip,
                                      device, progress=not args.no_progress)
        v_acc, v_loss = epoch_general_ptb(valid_data, model, args.seq_len, loss_fn, None,
                                          device=device)
        history.append({"epoch": epoch, "lr": opt.lr, "train_loss": loss, "train_acc": acc,
                        "valid_loss": v_loss, "valid_ppl": math.exp(v_loss),
                        "seconds": time.perf_counter() - t_epoch})
        print(f"epoch {epoch}/{args.epochs}: train loss {loss:.4f} (ppl {math.exp(loss):.2f}), "
              f"valid loss {v_loss:.4f} (ppl {math.exp(v_loss):.2f})", flush=True)
    train_seconds = time.perf_counter() - t0
    t_acc, t_loss = epoch_general_ptb(test_data, model, args.seq_len, loss_fn, None, device=device)
    v_loss = history[-1]["valid_loss"]
    print(f"test loss {t_loss:.4f} (perplexity {math.exp(t_loss):.3f}, accuracy {t_acc:.4f}); "
          f"{train_seconds:.1f}s of training", flush=True)

    config = {"embedding_size": args.embedding, "output_size": vocab, "hidden_size": args.hidden,
              "num_layers": args.layers, "seq_model": "lstm"}
    info = {
        "model": "needle.apps.models.LanguageModel",
        "config": config,
        "parameters": n_params,
        "data": "offline license corpus, character level (needle.data.offline_text)",
        "vocabulary": "".join(corpus.dictionary.idx2word),
        "valid_loss": round(v_loss, 4), "valid_perplexity": round(math.exp(v_loss), 4),
        "test_loss": round(t_loss, 4), "test_perplexity": round(math.exp(t_loss), 4),
        "test_accuracy": round(t_acc, 4),
        "eval": {"batch_size": eval_bs, "seq_len": args.seq_len},
        "epochs": args.epochs, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "optimizer": f"Adam(lr={args.lr}), cosine decay per epoch, clip {args.clip}",
        "seed": args.seed, "device": str(device), "threads": args.threads,
        "train_seconds": round(train_seconds, 1), "cpu_count": os.cpu_count(),
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                    for h in history],
        "command": "python -m needle.apps.train_lm " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        from needle.data import sha256_file
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        metadata = {k: str(v) for k, v in config.items()}
        metadata.update({"model": info["model"], "test_perplexity": f"{math.exp(t_loss):.4f}",
                         "vocabulary": info["vocabulary"]})
        ndl.save(model.state_dict(), out, metadata=metadata)
        info["checkpoint"] = out.name
        info["checkpoint_bytes"] = out.stat().st_size
        info["checkpoint_sha256"] = sha256_file(out)
        info_path = out.with_suffix(".json")
        with atomic_write(info_path, "w") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        print(f"wrote {out} ({info['checkpoint_bytes']} bytes) and {info_path}")
    return info


if __name__ == "__main__":
    main()
