"""Quantization-aware training (QAT): fine-tune a float model through fake quantization.

    qat = prepare_qat(model, QConfig(weight_bits=4, activation_bits=4,
                                     activation_observer="moving_average"))
    fine_tune(qat, x_train, y_train, steps=200)      # or any needle training loop
    qmodel = convert(qat)                            # the same integer modules as PTQ

``prepare_qat`` copies the model and rewrites every ``Conv [-> BatchNorm2d] [-> ReLU]`` into a
:class:`QATConv2d`, every ``Linear [-> ReLU]`` into a :class:`QATLinear` and every
``Residual [-> ReLU]`` into a :class:`QATResidual` (the runs ``fuse_model`` folds). Each of
them computes in float32 but sees exactly the numbers the integer model will see:

* weights are fake-quantized (``reference.fake_quantize``) per output channel with the
  config's weight observer, recomputed from the current weights at every step;
* BatchNorm is folded into the weight *before* the weight is fake-quantized, with the running
  variance, and in training the output is rescaled so that BatchNorm still normalizes with the
  batch statistics (Krishnamoorthi 2018, section 3.2; Jacob et al. 2018, section 3.2);
* every activation that the integer model stores (the input, each layer's output, each
  residual sum) passes a :class:`FakeQuant`, whose observer keeps updating in training mode.

The backward pass goes through :class:`FakeQuantize`, the straight-through estimator: the
gradient passes unchanged where the value lies inside the quantization range and is 0 where
it was clipped. ``convert`` folds BatchNorm with the running statistics and builds the
integer model with ``needle.quant.convert``, using the ranges the observers ended with.
"""
import json

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp
from .. import ops
from ..nn import nn_basic as nnb
from ..nn.nn_basic import Module
from . import reference as R
from .config import QConfig
from .fuse import FusedConv2d, FusedLinear, FusedResidual, FuseRules, _fuse, clone_module, fold_bn
from .observers import MinMaxObserver

__all__ = ["FakeQuantize", "fake_quantize", "FakeQuant", "QATConv2d", "QATLinear",
           "QATResidual", "QATModel", "conv_bn_qat", "prepare_qat", "fine_tune", "save_qat",
           "load_qat"]

RANGES_KEY = "needle.quant.qat.ranges"
CONFIG_KEY = "needle.quant.config"


# ------------------------------------------------------------------- the fake-quantize op

class FakeQuantize(TensorOp):
    """``dequantize(quantize(x))`` forward, straight-through estimator backward.

    scale, zero_point: scalars, or 1-D arrays (float32 / int32) along ``axis`` of x.
    dtype, bits, reduced_range: the integer range ``[qmin, qmax]`` (``reference.qrange``).

    forward   out = (clamp(rint(x / s) + zp, qmin, qmax) - zp) * s      (float32, x's shape)
              = ``reference.fake_quantize``, per channel along ``axis``: the float32
              division and round half to even of ``reference.quantize``, NaN to the zero
              point (so out = 0), +-inf clipped to the range ends.
    backward  grad_x = out_grad * mask,  mask = 1 where qmin <= rint(x / s) + zp <= qmax
              (the same float32 division and rounding as ``reference.quantize``), 0 where x
              was clipped and where x is NaN. scale and zero point are constants (observers
              set them), so x is the only input.
    """

    def __init__(self, scale, zero_point, dtype="uint8", axis=None, bits=None,
                 reduced_range=False):
        self.scale = np.asarray(scale, np.float32)
        self.zero_point = np.asarray(zero_point, np.int32)
        self.dtype, self.axis = dtype, axis
        self.bits, self.reduced_range = bits, reduced_range
        self.qmin, self.qmax = R.qrange(dtype, bits, reduced_range)

    def compute(self, a):
        # The forward is notebook 3's quantize then dequantize (given code, not an exercise):
        # the values the integer model computes with, in float32.
        x = a.numpy()
        out = R.fake_quantize(x, self.scale, self.zero_point, self.dtype, self.axis, self.bits,
                              self.reduced_range).astype(np.float32, copy=False)
        return NDArray(out, device=a.device)

    def gradient(self, out_grad, node):
        x = node.inputs[0].realize_cached_data().numpy()
        ### BEGIN SOLUTION
        # unclamped codes: quantize into int32, whose range holds every code of interest
        codes = R.quantize(x, self.scale, self.zero_point, "int32", axis=self.axis)
        mask = (codes >= self.qmin) & (codes <= self.qmax) & ~np.isnan(x)
        return out_grad * Tensor(mask.astype(np.float32), device=out_grad.device,
                                 requires_grad=False)
        ### END SOLUTION


