"""Fold eval-mode BatchNorm into the preceding Conv / Linear and mark a following ReLU fused.

For a BatchNorm with weight gamma, bias beta, running statistics mean, var and eps, per output
channel c:

    scale[c] = gamma[c] / sqrt(var[c] + eps)
    w'[..., c] = w[..., c] * scale[c]
    b'[c]     = (b[c] - mean[c]) * scale[c] + beta[c]          (b = 0 without a bias)

``running_var`` is used exactly as stored (BatchNorm normalizes with it in eval mode).
``fuse_model`` walks Sequentials (including subclasses such as ``ConvBN``), Residuals and any
other module's attributes, rewrites each ``Conv [-> BatchNorm2d] [-> ReLU]`` and
``Linear [-> BatchNorm1d] [-> ReLU]`` run into one ``FusedConv2d`` / ``FusedLinear`` (with
``relu=True`` when a ReLU followed) and a ``Residual [-> ReLU]`` into ``FusedResidual``, and
leaves everything else as it was. The input model is never modified: the result is a copy.
"""
import numpy as np

from ..autograd import Tensor
from .. import ops
from ..nn import nn_basic as nnb
from ..nn.nn_basic import Module, Parameter
from ..nn.nn_conv import Conv

__all__ = ["FusedConv2d", "FusedLinear", "FusedResidual", "fold_bn", "fuse_sequence",
           "fuse_model", "clone_module"]


class _Observed:
    """Mixin: a module whose output an observer (set by ``prepare``) may record."""

    observer = None

    def _record(self, out):
        if self.observer is not None:
            self.observer.observe(out)
        return out


