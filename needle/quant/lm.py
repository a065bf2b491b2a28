"""Quantized inference of the course's LSTM language model (needle.apps.LanguageModel).

    qlm = quantize_lm(model, weights="int4", group=64)      # or weights="int8" (dynamic)
    logits, h = qlm(x, h)                                   # same call as the float model
    save_quantized_lm(qlm, "lm_int4.safetensors"); qlm = load_quantized_lm(path)

``quantize_lm`` is the language-model sibling of ``quantize_model`` (which stays the
calibrated static int8 path of the CNNs): no calibration data is needed, because

* ``weights="int8"``: every matrix (the LSTM's W_ih and W_hh, the output Linear) becomes a
  :class:`~needle.quant.dynamic.DynamicInt8Matrix` (activations quantized per call);
* ``weights="int4"``: every matrix becomes a group-wise :class:`~needle.quant.int4.Int4Weight`
  (float activations, the int4 kernel);
* ``weights="float32"``: the same numpy inference loop on float32 matrices (the baseline for
  speed comparisons).

The embedding table, the biases and the LSTM's elementwise gate math stay float32. Inference
only (no autograd): inputs and outputs are needle Tensors, the work is numpy + kernels. The
LSTM layers run ``needle.quant.recurrent.lstm_layer_inference``, the loop that
``quantize_dynamic``'s ``DynamicQuantizedLSTM`` runs too.
"""
import json

import numpy as np

from .. import serialization
from ..autograd import Tensor
from ..nn.nn_basic import Module
from ..serialization import SerializationError
from .dynamic import DynamicInt8Matrix, FloatMatrix
from .int4 import Int4Weight, int4_file_parts, read_int4_descriptions
from .recurrent import lstm_cell_arrays, lstm_layer_inference

__all__ = ["quantize_lm", "QuantizedLanguageModel", "save_quantized_lm", "load_quantized_lm",
           "LM_WEIGHTS"]

LM_WEIGHTS = ("float32", "int8", "int4")
LM_KEY = "needle.quant.lm"


def _matrix(w_nk, weights, group, scheme, device):
    if weights == "int8":
        return DynamicInt8Matrix.from_float(w_nk, device=device)
    if weights == "int4":
        return Int4Weight.from_float(w_nk, group, scheme, device=device)
    return FloatMatrix(w_nk)