def fake_quantize(x, scale, zero_point, dtype="uint8", axis=None, bits=None,
                  reduced_range=False):
    """Apply :class:`FakeQuantize` to the Tensor ``x``."""
    return FakeQuantize(scale, zero_point, dtype, axis, bits, reduced_range)(x)


def _weight_fake_quant(w, config, axis):
    """Fake-quantize a float weight Tensor (output channels along ``axis``) with qparams from
    a fresh weight observer of ``config``: the same codes ``quantize_weight`` will store."""
    obs = config.make_weight_observer(axis)
    obs.observe(w.detach().numpy())
    scale, zp = obs.qparams()
    return fake_quantize(w, scale, zp, "int8", obs.axis, config.weight_bits, reduced_range=True)


# ------------------------------------------------------------ activations and their ranges

class FakeQuant(Module):
    """Fake-quantizes an activation with the range its observer has seen.

    In training mode (and unless ``observing`` is False) every batch first updates the
    observer; the range in use is then ``observer.range()``, kept in ``lo`` / ``hi`` so that
    evaluation, freezing and saving use the last one. Per tensor, affine, in the config's
    activation dtype and bits.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.observer = config.make_activation_observer()
        self.observing = True
        self.lo = self.hi = None

    def set_range(self, lo, hi):
        self.lo, self.hi = float(lo), float(hi)

    def qparams(self):
        if self.lo is None:
            raise RuntimeError("FakeQuant has observed no data: run the QAT model in training "
                               "mode (or load_qat) before evaluating or converting it")
        return R.choose_qparams(self.lo, self.hi, "affine", self.config.activation_dtype,
                                self.config.activation_bits)

    def forward(self, x):
        if self.training and self.observing:
            self.observer.observe(x.detach().numpy())
            self.set_range(*self.observer.range())
        scale, zp = self.qparams()
        return fake_quantize(x, scale, zp, self.config.activation_dtype,
                             bits=self.config.activation_bits)


# ---------------------------------------------------------- BatchNorm folding in training

def conv_bn_qat(x, conv, bn, quantize_weight, training):
    """One Conv -> BatchNorm2d with BatchNorm folded into the weight before quantization.

    x: float32 Tensor (N, H, W, C_in) (NHWC); conv: ``nn.Conv`` (weight (K, K, C_in, C_out),
    bias (C_out,) or None, stride, padding); bn: ``nn.BatchNorm2d(C_out)`` (weight gamma, bias
    beta, running_mean, running_var, eps, momentum); quantize_weight: Tensor -> Tensor, the
    fake quantization of a folded weight (K, K, C_in, C_out); training: bool.
    Returns the pre-ReLU output, float32 Tensor (N, Ho, Wo, C_out) (NHWC).

        sf    = gamma / sqrt(running_var + eps)                               (C_out,)
        y     = conv(x, quantize_weight(weight * sf))       (sf along the last axis)
        eval:     out = y + beta + (b - running_mean) * sf  (b = conv bias, 0 if None)
        training: z = y / sf + b;  mean_B, var_B = mean and biased variance of z over N, H, W
                  out = gamma * (z - mean_B) / sqrt(var_B + eps) + beta
                  running_mean <- (1 - momentum) running_mean + momentum mean_B (var: var_B),
                  as detached Tensors

    In eval mode this is exactly the folded layer the integer model runs; in training the
    weight is quantized on the same grid while the output is still normalized with the batch
    statistics, as BatchNorm training needs. Gradients reach x, weight, bias, gamma and beta.
    """
    w, cout = conv.weight, conv.out_channels
    shape4 = (1, 1, 1, cout)
    ### BEGIN SOLUTION
    sf = bn.weight / ops.power_scalar(bn.running_var + bn.eps, 0.5)
    w_fold = w * ops.broadcast_to(ops.reshape(sf, shape4), w.shape)
    y = ops.conv(x, quantize_weight(w_fold), stride=conv.stride, padding=conv.padding)
    sf4 = ops.broadcast_to(ops.reshape(sf, shape4), y.shape)
    if not training:
        b_fold = bn.bias - bn.running_mean * sf
        if conv.bias is not None:
            b_fold = b_fold + conv.bias * sf
        return y + ops.broadcast_to(ops.reshape(b_fold, shape4), y.shape)
    z = y / sf4
    if conv.bias is not None:
        z = z + ops.broadcast_to(ops.reshape(conv.bias, shape4), y.shape)
    n = y.shape[0] * y.shape[1] * y.shape[2]
    mean = ops.summation(z, (0, 1, 2)) / n
    centered = z - ops.broadcast_to(ops.reshape(mean, shape4), y.shape)
    var = ops.summation(centered * centered, (0, 1, 2)) / n
    m = bn.momentum
    bn.running_mean = ((1 - m) * bn.running_mean + m * mean.detach()).detach()
    bn.running_var = ((1 - m) * bn.running_var + m * var.detach()).detach()
    scale = bn.weight / ops.power_scalar(var + bn.eps, 0.5)
    out = centered * ops.broadcast_to(ops.reshape(scale, shape4), y.shape)
    return out + ops.broadcast_to(ops.reshape(bn.bias, shape4), y.shape)
    ### END SOLUTION


def _folded_conv(conv, bn):
    """(w', b') float32 numpy of ``conv`` with ``bn``'s running statistics folded in."""
    b = None if conv.bias is None else conv.bias.numpy()
    if bn is not None:
        return fold_bn(conv.weight.numpy(), b, bn)
    b = np.zeros(conv.out_channels, np.float32) if b is None else b
    return conv.weight.numpy(), b