class FusedConv2d(_Observed, Module):
    """Conv (BatchNorm folded in) with an optional fused ReLU, on NCHW inputs.

    weight (K, K, C_in, C_out), bias (C_out,); "same" padding ``padding``, ``stride``.
    (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, weight, bias, stride=1, padding=None, relu=False):
        super().__init__()
        self.weight = Parameter(weight, requires_grad=False)
        self.bias = Parameter(bias, requires_grad=False)
        self.kernel_size, _, self.in_channels, self.out_channels = self.weight.shape
        self.stride = stride
        self.padding = self.kernel_size // 2 if padding is None else padding
        self.relu = relu

    def forward(self, x):
        if len(x.shape) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"FusedConv2d expects (N, {self.in_channels}, H, W) inputs, got "
                             f"shape {x.shape}")
        out = ops.conv(ops.permute(x, (0, 2, 3, 1)), self.weight, stride=self.stride,
                       padding=self.padding)
        bias = ops.reshape(self.bias, (1, 1, 1, self.out_channels))
        out = out + ops.broadcast_to(bias, out.shape)
        if self.relu:
            out = ops.relu(out)
        return self._record(ops.permute(out, (0, 3, 1, 2)))

    def __repr__(self):
        return (f"FusedConv2d({self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
                f"stride={self.stride}, relu={self.relu})")


class FusedLinear(_Observed, Module):
    """Linear (BatchNorm1d folded in) with an optional fused ReLU: weight (in, out),
    bias (1, out); (N, in) -> (N, out)."""

    def __init__(self, weight, bias, relu=False):
        super().__init__()
        self.weight = Parameter(weight, requires_grad=False)
        self.bias = Parameter(bias, requires_grad=False)
        self.in_features, self.out_features = self.weight.shape
        self.relu = relu

    def forward(self, x):
        if len(x.shape) != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"FusedLinear expects (N, {self.in_features}) inputs, got shape "
                             f"{x.shape}")
        out = x @ self.weight + ops.broadcast_to(self.bias, (x.shape[0], self.out_features))
        if self.relu:
            out = ops.relu(out)
        return self._record(out)

    def __repr__(self):
        return f"FusedLinear({self.in_features}, {self.out_features}, relu={self.relu})"


class FusedResidual(_Observed, nnb.Residual):
    """``fn(x) + x`` with an optional fused ReLU after the addition."""

    def __init__(self, fn, relu=False):
        super().__init__(fn)
        self.relu = relu

    def forward(self, x):
        out = self.fn(x) + x
        if self.relu:
            out = ops.relu(out)
        return self._record(out)


def fold_bn(weight, bias, bn):
    """Fold eval-mode BatchNorm ``bn`` into a layer with output channels on the last axis.

    weight: float array (..., C) (Conv (K, K, C_in, C) or Linear (in, C)); bias: (C,), (1, C)
    or None (no bias: b = 0). ``bn`` has ``weight`` (gamma), ``bias`` (beta), ``running_mean``,
    ``running_var`` (needle Tensors of shape (C,), read with ``.numpy()``) and ``eps``.
    Returns float32 numpy ``(w', b')`` with ``w'`` of weight's shape and ``b'`` of shape (C,),
    computed in float64. A BatchNorm of another size is a ValueError naming both sizes.
    """
    ### BEGIN SOLUTION
    w = np.asarray(weight, dtype=np.float64)
    c = w.shape[-1]
    b = np.zeros(c) if bias is None else np.asarray(bias, dtype=np.float64).reshape(c)
    gamma = bn.weight.numpy().astype(np.float64)
    beta = bn.bias.numpy().astype(np.float64)
    mean = bn.running_mean.numpy().astype(np.float64)
    var = bn.running_var.numpy().astype(np.float64)
    if gamma.shape != (c,):
        raise ValueError(f"cannot fold {type(bn).__name__}({gamma.shape[0]}) into a layer with "
                         f"{c} output channels")
    scale = gamma / np.sqrt(var + bn.eps)
    w_f = w * scale
    b_f = (b - mean) * scale + beta
    return w_f.astype(np.float32), b_f.astype(np.float32)
    ### END SOLUTION


def _tensor(a, like):
    return Tensor(np.asarray(a, dtype=np.float32), device=like.device, requires_grad=False)


def _fuse_conv(conv, bn=None, relu=False):
    w = conv.weight.numpy()
    b = None if conv.bias is None else conv.bias.numpy()
    if bn is not None:
        w, b = fold_bn(w, b, bn)
    elif b is None:
        b = np.zeros(conv.out_channels, np.float32)
    return FusedConv2d(_tensor(w, conv.weight), _tensor(b, conv.weight), conv.stride,
                       conv.padding, relu)


def _fuse_linear(linear, bn=None, relu=False):
    w = linear.weight.numpy()
    b = None if linear.bias is None else linear.bias.numpy().reshape(-1)
    if bn is not None:
        w, b = fold_bn(w, b, bn)
    elif b is None:
        b = np.zeros(w.shape[1], np.float32)
    b = np.asarray(b, np.float32).reshape(1, -1)
    return FusedLinear(_tensor(w, linear.weight), _tensor(b, linear.weight), relu)


class FuseRules:
    """What each fusable run becomes: ``conv(conv, bn, relu)``, ``linear(linear, bn, relu)``,
    ``residual(fused_fn, relu)`` build the replacements (bn may be None); modules of type
    ``leaves`` are left as they are. ``fuse_model`` folds for inference; quantization-aware
    training (``qat.py``) swaps in modules that keep BatchNorm trainable."""

    leaves = (FusedConv2d, FusedLinear)

    @staticmethod
    def conv(conv, bn, relu):
        return _fuse_conv(conv, bn, relu)

    @staticmethod
    def linear(linear, bn, relu):
        return _fuse_linear(linear, bn, relu)

    @staticmethod
    def residual(fn, relu):
        return FusedResidual(fn, relu)


def fuse_sequence(mods, rules=FuseRules):
    """Fuse the runs of a list of modules (a Sequential's ``modules``): a new list.

    Each ``Conv [-> BatchNorm2d] [-> ReLU]`` run becomes ``rules.conv(conv, bn, relu)`` and each
    ``Linear [-> BatchNorm1d] [-> ReLU]`` run ``rules.linear(linear, bn, relu)`` (bn None when
    absent, relu True when a ReLU follows); the BatchNorm must be of exactly that type
    (BatchNorm2d subclasses BatchNorm1d). A ``Residual [-> ReLU]`` becomes
    ``rules.residual(_fuse(residual.fn, rules), relu)``; any other module m becomes
    ``_fuse(m, rules)``. The input list is not modified.
    """
    ### BEGIN SOLUTION
    out, i = [], 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, Conv) or isinstance(m, nnb.Linear):
            is_conv = isinstance(m, Conv)
            bn_type = nnb.BatchNorm2d if is_conv else nnb.BatchNorm1d
            bn = None
            if type(nxt) is bn_type:  # BatchNorm2d subclasses BatchNorm1d: match exactly
                bn, i = nxt, i + 1
                nxt = mods[i + 1] if i + 1 < len(mods) else None
            relu = isinstance(nxt, nnb.ReLU)
            i += 1 + int(relu)
            out.append(rules.conv(m, bn, relu) if is_conv else rules.linear(m, bn, relu))
            continue
        if isinstance(m, nnb.Residual):
            relu = isinstance(nxt, nnb.ReLU)
            out.append(rules.residual(_fuse(m.fn, rules), relu))
            i += 1 + int(relu)
            continue
        out.append(_fuse(m, rules))
        i += 1
    return out
    ### END SOLUTION


def clone_module(module):
    """A deep copy of a module tree; tensors get fresh buffers, devices are shared."""
    return _clone(module, {})


def _clone(obj, memo):
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, Tensor):
        new = Tensor.__new__(type(obj))
        new._init(None, [], cached_data=obj.realize_cached_data().copy(),
                  requires_grad=obj.requires_grad)
    elif isinstance(obj, Module):
        new = type(obj).__new__(type(obj))
        memo[id(obj)] = new
        new.__dict__.update({k: _clone(v, memo) for k, v in obj.__dict__.items()})
    elif isinstance(obj, list):
        new = [_clone(v, memo) for v in obj]
    elif isinstance(obj, tuple):
        new = tuple(_clone(v, memo) for v in obj)
    elif isinstance(obj, dict):
        new = {k: _clone(v, memo) for k, v in obj.items()}
    else:
        new = obj  # ints, floats, strings, devices, observers: immutable or shared on purpose
    memo[id(obj)] = new
    return new


def fuse_model(model):
    """A copy of ``model`` with BatchNorm folded and ReLUs fused (see the module docstring).

    The model should be in eval mode (its BatchNorm running statistics are what gets folded);
    the result is in eval mode. A Sequential whose fused run collapses to a single module is
    replaced by that module.
    """
    return _fuse(clone_module(model)).eval()


def _fuse(model, rules=FuseRules):
    """Fuse inside ``model`` (a private copy): returns the fused replacement."""
    if isinstance(model, rules.leaves):
        return model
    if isinstance(model, (Conv, nnb.Linear, nnb.Residual, nnb.Sequential)):
        mods = list(model.modules) if isinstance(model, nnb.Sequential) else [model]
        mods = fuse_sequence(_unfuse_residual_relus(mods), rules)
        return mods[0] if len(mods) == 1 else nnb.Sequential(*mods)
    for k, v in list(model.__dict__.items()):
        model.__dict__[k] = _fuse_attr(v, rules)
    return model


def _unfuse_residual_relus(mods):
    """``mods`` with each ``FusedResidual(fn, relu=True)`` written back as ``Residual(fn), ReLU``.

    A FusedResidual is a Residual, so fusing an already fused model would see it as a plain
    ``Residual`` and drop the ReLU it carries; spelled out again, it fuses back to itself.
    """
    out = []
    for m in mods:
        if isinstance(m, FusedResidual) and m.relu:
            out += [nnb.Residual(m.fn), nnb.ReLU()]
        else:
            out.append(m)
    return out


def _fuse_attr(v, rules=FuseRules):
    if isinstance(v, Module):
        return _fuse(v, rules)
    if isinstance(v, (list, tuple)) and any(isinstance(x, Module) for x in v):
        return type(v)(fuse_sequence(_unfuse_residual_relus(list(v)), rules))
    if isinstance(v, dict):
        return {k: _fuse_attr(x, rules) for k, x in v.items()}
    return v
