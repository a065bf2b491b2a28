"""Measure a quantized model against its float original.

* sizes:      bytes on disk (a saved file) and in memory (parameters and buffers), with the
              quantized model's breakdown: int8 weights, int32 biases, scales and zero points
* evaluate:   accuracy, logits and images/s over a loader
* logits:     a model's outputs on an array of images, computed a batch at a time
* layer_sqnr: per-layer signal-to-quantization-noise ratio of the activations,
              ``10 log10(sum(x^2) / sum((x - x_q)^2))`` in dB, float (fused) vs dequantized
* plot_histograms: weight and activation histograms (matplotlib, Agg backend) as PNG files
"""
import os
import time

import numpy as np

from ..autograd import Tensor
from .fuse import FusedConv2d, FusedLinear, FusedResidual, fuse_model
from .modules import QTensor, QuantizedAdd, QuantizedConv2d, QuantizedLinear

__all__ = ["memory_bytes", "quantized_breakdown", "evaluate", "logits", "layer_activations",
           "layer_sqnr", "sqnr", "plot_histograms", "file_size"]


def file_size(path):
    return os.path.getsize(path)


def memory_bytes(model):
    """Bytes of every parameter and buffer of ``model`` (per-layer, unpacked)."""
    state = model.unpacked_state_dict() if hasattr(model, "unpacked_state_dict") \
        else model.state_dict()
    return int(sum(np.prod(t.shape) * np.dtype(t.dtype).itemsize for t in state.values()))


def quantized_breakdown(qmodel):
    """Bytes by role in a QuantizedModel: int8 weights, int32 biases, per-channel weight scales,
    activation scales / zero points ("overhead" = everything but the int8 weights)."""
    out = {"weights_int8": 0, "bias_int32": 0, "weight_scales": 0, "activation_qparams": 0}
    for name, t in qmodel.unpacked_state_dict().items():
        nbytes = int(np.prod(t.shape) * np.dtype(t.dtype).itemsize)
        leaf = name.rsplit(".", 1)[-1]
        key = {"weight": "weights_int8", "bias": "bias_int32",
               "weight_scale": "weight_scales"}.get(leaf, "activation_qparams")
        out[key] += nbytes
    out["overhead"] = out["bias_int32"] + out["weight_scales"] + out["activation_qparams"]
    return out


def _batches(loader, device, limit=None):
    seen = 0
    for batch in loader:
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        y = None if y is None else (y.numpy() if hasattr(y, "numpy") else np.asarray(y))
        yield Tensor(np.asarray(x, np.float32), device=device, requires_grad=False), y
        seen += x.shape[0]
        if limit is not None and seen >= limit:
            return


def evaluate(model, loader, device=None, progress=False, desc="evaluate"):
    """Run ``model`` over ``loader`` ((x, y) batches). Returns a dict with ``accuracy``,
    ``images``, ``seconds`` (forward passes only), ``images_per_s`` and ``logits`` (numpy)."""
    from tqdm.auto import tqdm
    logits, labels, seconds = [], [], 0.0
    total = len(loader) if hasattr(loader, "__len__") else None
    for x, y in tqdm(_batches(loader, device), total=total, desc=desc, disable=not progress,
                     leave=False):
        t0 = time.perf_counter()
        out = model(x).numpy()
        seconds += time.perf_counter() - t0
        logits.append(out)
        if y is not None:
            labels.append(y)
    logits = np.concatenate(logits)
    result = {"images": int(logits.shape[0]), "seconds": seconds,
              "images_per_s": logits.shape[0] / seconds if seconds > 0 else float("inf"),
              "logits": logits}
    if labels:
        labels = np.concatenate(labels).astype(np.int64)
        result["accuracy"] = float((logits.argmax(1) == labels).mean())
    return result


def model_device(model):
    """The one device holding ``model``'s parameters and buffers (None when it holds none).
    Raises ValueError when they are spread over several devices."""
    state = getattr(model, "_named_state", None)
    devices = {}
    for name, t, _ in (state() if state else ()):
        devices.setdefault(str(t.device), (t.device, name))
    if len(devices) > 1:
        where = ", ".join(f"{d} ({name})" for d, (_, name) in devices.items())
        raise ValueError(f"the model's tensors are on several devices: {where}; move it to one "
                         f"with model.to(device)")
    return next(iter(devices.values()))[0] if devices else None