# --------------------------------------------------------------------------- QAT modules

class _QATLayer(Module):
    """Shared parts: the output FakeQuant (None for the model's last layer, whose int32
    accumulators are dequantized directly) and the ReLU."""

    def _finish(self, out):
        if self.relu:
            out = ops.relu(out)
        return out if self.act is None else self.act(out)


class QATConv2d(_QATLayer):
    """Conv [-> BatchNorm2d] [-> ReLU] for QAT, on NCHW inputs; ``freeze_bn`` switches the
    BatchNorm to its running statistics (and stops updating them) also in training."""

    def __init__(self, conv, bn, relu, config):
        super().__init__()
        self.conv, self.bn, self.relu, self.config = conv, bn, bool(relu), config
        self.act = FakeQuant(config)
        self.bn_frozen = False

    def forward(self, x):
        x = ops.permute(x, (0, 2, 3, 1))
        fq = lambda w: _weight_fake_quant(w, self.config, axis=3)  # noqa: E731
        conv = self.conv
        if self.bn is not None:
            out = conv_bn_qat(x, conv, self.bn, fq, self.training and not self.bn_frozen)
        else:
            out = ops.conv(x, fq(conv.weight), stride=conv.stride, padding=conv.padding)
            if conv.bias is not None:
                bias = ops.reshape(conv.bias, (1, 1, 1, conv.out_channels))
                out = out + ops.broadcast_to(bias, out.shape)
        return self._finish(ops.permute(out, (0, 3, 1, 2)))

    def fused(self):
        w, b = _folded_conv(self.conv, self.bn)
        dev = self.conv.weight.device
        return FusedConv2d(Tensor(w, device=dev), Tensor(b, device=dev), self.conv.stride,
                           self.conv.padding, self.relu)

    def __repr__(self):
        return (f"QATConv2d({self.conv.in_channels}, {self.conv.out_channels}, "
                f"k={self.conv.kernel_size}, bn={self.bn is not None}, relu={self.relu})")