class QuantizedLanguageModel(Module):
    """Embedding -> LSTM layers -> Linear with quantized matrices (see :func:`quantize_lm`).

    forward(x (seq_len, bs) token ids, h=None or (h0, c0) each (num_layers, bs, H))
    -> (logits Tensor (seq_len * bs, vocab), (h_n, c_n) Tensors), like LanguageModel.
    ``matrices``: {"layer{k}.W_ih", "layer{k}.W_hh", "linear"} -> matrix object ([N, K]).
    """

    def __init__(self, embedding, layers, linear, linear_bias, weights, group=None,
                 scheme=None, device=None):
        super().__init__()
        self.embedding_table = np.ascontiguousarray(embedding, np.float32)
        self.layers = layers        # list of (W_ih matrix, W_hh matrix, bias float32 [4H])
        self.linear_matrix = linear
        self.linear_bias = np.ascontiguousarray(linear_bias, np.float32)
        self.weights, self.group, self.scheme = weights, group, scheme
        self.device = device
        self.hidden_size = layers[0][1].k
        self.seq_model_name = "lstm"
        self.training = False

    @property
    def matrices(self):
        out = {}
        for i, (w_ih, w_hh, _) in enumerate(self.layers):
            out[f"layer{i}.W_ih"], out[f"layer{i}.W_hh"] = w_ih, w_hh
        out["linear"] = self.linear_matrix
        return out

    def forward_numpy(self, ids, h=None):
        """ids int (T, bs) -> (logits float32 [T*bs, V], (h, c) float32 [L, bs, H])."""
        ids = np.asarray(ids).astype(np.int64)
        vocab = self.embedding_table.shape[0]
        if ids.ndim != 2:
            raise ValueError(f"expected token ids of shape (seq_len, bs), got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise IndexError(f"token ids must lie in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
        T, bs = ids.shape
        H, L = self.hidden_size, len(self.layers)
        if h is None:
            h0 = np.zeros((L, bs, H), np.float32)
            c0 = np.zeros((L, bs, H), np.float32)
        else:
            h0, c0 = (np.asarray(a.numpy() if hasattr(a, "numpy") else a, np.float32) for a in h)
        X = self.embedding_table[ids]                          # (T, bs, E)
        hs, cs = [], []
        for li, (w_ih, w_hh, bias) in enumerate(self.layers):
            X, hh, cc = lstm_layer_inference(X, h0[li], c0[li], w_ih, w_hh, bias)
            hs.append(hh)
            cs.append(cc)
        logits = self.linear_matrix.matmul(X.reshape(T * bs, H)) + self.linear_bias
        return logits, (np.stack(hs), np.stack(cs))

    def forward(self, x, h=None):
        ids = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        logits, (hn, cn) = self.forward_numpy(ids, h)
        dev = x.device if isinstance(x, Tensor) else self.device
        t = lambda a: Tensor(a, device=dev, requires_grad=False)
        return t(logits), (t(hn), t(cn))

    def weight_bytes(self):
        """Bytes of every array the model needs (matrices, embedding, biases)."""
        return (sum(m.nbytes for m in self.matrices.values()) + self.embedding_table.nbytes +
                self.linear_bias.nbytes + sum(b.nbytes for _, _, b in self.layers))

    def __repr__(self):
        return (f"QuantizedLanguageModel(weights={self.weights!r}, group={self.group}, "
                f"layers={len(self.layers)}, hidden={self.hidden_size})")


def quantize_lm(model, weights="int4", group=64, scheme="symmetric", device=None):
    """A :class:`QuantizedLanguageModel` of an LSTM ``LanguageModel``.

    weights: "int4" (group-wise, ``group`` in 32/64/128 or any multiple of 8, ``scheme``
    "symmetric" | "asymmetric"), "int8" (dynamic) or "float32". device: where the kernels run
    (default: the default device).
    """
    if weights not in LM_WEIGHTS:
        raise ValueError(f"weights must be one of {LM_WEIGHTS}, got {weights!r}")
    if getattr(model, "seq_model_name", None) != "lstm":
        raise ValueError("quantize_lm handles LSTM LanguageModels (seq_model='lstm')")
    layers = []
    for cell in model.seq_model.lstm_cells:
        w_ih, w_hh, bias = lstm_cell_arrays(cell)              # (4H, in), (4H, H), (4H,)
        layers.append((_matrix(w_ih, weights, group, scheme, device),
                       _matrix(w_hh, weights, group, scheme, device), bias))
    lin = _matrix(model.linear.weight.numpy().T, weights, group, scheme, device)
    lb = model.linear.bias.numpy().reshape(-1) if model.linear.bias is not None else \
        np.zeros(lin.n, np.float32)
    return QuantizedLanguageModel(model.embedding.weight.numpy(), layers, lin, lb, weights,
                                  group if weights == "int4" else None,
                                  scheme if weights == "int4" else None, device)


# ---- files --------------------------------------------------------------------------------
def save_quantized_lm(qlm, path):
    """Write an int4 or int8 :class:`QuantizedLanguageModel` to a needle safetensors file.
    int4 matrices use the int4 format (``needle.quant.int4``); int8 ones ``name.w_q`` int8
    and ``name.scale`` float32."""
    tensors = {"embedding": qlm.embedding_table, "linear.bias": qlm.linear_bias}
    for i, (_, _, b) in enumerate(qlm.layers):
        tensors[f"layer{i}.bias"] = b
    meta = {}
    if qlm.weights == "int4":
        parts, meta = int4_file_parts(qlm.matrices)
        tensors.update(parts)
    elif qlm.weights == "int8":
        for name, m in qlm.matrices.items():
            tensors[f"{name}.w_q"], tensors[f"{name}.scale"] = m.w_q, m.scale
    else:
        for name, m in qlm.matrices.items():
            tensors[f"{name}.w"] = m.w
    meta[LM_KEY] = json.dumps({"weights": qlm.weights, "layers": len(qlm.layers)})
    serialization.save(tensors, path, metadata=meta)


def _expect(path, entries, key, dtype, shape):
    if key not in entries:
        raise SerializationError(f"{path}: the file has no tensor {key!r}")
    got = (entries[key][0].name, tuple(entries[key][1]))
    if got != (dtype, tuple(shape)):
        raise SerializationError(f"{path}: tensor {key!r} is {got[0]} {got[1]}, expected "
                                 f"{dtype} {tuple(shape)}")


def load_quantized_lm(path, device=None):
    """Rebuild a model written by :func:`save_quantized_lm`; every tensor's dtype and shape is
    checked against the description (and the others) before anything is read."""
    entries, meta = serialization.read_header(path)
    try:
        d = json.loads(meta[LM_KEY])
        weights, n_layers = d["weights"], d["layers"]
    except (KeyError, ValueError, TypeError) as e:
        raise SerializationError(f"{path}: not a quantized language model "
                                 f"({LM_KEY!r} metadata missing or corrupt: {e!s:.100})") from None
    if weights not in LM_WEIGHTS or type(n_layers) is not int or not 1 <= n_layers <= 64:
        raise SerializationError(f"{path}: bad {LM_KEY!r} metadata {d!r:.200}")
    if "embedding" not in entries or len(entries["embedding"][1]) != 2:
        raise SerializationError(f"{path}: the file has no 2-D 'embedding' tensor")
    vocab, emb = entries["embedding"][1]
    names = [f"layer{i}.{w}" for i in range(n_layers) for w in ("W_ih", "W_hh")] + ["linear"]
    if weights == "int4":
        desc = read_int4_descriptions(path, entries, meta)
        if sorted(desc) != sorted(names):
            raise SerializationError(f"{path}: int4 weights {sorted(desc)} != {sorted(names)}")
        shapes = {n: tuple(desc[n]["shape"]) for n in names}
    else:
        suffix = "w_q" if weights == "int8" else "w"
        shapes = {}
        for n in names:
            if f"{n}.{suffix}" not in entries or len(entries[f"{n}.{suffix}"][1]) != 2:
                raise SerializationError(f"{path}: the file has no 2-D tensor '{n}.{suffix}'")
            shapes[n] = tuple(entries[f"{n}.{suffix}"][1])
    H = shapes["layer0.W_hh"][1]
    for i in range(n_layers):
        want_in = emb if i == 0 else H
        if shapes[f"layer{i}.W_ih"] != (4 * H, want_in) or shapes[f"layer{i}.W_hh"] != (4 * H, H):
            raise SerializationError(f"{path}: layer {i} matrices {shapes[f'layer{i}.W_ih']}, "
                                     f"{shapes[f'layer{i}.W_hh']} do not fit hidden size {H}")
        _expect(path, entries, f"layer{i}.bias", "float32", (4 * H,))
    if shapes["linear"] != (vocab, H):
        raise SerializationError(f"{path}: linear is {shapes['linear']}, expected {(vocab, H)}")
    _expect(path, entries, "linear.bias", "float32", (vocab,))
    _expect(path, entries, "embedding", "float32", (vocab, emb))
    if weights == "int8":
        for n in names:
            _expect(path, entries, f"{n}.w_q", "int8", shapes[n])
            _expect(path, entries, f"{n}.scale", "float32", (shapes[n][0],))
    elif weights == "float32":
        for n in names:
            _expect(path, entries, f"{n}.w", "float32", shapes[n])
    arrays, _ = serialization.load_numpy(path)

    def matrix(n):
        if weights == "int4":
            return Int4Weight.from_tensors(n, desc[n], arrays, device, str(path))
        if weights == "int8":
            s = arrays[f"{n}.scale"]
            if not np.all(np.isfinite(s)) or np.any(s <= 0):
                raise SerializationError(f"{path}: {n}.scale must be finite and > 0")
            return DynamicInt8Matrix(arrays[f"{n}.w_q"], s, device)
        return FloatMatrix(arrays[f"{n}.w"])

    layers = [(matrix(f"layer{i}.W_ih"), matrix(f"layer{i}.W_hh"), arrays[f"layer{i}.bias"])
              for i in range(n_layers)]
    group = desc["linear"]["group"] if weights == "int4" else None
    scheme = desc["linear"]["scheme"] if weights == "int4" else None
    return QuantizedLanguageModel(arrays["embedding"], layers, matrix("linear"),
                                  arrays["linear.bias"], weights, group, scheme, device)


# ---- the demo (python -m needle.quant demo --model lm) -------------------------------------
#: the variants the demo compares: (label, weights, group)
DEMO_VARIANTS = (("float32", None, None), ("int8-dynamic", "int8", None),
                 ("int4-g128", "int4", 128), ("int4-g64", "int4", 64), ("int4-g32", "int4", 32))


def _blas_single_thread():
    """A context capping numpy's BLAS at one thread (its threads only add overhead on these
    small matrices); a no-op without threadpoolctl."""
    import contextlib
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


def perplexity(model, ids, batch_size=8, seq_len=64, device=None):
    """exp(mean cross-entropy) of next-character prediction over ``ids`` (a list of token
    ids), batchified like the checkpoint's evaluation (columns of ``batch_size``, windows of
    ``seq_len``, state carried), for a LanguageModel or a QuantizedLanguageModel."""
    import math
    from ..apps.simple_ml import epoch_general_ptb
    from ..data import batchify
    from ..nn import SoftmaxLoss
    data = batchify(ids, batch_size)
    _, loss = epoch_general_ptb(data, model, seq_len, SoftmaxLoss(), None, device=device)
    return math.exp(loss)


def tokens_per_second(model, batch, steps, device=None, seed=0):
    """Generation speed: ``steps`` single-token forward calls on ``batch`` streams with the
    state carried (what sampling does). Returns tokens/s = steps * batch / seconds."""
    import time
    rng = np.random.default_rng(seed)
    vocab = model.linear_bias.shape[0] if isinstance(model, QuantizedLanguageModel) else \
        model.output_size
    xs = [Tensor(rng.integers(0, vocab, (1, batch)).astype(np.float32), device=device,
                 requires_grad=False) for _ in range(steps + 1)]
    h = model(xs[0])[1]
    t0 = time.perf_counter()
    for x in xs[1:]:
        h = model(x, h)[1]
    return steps * batch / (time.perf_counter() - t0)


def lm_demo(checkpoint=None, device=None, out_dir="build", test_chars=None, steps=64,
            outliers=True, say=print):
    """Float vs dynamic int8 vs int4 (g128, g64, g32) on the shipped character LSTM: test
    perplexity (the fixed offline split), file bytes (each variant saved and reloaded), and
    tokens/s at batch 1 and 32; with ``outliers`` also the outlier study of
    ``needle.quant.smooth`` (calibrated on the first 4,000 validation characters). Returns the
    result dict."""
    import os
    from pathlib import Path
    from ..apps.models import DEFAULT_LM_CHECKPOINT, load_language_model
    from ..backend_ndarray import default_device
    from ..data import license_corpus
    device = default_device() if device is None else device
    checkpoint = Path(checkpoint or DEFAULT_LM_CHECKPOINT)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_language_model(checkpoint, device=device)
    test = license_corpus().test
    test = test[:test_chars] if test_chars else test
    rows = {}
    with _blas_single_thread():
        for label, weights, group in DEMO_VARIANTS:
            say(f"  {label}: quantize, save, reload, evaluate {len(test)} test characters")
            if weights is None:
                m, path = model, checkpoint
            else:
                q = quantize_lm(model, weights, group=group or 64, device=device)
                path = out_dir / f"lm_char_lstm_{label}.safetensors"
                save_quantized_lm(q, path)
                m = load_quantized_lm(path, device=device)
            rows[label] = {"perplexity": perplexity(m, test, device=device),
                           "file_bytes": os.path.getsize(path),
                           "tokens_per_s_b1": tokens_per_second(m, 1, steps, device),
                           "tokens_per_s_b32": tokens_per_second(m, 32, steps, device),
                           "path": str(path)}
    f = rows["float32"]
    for r in rows.values():
        r["perplexity_rel_change"] = r["perplexity"] / f["perplexity"] - 1.0
        r["size_ratio"] = f["file_bytes"] / r["file_bytes"]
    goals = {"dynamic int8 within 1% of float perplexity":
             abs(rows["int8-dynamic"]["perplexity_rel_change"]) <= 0.01,
             "int4-g64 within 5% of float perplexity":
             abs(rows["int4-g64"]["perplexity_rel_change"]) <= 0.05,
             "int4 file >= 3.5x smaller": min(rows[k]["size_ratio"] for k in
                                              ("int4-g128", "int4-g64", "int4-g32")) >= 3.5}
    result = {"variants": rows, "test_characters": len(test), "device": device.name,
              "checkpoint": str(checkpoint), "steps": steps, "goals": goals}
    if outliers:
        from .smooth import outlier_study
        say("  outliers: per-channel activation ranges, per-tensor W8A8, SmoothQuant")
        calib = license_corpus().valid[:4000]
        with _blas_single_thread():
            result["outliers"] = outlier_study(model, calib, test, device=device, say=say)
    return result


def lm_table(result):
    """The demo's markdown table."""
    lines = ["| variant | test perplexity | vs float | file bytes | smaller | tokens/s b=1 | "
             "tokens/s b=32 |", "|---|---|---|---|---|---|---|"]
    for label, r in result["variants"].items():
        lines.append(f"| {label} | {r['perplexity']:.4f} | {100 * r['perplexity_rel_change']:+.2f}% "
                     f"| {r['file_bytes']} | {r['size_ratio']:.2f}x | {r['tokens_per_s_b1']:.0f} "
                     f"| {r['tokens_per_s_b32']:.0f} |")
    if "outliers" in result:
        o = result["outliers"]
        lines += ["", "activation range per input channel, max |x| (max / median over channels):"]
        lines += [f"  {n}: {r['max']:.3f} ({r['max_over_median']:.2f}x over {r['channels']} "
                  f"channels)" for n, r in o["ranges"].items()]
        lines += ["", f"| model | float | per-tensor W8A8 | W8A8 + SmoothQuant "
                      f"(alpha {o['alpha']}) | embedding max/median |", "|---|---|---|---|---|"]
        for label, p in o["perplexity"].items():
            lines.append(f"| {label} | {p['float']:.4f} | {p['w8a8_per_tensor']:.4f} | "
                         f"{p['w8a8_smoothquant']:.4f} | {p['embedding_max_over_median']:.1f}x |")
    return "\n".join(lines)
