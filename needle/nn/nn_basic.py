"""The basic neural-network modules: Module, Parameter, Linear, normalization, losses.

Naming (``named_parameters``, ``named_buffers``, ``state_dict``) follows the attribute
names: a submodule stored as ``self.block`` contributes ``block.<name>``; lists, tuples and
dicts of modules add their index/key (``layers.0.weight``); ``Sequential`` names its children
``0``, ``1``, ... directly and ``Residual`` its inner module ``fn``.
"""
from collections import OrderedDict, namedtuple
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from needle.autograd import Tensor
from needle.backend_ndarray import NDArray
from needle import ops
import needle.init as init

__all__ = [
    "Parameter", "Module", "Identity", "Linear", "Flatten", "ReLU", "Tanh", "Sigmoid",
    "Sequential", "SoftmaxLoss", "BatchNorm1d", "BatchNorm2d", "LayerNorm1d", "Dropout",
    "Residual", "IncompatibleKeys",
]


class Parameter(Tensor):
    """A tensor that is a trainable parameter of a Module."""


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _child_items(name, value):
    """(dotted name, value) for the modules/tensors held directly or in containers by an
    attribute ``name``."""
    if isinstance(value, (Module, Tensor)):
        yield name, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _child_items(f"{name}.{k}" if name else str(k), v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _child_items(f"{name}.{i}" if name else str(i), v)


def _unpack_params(value: object) -> List[Tensor]:
    if isinstance(value, Parameter):
        return [value]
    if isinstance(value, Module):
        return value.parameters()
    if isinstance(value, dict):
        params = []
        for v in value.values():
            params += _unpack_params(v)
        return params
    if isinstance(value, (list, tuple)):
        params = []
        for v in value:
            params += _unpack_params(v)
        return params
    return []


def _child_modules(value: object) -> List["Module"]:
    if isinstance(value, Module):
        modules = [value]
        modules.extend(_child_modules(value.__dict__))
        return modules
    if isinstance(value, dict):
        modules = []
        for v in value.values():
            modules += _child_modules(v)
        return modules
    if isinstance(value, (list, tuple)):
        modules = []
        for v in value:
            modules += _child_modules(v)
        return modules
    return []


def _as_ndarray(key, value):
    """The NDArray view of a state_dict value (Tensor, NDArray or numpy array)."""
    if isinstance(value, Tensor):
        return value.realize_cached_data()
    if isinstance(value, (NDArray, np.ndarray)):
        return value
    raise TypeError(f"state_dict[{key!r}] must be a Tensor, NDArray or numpy array, "
                    f"got {type(value).__name__}")


def _dtype_name(value):
    return value.dtype if isinstance(value, NDArray) else np.dtype(value.dtype).name


class Module:
    """Base class of all layers: holds Parameters, buffers and submodules as attributes.

    Subclasses implement ``forward``; calling the module calls ``forward``.
    """

    # attributes whose list/tuple entries are named without the attribute name
    _unprefixed_attrs: Tuple[str, ...] = ()

    def __init__(self):
        self.training = True

    # ---- parameters, buffers and submodules ----------------------------------------------
    def register_buffer(self, name: str, tensor: Tensor):
        """Store ``tensor`` as attribute ``name`` and include it in ``state_dict`` (buffers
        are state that is not trained, e.g. BatchNorm running statistics). The attribute may
        later be reassigned to a new Tensor; it stays a buffer."""
        if not isinstance(tensor, Tensor):
            raise TypeError(f"buffer {name!r} must be a Tensor, got {type(tensor).__name__}")
        if isinstance(tensor, Parameter):
            raise TypeError(f"buffer {name!r} is a Parameter; assign parameters as attributes")
        if "." in name or not name:
            raise KeyError(f"invalid buffer name {name!r}")
        tensor.requires_grad = False
        buffers = self.__dict__.setdefault("_buffers", [])
        if name not in buffers:
            buffers.append(name)
        setattr(self, name, tensor)

    def _attr_items(self):
        """(relative name, value) of every Module/Tensor held by this module's attributes."""
        for attr, value in self.__dict__.items():
            if attr == "_buffers":
                continue
            prefix = "" if attr in self._unprefixed_attrs else attr
            yield from _child_items(prefix, value)

    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        """The direct submodules with their names."""
        seen = set()
        for name, value in self._attr_items():
            if isinstance(value, Module) and id(value) not in seen:
                seen.add(id(value))
                yield name, value

    def children(self) -> List["Module"]:
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = "", _seen=None) -> Iterator[Tuple[str, "Module"]]:
        """This module (name ``prefix``, "" at the top) and every submodule, depth first."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def named_parameters(self) -> Iterator[Tuple[str, Parameter]]:
        """Every Parameter with its dotted name (each shared parameter once)."""
        for name, value, kind in self._named_state():
            if kind == "param":
                yield name, value

    def named_buffers(self) -> Iterator[Tuple[str, Tensor]]:
        """Every registered buffer with its dotted name."""
        for name, value, kind in self._named_state():
            if kind == "buffer":
                yield name, value

    def _named_state(self, prefix="", seen=None):
        """(dotted name, tensor, "param" | "buffer") in attribute order, depth first."""
        seen = set() if seen is None else seen
        buffers = set(self.__dict__.get("_buffers", ()))
        for name, value in self._attr_items():
            full = f"{prefix}.{name}" if prefix else name
            if id(value) in seen:
                continue
            if isinstance(value, Module):
                seen.add(id(value))
                yield from value._named_state(full, seen)
            elif isinstance(value, Parameter):
                seen.add(id(value))
                yield full, value, "param"
            elif name in buffers:
                seen.add(id(value))
                yield full, value, "buffer"

    def parameters(self) -> List[Tensor]:
        """The Parameters of this module and its submodules (each shared one once)."""
        out, seen = [], set()
        for p in _unpack_params(self.__dict__):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def _children(self) -> List["Module"]:
        """Every submodule, recursively (the course API)."""
        return _child_modules(self.__dict__)

    # ---- state dict ---------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Dotted name -> detached Tensor, for every parameter and buffer."""
        return OrderedDict((name, t.detach()) for name, t, _ in self._named_state())

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True):
        """Copy parameters and buffers from ``state_dict`` (values: Tensor, NDArray or numpy).

        The module keeps its Tensor objects (optimizers stay valid); their data is replaced
        by a copy of the value on the tensor's own device. Every entry is checked before
        anything is changed. Raises KeyError naming the missing and unexpected keys (only
        when ``strict``) and ValueError naming the key and the expected and given shape or
        dtype. Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        own = OrderedDict((name, t) for name, t, _ in self._named_state())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged = []
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = _as_ndarray(key, state_dict[key])
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"load_state_dict: {key!r}: expected shape {tuple(target.shape)}, "
                                 f"got {tuple(value.shape)}")
            if _dtype_name(value) != target.dtype:
                raise ValueError(f"load_state_dict: {key!r}: expected dtype {target.dtype}, "
                                 f"got {_dtype_name(value)}")
            staged.append((target, value))
        for target, value in staged:
            # NDArray(...) always copies, so the module never aliases the caller's data
            target.cached_data = NDArray(value, device=target.device, dtype=target.dtype)
        return IncompatibleKeys(missing, unexpected)

    def to(self, device):
        """Move every parameter and buffer to ``device`` (in place; returns self)."""
        for _, t, _ in self._named_state():
            t.cached_data = t.realize_cached_data().to(device)
        return self

    # ---- modes and calling -----------------------------------------------------------------------
    def eval(self):
        self.training = False
        for m in self._children():
            m.training = False
        return self

    def train(self, mode: bool = True):
        self.training = mode
        for m in self._children():
            m.training = mode
        return self

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Identity(Module):
    def forward(self, x):
        return x


class Linear(Module):
    """y = x @ weight + bias; weight (in_features, out_features), bias (1, out_features),
    both Kaiming-uniform (fan_in = in_features for the weight, out_features for the bias,
    as in the course). ``x`` is (..., in_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(init.kaiming_uniform(
            in_features, out_features, device=device, dtype=dtype, requires_grad=True))
        if bias:
            self.bias = Parameter(init.kaiming_uniform(
                out_features, 1, device=device, dtype=dtype, requires_grad=True
            ).reshape((1, out_features)))
        else:
            self.bias = None

    def forward(self, X: Tensor) -> Tensor:
        if X.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects inputs with last dimension {self.in_features}, "
                             f"got shape {X.shape}")
        out = X @ self.weight
        if self.bias is not None:
            out = out + self.bias.broadcast_to(out.shape)
        return out


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def forward(self, X):
        n = X.shape[0]
        rest = 1
        for d in X.shape[1:]:
            rest *= d
        return X.reshape((n, rest))


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Sequential(Module):
    """Apply the modules in order; they are named "0", "1", ... in the state dict."""

    _unprefixed_attrs = ("modules",)

    def __init__(self, *modules):
        super().__init__()
        self.modules = modules

    def forward(self, x: Tensor) -> Tensor:
        for module in self.modules:
            x = module(x)
        return x

    def __getitem__(self, i):
        return self.modules[i]

    def __len__(self):
        return len(self.modules)