class QATLinear(_QATLayer):
    """Linear [-> ReLU] for QAT: (N, in) -> (N, out), weights fake-quantized per column."""

    def __init__(self, linear, relu, config):
        super().__init__()
        self.linear, self.relu, self.config = linear, bool(relu), config
        self.act = FakeQuant(config)

    def forward(self, x):
        lin = self.linear
        out = x @ _weight_fake_quant(lin.weight, self.config, axis=1)
        if lin.bias is not None:
            out = out + ops.broadcast_to(ops.reshape(lin.bias, (1, lin.out_features)),
                                         out.shape)
        return self._finish(out)

    def fused(self):
        lin = self.linear
        w = lin.weight.numpy()
        b = (np.zeros(w.shape[1], np.float32) if lin.bias is None
             else lin.bias.numpy().reshape(-1))
        dev = lin.weight.device
        return FusedLinear(Tensor(w, device=dev), Tensor(b.reshape(1, -1), device=dev),
                           self.relu)

    def __repr__(self):
        return f"QATLinear({self.linear.in_features}, {self.linear.out_features}, relu={self.relu})"


class QATResidual(_QATLayer):
    """``fn(x) + x`` [-> ReLU], the sum fake-quantized like the integer add's output."""

    def __init__(self, fn, relu, config):
        super().__init__()
        self.fn, self.relu = fn, bool(relu)
        self.act = FakeQuant(config)

    def forward(self, x):
        return self._finish(self.fn(x) + x)


class _QATRules(FuseRules):
    """``fuse_model``'s walk, building QAT modules instead of folded ones."""

    leaves = (QATConv2d, QATLinear)

    def __init__(self, config):
        self.config = config

    def conv(self, conv, bn, relu):
        return QATConv2d(conv, bn, relu, self.config)

    def linear(self, linear, bn, relu):
        if bn is not None:
            raise NotImplementedError("prepare_qat: Linear -> BatchNorm1d is not supported; "
                                      "fold it first or drop the BatchNorm1d")
        return QATLinear(linear, relu, self.config)

    def residual(self, fn, relu):
        return QATResidual(fn, relu, self.config)


# ------------------------------------------------------------------------ the QAT model

