"""python -m needle.quant {quantize, evaluate, report, demo} (needle/quant/__main__.py)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle.data import resolve_data_dir
from needle.quant.__main__ import main

from quant_helpers import mnist_cnn

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("quantize", "evaluate", "report", "demo")


def _have_mnist():
    d = resolve_data_dir() / "mnist"
    return all((d / f"t10k-{k}-ubyte.gz").is_file() for k in ("images-idx3", "labels-idx1"))


needs_mnist = pytest.mark.skipif(not _have_mnist(), reason="MNIST test set not in the data "
                                                           "directory (set NEEDLE_DATA_DIR)")
FAST = ["--calibration-images", "64", "--eval-images", "100", "--batch-size", "50",
        "--no-progress", "--device", "cpu_numpy"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--device" in out


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "needle.quant", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for command in COMMANDS:
        assert command in r.stdout


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="nope.safetensors"):
        main(["evaluate", "--model", str(tmp_path / "nope.safetensors")])


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mnist_cnn.safetensors"
    ndl.save(mnist_cnn(seed=4), path)
    return path


@needs_mnist
def test_quantize_evaluate_report(float_ckpt, tmp_path, capsys):
    qpath = tmp_path / "q.safetensors"
    r = main(["quantize", "--checkpoint", str(float_ckpt), "--out", str(qpath),
              "--weight-bits", "6", "--json", str(tmp_path / "q.json"), *FAST])
    assert qpath.is_file() and r["bytes"] == qpath.stat().st_size
    assert json.loads((tmp_path / "q.json").read_text())["config"]["weight_bits"] == 6

    capsys.readouterr()
    main(["evaluate", "--model", str(qpath), "--json", "-", *FAST[2:]])
    ev = json.loads(capsys.readouterr().out)  # --json - prints nothing but the JSON
    assert ev["kind"] == "int8" and ev["images"] == 100 and 0 <= ev["accuracy"] <= 1
    ev_f = main(["evaluate", "--model", str(float_ckpt), *FAST[2:]])
    assert ev_f["kind"] == "float"

    rep = main(["report", "--checkpoint", str(float_ckpt), "--quantized", str(qpath),
                "--plots", str(tmp_path / "plots"), *FAST[2:]])
    assert rep["int8"]["accuracy"] == ev["accuracy"]
    assert rep["float"]["accuracy"] == ev_f["accuracy"]
    assert len(rep["layers"]) == 8 and all(np.isfinite(l["sqnr_db"]) for l in rep["layers"])
    assert min(l["sqnr_db"] for l in rep["layers"]) > 10
    for p in rep["plots"]:
        assert Path(p).stat().st_size > 1000
    bd = rep["int8"]["breakdown"]
    assert bd["weights_int8"] == 24776  # one byte per MnistCNN conv/linear weight


@needs_mnist
def test_demo_writes_table_and_json(float_ckpt, tmp_path, capsys):
    r = main(["demo", "--checkpoint", str(float_ckpt), "--out-dir", str(tmp_path),
              "--check-images", "50", *FAST])
    out = capsys.readouterr().out
    assert "accuracy (held-out)" in out and "file size" in out and "throughput" in out
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["reload_identical_logits"] is True
    assert data["held_out_images"] == 100 and data["calibration_images"] == 64
    assert data["size_ratio"] == pytest.approx(
        float_ckpt.stat().st_size / (tmp_path / "mnist_cnn_int8.safetensors").stat().st_size)
    assert set(data["targets"]) == {"accuracy within 0.3 points", "file >= 3.8x smaller",
                                    "identical logits after reload"}