class SoftmaxLoss(Module):
    """Mean softmax cross-entropy of logits (N, k) and integer labels y (N,)."""

    def forward(self, logits: Tensor, y: Tensor):
        n, k = logits.shape
        y_one_hot = init.one_hot(k, y, device=logits.device, dtype=logits.dtype)
        picked = ops.summation(logits * y_one_hot, axes=(1,))
        return ops.summation(ops.logsumexp(logits, axes=(1,)) - picked) / n


class BatchNorm1d(Module):
    """Batch normalization of (N, dim) inputs over the batch axis.

    Training: normalize with the batch mean and biased variance, and update the running
    statistics ``running = (1 - momentum) * running + momentum * batch`` (biased variance,
    as in the course). Evaluation: normalize with the running statistics.
    weight/bias have shape (dim,); running_mean/running_var are buffers of shape (dim,).
    """

    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype, requires_grad=True))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype, requires_grad=True))
        self.register_buffer("running_mean", init.zeros(dim, device=device, dtype=dtype))
        self.register_buffer("running_var", init.ones(dim, device=device, dtype=dtype))

    def _normalize(self, x: Tensor, axes, stat_shape) -> Tensor:
        """Normalize ``x`` over ``axes``; statistics are reshaped to ``stat_shape`` to
        broadcast against ``x``."""
        shape = x.shape
        count = 1
        for a in axes:
            count *= shape[a]
        if self.training:
            mean = ops.summation(x, axes) / count
            centered = x + ops.broadcast_to(ops.reshape(-mean, stat_shape), shape)
            var = ops.summation(centered * centered, axes) / count
            m = self.momentum
            self.running_mean = ((1 - m) * self.running_mean + m * mean.detach()).detach()
            self.running_var = ((1 - m) * self.running_var + m * var.detach()).detach()
        else:
            mean, var = self.running_mean, self.running_var
            centered = x + ops.broadcast_to(ops.reshape(-mean, stat_shape), shape)
        # fold weight / std into one per-feature scale so the full-size work is one
        # multiply and one add
        scale = self.weight * ops.power_scalar(var + self.eps, -0.5)
        out = centered * ops.broadcast_to(ops.reshape(scale, stat_shape), shape)
        return out + ops.broadcast_to(ops.reshape(self.bias, stat_shape), shape)

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__} expects (N, {self.dim}) inputs, got shape {x.shape}")
        return self._normalize(x, (0,), (1, self.dim))