class QATModel(Module):
    """The QAT copy of a float model: ``input_act`` (FakeQuant of the input) -> ``model``
    (the copy with its Conv / BatchNorm / Linear / Residual runs replaced by QAT modules)."""

    def __init__(self, model, config):
        super().__init__()
        self.model, self.config = model, config
        self.input_act = FakeQuant(config)

    def forward(self, x):
        return self.model(self.input_act(x))

    def fake_quants(self):
        """(name, FakeQuant) of every activation range, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, FakeQuant)]

    def freeze_observers(self, frozen=True):
        """Stop (or restart) updating the activation ranges in training mode."""
        for _, fq in self.fake_quants():
            fq.observing = not frozen
        return self

    def freeze_bn(self, frozen=True):
        """Normalize with (and stop updating) the running statistics in training too."""
        for _, m in self.named_modules():
            if isinstance(m, QATConv2d):
                m.bn_frozen = frozen
        return self

    def ranges(self):
        """{FakeQuant name: [lo, hi]} of the current activation ranges."""
        return {n: [fq.lo, fq.hi] for n, fq in self.fake_quants()}

    def set_ranges(self, ranges):
        own = dict(self.fake_quants())
        if set(ranges) != set(own):
            raise ValueError(f"QAT ranges do not match the model: missing "
                             f"{sorted(set(own) - set(ranges))}, unexpected "
                             f"{sorted(set(ranges) - set(own))}")
        for n, (lo, hi) in ranges.items():
            own[n].set_range(lo, hi)

    def to_prepared(self):
        """The calibrated :class:`~needle.quant.convert.PreparedModel` of this QAT model:
        BatchNorm folded with the running statistics, observers holding the QAT ranges."""
        from .convert import PreparedModel
        body = _replace(clone_module(self.model), self._fused_with_observer)
        prepared = PreparedModel(body, self.config)
        prepared.input_observer = self._observer(self.input_act)
        return prepared

    def _observer(self, fq):
        """A min/max observer that has seen exactly [lo, hi]: convert's qparams are then the
        ones the fake quantization used."""
        fq.qparams()  # raises when the range was never observed
        obs = MinMaxObserver(self.config.activation_dtype, "affine",
                             bits=self.config.activation_bits)
        obs.observe(np.array([fq.lo, fq.hi], np.float32))
        return obs

    def _fused_with_observer(self, m):
        if isinstance(m, QATResidual):
            fused = FusedResidual(_replace(m.fn, self._fused_with_observer), m.relu)
        elif isinstance(m, (QATConv2d, QATLinear)):
            fused = m.fused()
        else:
            return None
        fused.observer = None if m.act is None else self._observer(m.act)
        return fused


def _replace(m, fn):
    """Replace modules bottom-up: ``fn(module)`` returns a replacement or None (keep, walk)."""
    new = fn(m)
    if new is not None:
        return new
    if isinstance(m, nnb.Sequential):
        return nnb.Sequential(*[_replace(c, fn) for c in m.modules])
    for k, v in list(m.__dict__.items()):
        if isinstance(v, Module):
            m.__dict__[k] = _replace(v, fn)
    return m


def _final_layer(m):
    """The QAT Conv/Linear whose output is the model's output, else None."""
    while True:
        if isinstance(m, (QATConv2d, QATLinear)):
            return m
        if isinstance(m, nnb.Sequential) and m.modules:
            m = m.modules[-1]
        elif not isinstance(m, (QATResidual, nnb.Sequential)) and len(m.children()) == 1:
            m = m.children()[0]
        else:
            return None


def prepare_qat(model, config=None):
    """A :class:`QATModel` of a copy of ``model`` (in training mode; ``model`` is untouched).

    config: :class:`QConfig` (default: ``QConfig(activation_observer="moving_average")``).
    The model's last Conv/Linear, when no ReLU follows it, keeps float output (the integer
    model dequantizes its int32 accumulators), as ``convert`` does.
    """
    config = QConfig(activation_observer="moving_average") if config is None else config
    if not isinstance(config, QConfig):
        raise TypeError(f"prepare_qat needs a QConfig, got {type(config).__name__}")
    body = _fuse(clone_module(model), _QATRules(config))
    final = _final_layer(body)
    if final is not None and not final.relu:
        final.act = None
    return QATModel(body, config).train()


def save_qat(qat_model, path):
    """Write a QAT model (parameters, BatchNorm statistics, activation ranges, QConfig) to a
    safetensors file; :func:`load_qat` reads it back."""
    from ..serialization import save
    save(qat_model, path, metadata={RANGES_KEY: json.dumps(qat_model.ranges()),
                                    CONFIG_KEY: qat_model.config.to_json()})


def load_qat(path, model, device=None):
    """The QAT model saved at ``path``, rebuilt on a float ``model`` of the same architecture
    (e.g. ``nn.MnistCNN()``); in eval mode."""
    from ..serialization import load_checkpoint
    tensors, meta = load_checkpoint(path, device=device, return_metadata=True)
    if RANGES_KEY not in meta or CONFIG_KEY not in meta:
        raise ValueError(f"{path}: not a QAT checkpoint (no {RANGES_KEY!r} / {CONFIG_KEY!r} "
                         f"metadata); write one with save_qat")
    qat = prepare_qat(model, QConfig.from_json(meta[CONFIG_KEY]))
    qat.load_state_dict(tensors)
    qat.set_ranges(json.loads(meta[RANGES_KEY]))
    return qat.eval()


