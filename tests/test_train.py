"""needle.train: a short training run lowers the loss, evaluate() matches numpy, the CLI
writes a checkpoint and its record, and the shipped checkpoint meets its accuracy."""
import gzip
import hashlib
import json

import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.data import DataLoader, NDArrayDataset
from needle.data import mnist as mnist_mod
from needle.nn.zoo import DEFAULT_CHECKPOINT, MnistCNN
from needle.train import evaluate, main, train


def _softmax_ce(logits, labels):
    logits = logits.astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    logz = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    return logz - logits[np.arange(len(labels)), labels]


def _linear_model(w, b):
    model = nn.Sequential(nn.Flatten(), nn.Linear(w.shape[0], w.shape[1]))
    lin = model.modules[1]
    lin.weight.data = ndl.Tensor(w.astype(np.float32))
    lin.bias.data = ndl.Tensor(b.astype(np.float32).reshape(lin.bias.shape))
    return model


def test_evaluate_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 1, 2, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=11)
    w = rng.standard_normal((6, 4))
    b = rng.standard_normal(4)
    model = _linear_model(w, b)
    model.train()
    loader = DataLoader(NDArrayDataset(x, y), batch_size=4)  # batches 4, 4, 3
    acc, loss = evaluate(model, loader)
    logits = x.reshape(11, 6).astype(np.float64) @ w + b
    assert acc == pytest.approx(np.mean(np.argmax(logits, axis=1) == y), abs=1e-12)
    assert 0 < acc < 1  # a non-trivial case
    assert loss == pytest.approx(_softmax_ce(logits, y).mean(), rel=1e-5)
    assert model.training  # mode restored


def test_short_training_run_lowers_the_loss():
    # 64 synthetic "digits": each class is a fixed random pattern plus noise
    rng = np.random.default_rng(1)
    protos = rng.random((10, 1, 28, 28)).astype(np.float32)
    y = np.arange(64) % 10
    x = np.clip(protos[y] + 0.3 * rng.standard_normal((64, 1, 28, 28)), 0, 1).astype(np.float32)
    np.random.seed(1)
    model = MnistCNN()
    loader = DataLoader(NDArrayDataset(x, y), batch_size=16, shuffle=True, seed=0)
    before = evaluate(model, loader)[1]
    history = train(model, loader, epochs=2, lr=5e-3, progress=False, log=None)
    after = evaluate(model, loader)[1]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert after < 0.7 * before


def test_training_is_reproducible_from_seeds():
    from needle.data import RandomCrop

    def run():
        np.random.seed(4)
        model = MnistCNN()
        x = np.random.default_rng(4).random((48, 1, 28, 28)).astype(np.float32)
        ds = NDArrayDataset(x, np.arange(48) % 10, transforms=[RandomCrop(1, seed=5)])
        train(model, DataLoader(ds, 16, shuffle=True, seed=6), 1, progress=False, log=None)
        return np.concatenate([p.numpy().ravel() for p in model.parameters()])

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)


def test_lr_schedule_sets_the_optimizer_rate():
    from needle.train import cosine_schedule
    sched = cosine_schedule(0.01, 4)
    np.testing.assert_allclose([sched(e) for e in (1, 2, 3, 4)],
                               [0.01 * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(4)])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    model = _linear_model(rng.standard_normal((3, 2)), np.zeros(2))
    opt = ndl.optim.Adam(model.parameters(), lr=1.0)
    loader = DataLoader(NDArrayDataset(x, np.arange(8) % 2), batch_size=8)
    history = train(model, loader, epochs=3, optimizer=opt, progress=False, log=None,
                    lr_schedule=lambda e: 0.1 / e)
    assert [h["lr"] for h in history] == [0.1, 0.05, 0.1 / 3]
    assert opt.lr == 0.1 / 3


def _fake_offline_data(root, n):
    rng = np.random.default_rng(5)
    protos = (rng.random((10, 28, 28)) * 255).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = protos[labels]

    def idx(arr):
        header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
        return gzip.compress(header + arr.tobytes())

    (root / "mnist").mkdir(parents=True)
    files = {"t10k-images-idx3-ubyte.gz": idx(images), "t10k-labels-idx1-ubyte.gz": idx(labels)}
    for name, blob in files.items():
        (root / "mnist" / name).write_bytes(blob)
    return {k: (hashlib.sha256(v).hexdigest(), ()) for k, v in files.items()}


def _save_works(tmp_path):
    try:
        ndl.save({"w": ndl.Tensor(np.zeros(2, np.float32))}, tmp_path / "probe.safetensors")
    except NotImplementedError:
        return False
    return True


def test_cli_trains_and_writes_checkpoint(tmp_path, monkeypatch):
    if not _save_works(tmp_path):
        pytest.skip("needle.save is not available")
    checksums = _fake_offline_data(tmp_path / "data", 96)
    monkeypatch.setattr(mnist_mod, "MNIST_FILES", checksums)
    monkeypatch.setattr(mnist_mod, "_SPLITS", {"offline-train": ("t10k", (0, 64)),
                                               "offline-heldout": ("t10k", (64, 96))})
    out = tmp_path / "ckpt" / "m.safetensors"
    info = main(["--epochs", "1", "--batch-size", "16", "--lr", "5e-3", "--seed", "3",
                 "--data-dir", str(tmp_path / "data"), "--out", str(out), "--no-progress"])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record == json.loads(json.dumps(info))
    assert record["epochs"] == 1 and record["seed"] == 3 and record["heldout_images"] == 32
    assert record["checkpoint_bytes"] == out.stat().st_size
    # the saved weights reproduce the recorded held-out accuracy
    model = MnistCNN()
    model.load_state_dict(ndl.load(out))
    heldout = ndl.data.MNISTDataset("offline-heldout", data_dir=tmp_path / "data")
    acc, _ = evaluate(model, DataLoader(heldout, batch_size=32))
    assert acc == pytest.approx(record["heldout_accuracy"], abs=1e-4)


def _have_offline_mnist():
    d = ndl.data.resolve_data_dir() / "mnist"
    return (d / "t10k-images-idx3-ubyte.gz").is_file() and (d / "t10k-labels-idx1-ubyte.gz").is_file()


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no shipped checkpoint")
@pytest.mark.skipif(not _have_offline_mnist(), reason="MNIST test set not in the data directory")
def test_shipped_checkpoint_heldout_accuracy():
    from needle.nn.zoo import pretrained_mnist_cnn
    record = json.loads(DEFAULT_CHECKPOINT.with_suffix(".json").read_text())
    model = pretrained_mnist_cnn()
    heldout = ndl.data.MNISTDataset("offline-heldout")
    acc, _ = evaluate(model, DataLoader(heldout, batch_size=500))
    assert acc >= 0.97
    assert acc == pytest.approx(record["heldout_accuracy"], abs=1e-3)