class BatchNorm2d(BatchNorm1d):
    """Batch normalization of NCHW inputs per channel (over N, H and W)."""

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 4 or x.shape[1] != self.dim:
            raise ValueError(f"BatchNorm2d expects (N, {self.dim}, H, W) inputs, got shape {x.shape}")
        return self._normalize(x, (0, 2, 3), (1, self.dim, 1, 1))


class LayerNorm1d(Module):
    """Layer normalization of (N, dim) inputs over the feature axis; weight/bias (dim,)."""

    def __init__(self, dim, eps=1e-5, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype, requires_grad=True))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype, requires_grad=True))

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 2 or x.shape[1] != self.dim:
            raise ValueError(f"LayerNorm1d expects (N, {self.dim}) inputs, got shape {x.shape}")
        n = x.shape[0]
        # the course's op sequence ((x - mean) / sqrt(var + eps)), so float32 gradients agree
        mean = ops.reshape(ops.summation(x, (1,)) / self.dim, (n, 1))
        centered = x - ops.broadcast_to(mean, x.shape)
        var = ops.reshape(ops.summation(centered ** 2, (1,)) / self.dim, (n, 1))
        std = ops.broadcast_to((var + self.eps) ** 0.5, x.shape)
        w = ops.broadcast_to(ops.reshape(self.weight, (1, self.dim)), x.shape)
        b = ops.broadcast_to(ops.reshape(self.bias, (1, self.dim)), x.shape)
        return w * (centered / std) + b


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1 / (1 - p);
    the identity in evaluation."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        mask = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        return x * mask / (1 - self.p)


class Residual(Module):
    """fn(x) + x."""

    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x