def fine_tune(qat_model, x, y, steps, batch_size=64, lr=1e-4, freeze_bn_step=None,
              freeze_observers_step=None, seed=0, progress=True):
    """Fine-tune a QAT model with Adam on ``(x, y)`` (numpy float32 NCHW images, int labels).

    steps: optimizer steps, each on a random batch of ``batch_size``; at step
    ``freeze_bn_step`` BatchNorm switches to its running statistics and at
    ``freeze_observers_step`` the activation ranges stop moving (None: never).
    Returns {"loss": [...], "accuracy": [...]} per step (on the training batch).
    """
    from tqdm.auto import tqdm
    from ..nn import SoftmaxLoss
    from ..optim import Adam
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"fine_tune needs as many labels as images (and at least one), got "
                         f"x {x.shape} and y {y.shape}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    device = next(iter(qat_model.parameters())).device
    rng = np.random.default_rng(seed)
    opt = Adam(qat_model.parameters(), lr=lr)
    loss_fn = SoftmaxLoss()
    history = {"loss": [], "accuracy": []}
    qat_model.train()
    for step in tqdm(range(steps), desc="QAT fine-tune", disable=not progress, leave=False):
        if step == freeze_bn_step:
            qat_model.freeze_bn()
        if step == freeze_observers_step:
            qat_model.freeze_observers()
        idx = rng.choice(x.shape[0], min(batch_size, x.shape[0]), replace=False)
        xb = Tensor(x[idx], device=device, requires_grad=False)
        yb = Tensor(y[idx].astype(np.float32), device=device, requires_grad=False)
        opt.reset_grad()
        logits = qat_model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
        history["loss"].append(float(loss.numpy()))
        history["accuracy"].append(float((logits.numpy().argmax(1) == y[idx]).mean()))
    qat_model.eval()
    return history


QAT_CHECKPOINT = "checkpoints/mnist_cnn_qat_w4a4.safetensors"


def main(argv=None):
    """Fine-tune the shipped MNIST CNN with QAT (weights and activations 4-bit) on the offline
    training split and write the QAT checkpoint that notebook 08 loads."""
    import argparse
    import time
    from pathlib import Path
    from ..data import mnist_offline_split
    from ..nn.zoo import pretrained_mnist_cnn
    ap = argparse.ArgumentParser(prog="python -m needle.quant.qat", description=main.__doc__)
    root = Path(__file__).resolve().parents[2]
    ap.add_argument("--out", default=str(root / QAT_CHECKPOINT))
    ap.add_argument("--bits", type=int, default=4, help="weight and activation bits")
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--freeze-bn", type=float, default=0.1,
                    help="fraction of the steps after which BatchNorm statistics freeze")
    ap.add_argument("--freeze-observers", type=float, default=0.85,
                    help="fraction of the steps after which activation ranges freeze")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    split = mnist_offline_split()
    x, y = split.train.get_batch(np.arange(len(split.train)))
    xh, yh = split.heldout.get_batch(np.arange(len(split.heldout)))
    config = QConfig(weight_bits=args.bits, activation_bits=args.bits,
                     activation_observer="moving_average")
    qat = prepare_qat(pretrained_mnist_cnn(), config)
    start = time.time()
    fine_tune(qat, x, y, args.steps, args.batch_size, args.lr,
              freeze_bn_step=int(args.steps * args.freeze_bn),
              freeze_observers_step=int(args.steps * args.freeze_observers),
              seed=args.seed)
    save_qat(qat, args.out)
    from .convert import convert
    acc = float((convert(qat)(Tensor(xh)).numpy().argmax(1) == yh).mean())
    print(f"wrote {args.out}: {args.steps} steps in {time.time() - start:.0f} s; integer "
          f"{args.bits}-bit model {acc:.2%} on the {len(yh)} held-out images (MNIST test "
          f"images 8000-9999)")


if __name__ == "__main__":
    main()