def logits(model, x, batch_size=250, device=None):
    """``model``'s outputs on images ``x`` (numpy float [N, ...]) as numpy [N, classes],
    ``batch_size`` images per forward pass, on ``device`` (default: the model's own device,
    see ``model_device``).

    In eval mode each image's output depends on that image only, so this is one pass over all
    N at a fraction of the memory (a convolution's im2col buffer grows with the batch: about
    0.8 MB per 28 x 28 image for the course's CNN, and touching gigabytes of fresh memory costs
    seconds of system time). Integer models give the same bits for any batch size; float ones
    may differ in the last bits when a batch is small enough for the backend to take another
    matmul kernel (one image: a matrix-vector product), never in the argmax of a real margin.
    """
    x = np.asarray(x, np.float32)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if device is None:
        device = model_device(model)
    out = [model(Tensor(x[i:i + batch_size], device=device, requires_grad=False)).numpy()
           for i in range(0, x.shape[0], batch_size)]
    if not out:
        raise ValueError("logits: x holds no images")
    return np.concatenate(out)


def sqnr(x, x_q):
    """10 log10(sum x^2 / sum (x - x_q)^2) in dB (inf when equal)."""
    x = np.asarray(x, np.float64)
    noise = np.sum((x - np.asarray(x_q, np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(x ** 2) / noise))


class _Recorder:
    def __init__(self):
        self.outputs = []

    def observe(self, x):
        self.outputs.append(x.numpy() if hasattr(x, "numpy") else np.asarray(x))


def layer_activations(float_model, qmodel, x):
    """Per-layer activations of the fused float model and the quantized model on input x.

    Returns ``[(name, float activation, dequantized activation)]`` for every Conv / Linear /
    residual add in execution order (quantized images converted back to NCHW).
    """
    fused = fuse_model(float_model)
    rec = _Recorder()
    for _, m in fused.named_modules():
        if isinstance(m, (FusedConv2d, FusedLinear, FusedResidual)):
            m.observer = rec
    fused(x)

    qouts = []
    patched = []
    for name, m in qmodel.named_modules():
        if isinstance(m, (QuantizedConv2d, QuantizedLinear, QuantizedAdd)):
            def forward(*args, _m=m, _name=name):
                out = type(_m).forward(_m, *args)
                qouts.append((_name, out))
                return out
            m.forward = forward
            patched.append(m)
    try:
        qmodel(x)
    finally:
        for m in patched:
            del m.forward
    if len(qouts) != len(rec.outputs):
        raise RuntimeError(f"the float model has {len(rec.outputs)} quantizable layers, the "
                           f"quantized one {len(qouts)}")
    result = []
    for (name, q), f in zip(qouts, rec.outputs):
        d = q.dequantize() if isinstance(q, QTensor) else q
        if d.ndim == 4:
            d = d.transpose(0, 3, 1, 2)
        result.append((name, f, d))
    return result


def layer_sqnr(float_model, qmodel, x):
    """``[{"layer": name, "shape": [...], "sqnr_db": float}]`` for every quantized layer."""
    return [{"layer": name, "shape": list(f.shape), "sqnr_db": sqnr(f, d)}
            for name, f, d in layer_activations(float_model, qmodel, x)]


def plot_histograms(float_model, qmodel, x, out_dir):
    """Write ``weights.png`` (float weights of each fused layer with the quantized values
    overlaid) and ``activations.png`` (float vs dequantized activations per layer) to
    ``out_dir``. Returns the two paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fused = fuse_model(float_model)
    floats = [(n, m) for n, m in fused.named_modules() if isinstance(m, (FusedConv2d,
                                                                          FusedLinear))]
    quants = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, (QuantizedConv2d,
                                                                          QuantizedLinear))]
    paths = []
    cols = 4
    rows = -(-len(floats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    # layers are named as in the quantized model everywhere (weights and activations alike)
    for ax, (_, fm), (name, qm) in zip(axes.flat, floats, quants):
        w = fm.weight.numpy()
        wq = qm.weight.numpy().astype(np.float32)
        s = qm.weight_scale.numpy()
        deq = (wq * s[:, None]).ravel()
        ax.hist(w.ravel(), bins=80, alpha=0.6, label="float")
        ax.hist(deq, bins=80, alpha=0.6, label="int8 (dequantized)")
        ax.set_title(f"{name} weights", fontsize=10)
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
    axes.flat[0].legend(fontsize=9)
    for ax in list(axes.flat)[len(floats):]:
        ax.axis("off")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "weights.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    acts = layer_activations(float_model, qmodel, x)
    rows = -(-len(acts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, f, d) in zip(axes.flat, acts):
        ax.hist(f.ravel(), bins=80, alpha=0.6, label="float")
        ax.hist(d.ravel(), bins=80, alpha=0.6, label="quantized")
        ax.set_title(f"{name} output ({sqnr(f, d):.1f} dB)", fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("activation value")
        ax.set_ylabel("count (log scale)")
    axes.flat[0].legend(fontsize=9)
    for ax in list(axes.flat)[len(acts):]:
        ax.axis("off")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "activations.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths
