"""The PTQ pipeline: fuse -> prepare (attach observers) -> calibrate -> convert.

    qmodel = quantize_model(model, calibration_loader, QConfig())

``prepare`` fuses a copy of the float model and attaches an activation observer to the model
input and to the output of every fused Conv / Linear / Residual. ``calibrate`` runs batches
through it. ``convert`` quantizes the weights (per channel or per tensor, symmetric), the
biases (int32 with scale s_in * s_w) and builds a :class:`QuantizedModel`:
QuantStub -> integer modules -> DeQuantStub. The last Conv/Linear of the model (without a
fused ReLU) keeps its int32 accumulators, which the DeQuantStub scales by s_in * s_w[c].
"""
import json
from collections import OrderedDict

import numpy as np

from ..autograd import Tensor
from ..nn import nn_basic as nnb
from ..nn.nn_basic import Module
from .. import serialization
from . import reference as R
from .config import QConfig
from .fuse import FusedConv2d, FusedLinear, FusedResidual, fuse_model
from .modules import (DeQuantStub, QuantizedAdd, QuantizedConv2d, QuantizedFlatten,
                      QuantizedLinear, QuantizedReLU, QuantizedResidual, QuantStub, build_module,
                      module_spec)

__all__ = ["PreparedModel", "QuantizedModel", "prepare", "calibrate", "convert",
           "quantize_model", "quantize_weight", "load_quantized"]

SPEC_KEY = "needle.quant.model"
CONFIG_KEY = "needle.quant.config"


class PreparedModel(Module):
    """A fused float model with observers: ``input_observer`` sees the model input, every
    fused Conv / Linear / Residual has ``.observer`` for its output."""

    def __init__(self, model, config):
        super().__init__()
        self.model = model
        self.config = config
        self.input_observer = config.make_activation_observer()
        self.training = False

    def forward(self, x):
        self.input_observer.observe(x)
        return self.model(x)

    def observed_modules(self):
        return [(name, m) for name, m in self.model.named_modules()
                if isinstance(m, (FusedConv2d, FusedLinear, FusedResidual))]


def prepare(model, config=None):
    """Fuse a copy of ``model`` (eval mode) and attach activation observers."""
    config = QConfig() if config is None else config
    fused = fuse_model(model)
    prepared = PreparedModel(fused, config)
    for _, m in prepared.observed_modules():
        m.observer = config.make_activation_observer()
    return prepared


def calibrate(prepared, loader, num_batches=None, device=None, progress=True):
    """Run calibration batches through a prepared model so its observers see real data.

    loader: iterable of batches (a Tensor, numpy array, or a tuple whose first element is
    the input). num_batches: stop after this many (default: all). device: where batches
    run (default: the model's). Returns the number of images seen.
    """
    from tqdm.auto import tqdm
    total = num_batches
    if total is None and hasattr(loader, "__len__"):
        total = len(loader)
    if device is None:
        device = next(iter(prepared.model.parameters())).device
    seen = 0
    bar = tqdm(loader, total=total, desc="calibrate", disable=not progress, leave=False)
    for i, batch in enumerate(bar):
        if num_batches is not None and i >= num_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, np.float32), device=device, requires_grad=False)
        elif x.device != device:
            x = x.to(device)
        prepared(x)
        seen += x.shape[0]
    bar.close()
    if seen == 0:
        raise ValueError("calibration saw no data: the loader is empty")
    return seen


def quantize_weight(w, config, axis):
    """Quantize a float weight with ``config``'s weight observer.

    w: float32 numpy array with output channels along ``axis``. The scale comes from
    ``config.make_weight_observer(axis)`` (which is per channel or per tensor as the config
    says, and any of the observers), the codes are clamped to ``config.weight_qrange()``.
    Returns ``(w_q int8, scale float32 [C] )`` (per tensor: the one scale repeated per channel).
    """
    ### BEGIN SOLUTION
    obs = config.make_weight_observer(axis)
    obs.observe(w)
    scale, zp = obs.qparams()
    qmin, qmax = config.weight_qrange()
    q = R.quantize(w, scale, zp, "int8", axis=obs.axis, qmin=qmin, qmax=qmax)
    scale = np.broadcast_to(np.asarray(scale, np.float32), (w.shape[axis],)).copy()
    ### END SOLUTION
    return q, scale


def _last_gemm(m):
    """The last module that runs in ``m`` if it is a fused Conv/Linear, else None."""
    while True:
        if isinstance(m, nnb.Sequential) and len(m.modules):
            m = m.modules[-1]
        elif _single_child(m) is not None:
            m = _single_child(m)
        else:
            break
    return m if isinstance(m, (FusedConv2d, FusedLinear)) else None


def _single_child(m):
    """The only submodule of a wrapper module (e.g. MnistCNN.model), else None."""
    if isinstance(m, (FusedConv2d, FusedLinear, FusedResidual, nnb.Sequential, nnb.BatchNorm1d,
                      nnb.LayerNorm1d)):
        return None
    children = m.children()
    return children[0] if len(children) == 1 else None


def _out_qparams(m, config):
    if m.observer is None or m.observer.num_batches == 0:
        raise RuntimeError(f"{m!r} has no calibration data: run calibrate() before convert()")
    return m.observer.qparams()


def _convert_gemm(m, qp_in, config, final):
    device = m.weight.device
    out_dtype = "int32" if final else config.activation_dtype
    is_conv = isinstance(m, FusedConv2d)
    w = m.weight.numpy()
    if is_conv:
        K, _, cin, cout = w.shape
        w_q, s_w = quantize_weight(w, config, axis=3)
        w_q = w_q.transpose(3, 0, 1, 2).reshape(cout, K * K * cin)
        layer = QuantizedConv2d(cin, cout, K, m.stride, m.padding, m.relu, out_dtype, device,
                                out_bits=config.activation_clamp_bits())
    else:
        fin, fout = w.shape
        w_q, s_w = quantize_weight(w, config, axis=1)
        w_q = w_q.T
        layer = QuantizedLinear(fin, fout, m.relu, out_dtype, device,
                                out_bits=config.activation_clamp_bits())
    bias_q = R.quantize_bias(m.bias.numpy().reshape(-1), qp_in[0], s_w)
    qp_out = (np.float32(1.0), 0) if final else _out_qparams(m, config)
    layer.set_qparams(np.ascontiguousarray(w_q), bias_q, s_w, qp_in, qp_out)
    return layer, qp_out


def _convert(m, qp, config, final_gemm):
    """(quantized module, output qparams) for float module ``m`` with input qparams ``qp``."""
    if isinstance(m, (FusedConv2d, FusedLinear)):
        return _convert_gemm(m, qp, config, final=m is final_gemm)
    if isinstance(m, FusedResidual):
        fn, qp_fn = _convert(m.fn, qp, config, final_gemm)
        qp_out = _out_qparams(m, config)
        add = QuantizedAdd(m.relu, config.activation_dtype, device=None,
                           out_bits=config.activation_clamp_bits())
        add.set_qparams(qp_fn, qp, qp_out)
        return QuantizedResidual(fn, add), qp_out
    if isinstance(m, nnb.Sequential):
        mods = []
        for child in m.modules:
            q, qp = _convert(child, qp, config, final_gemm)
            mods.append(q)
        return nnb.Sequential(*mods), qp
    if isinstance(m, nnb.Flatten):
        return QuantizedFlatten(), qp
    if isinstance(m, nnb.ReLU):
        return QuantizedReLU(), qp
    if isinstance(m, (nnb.Identity, nnb.Dropout)):
        return nnb.Identity(), qp
    if _single_child(m) is not None:
        # a wrapper such as MnistCNN whose forward runs its single submodule
        return _convert(_single_child(m), qp, config, final_gemm)
    raise NotImplementedError(f"cannot quantize module {type(m).__name__}; supported: Conv, "
                              f"Linear, BatchNorm (folded), ReLU, Residual, Flatten, "
                              f"Sequential, Identity, Dropout")


def convert(prepared):
    """Build the :class:`QuantizedModel` of a calibrated :class:`PreparedModel`, or of a
    ``qat.QATModel`` (BatchNorm folded with its running statistics, its activation ranges)."""
    if hasattr(prepared, "to_prepared"):
        prepared = prepared.to_prepared()
    config = prepared.config
    if prepared.input_observer.num_batches == 0:
        raise RuntimeError("the model has not been calibrated: run calibrate() first")
    qp_in = prepared.input_observer.qparams()
    device = next(iter(prepared.model.parameters())).device
    stub = QuantStub(config.activation_dtype, qp_in[0], qp_in[1], device=device,
                     bits=config.activation_clamp_bits())
    final = _last_gemm(prepared.model)
    if final is not None and final.relu:
        final = None  # keep the ReLU: requantize like every other layer
    body, _ = _convert(prepared.model, (qp_in[0], int(qp_in[1])), config, final)
    _move_buffers(body, device)
    return QuantizedModel(stub, body, config)


def _move_buffers(module, device):
    for _, m in module.named_modules():
        if getattr(m, "device", "missing") is None:
            m.device = device
            for name, t in list(m.named_buffers()):
                if "." not in name:
                    m.register_buffer(name, t.to(device))


def quantize_model(model, calibration_loader, config=None, num_batches=None, progress=True):
    """fuse + prepare + calibrate + convert: the whole post-training quantization.

    model: a float needle model (its BatchNorm running statistics are folded, whatever its
    mode); calibration_loader: batches of inputs (see
    :func:`calibrate`); config: :class:`QConfig` (default: per-channel symmetric int8
    weights, per-tensor affine uint8 activations, min/max observers).
    Returns a :class:`QuantizedModel` (float32 NCHW in, float32 logits out).
    """
    prepared = prepare(model, config)  # works on a fused copy: ``model`` is left as it is
    calibrate(prepared, calibration_loader, num_batches, progress=progress)
    return convert(prepared)


class QuantizedModel(Module):
    """QuantStub -> integer modules -> DeQuantStub; float32 in, float32 out.

    On disk (``needle.save(qmodel, path)``) its buffers are packed by dtype into three
    tensors ("int8", "int32", "float32", in ``named_buffers`` order), its structure goes into
    the metadata (``needle.quant.model``, JSON) with the QConfig (``needle.quant.config``), and
    :func:`load_quantized` rebuilds it.
    """

    PACKED = ("int8", "int32", "float32")

    def __init__(self, quant, body, config):
        super().__init__()
        self.quant = quant
        self.body = body
        self.dequant = DeQuantStub()
        self.config = config
        self.training = False

    def forward(self, x):
        return self.dequant(self.body(self.quant(x)))

    def spec(self):
        return {"quant": module_spec(self.quant), "body": module_spec(self.body)}

    def serialization_metadata(self):
        return {CONFIG_KEY: self.config.to_json(),
                SPEC_KEY: json.dumps(self.spec(), separators=(",", ":"))}

    def unpacked_state_dict(self):
        """The per-layer buffers (dotted name -> Tensor), as ``Module.state_dict`` gives them."""
        return super().state_dict()

    def state_dict(self):
        """The buffers packed by dtype: {"int8": ..., "int32": ..., "float32": ...} (1-D)."""
        parts = {d: [] for d in self.PACKED}
        for _, t in super().state_dict().items():
            parts[t.dtype].append(t.numpy().reshape(-1))
        return OrderedDict(
            (d, Tensor(np.concatenate(parts[d]) if parts[d] else np.zeros(0, d), dtype=d,
                       device=self.quant.device, requires_grad=False))
            for d in self.PACKED)

    def load_state_dict(self, state_dict, strict=True):
        """Load a packed state dict (from :meth:`state_dict` / ``needle.load``)."""
        missing = [d for d in self.PACKED if d not in state_dict]
        unexpected = [k for k in state_dict if k not in self.PACKED]
        if missing or unexpected:
            raise KeyError(f"QuantizedModel.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        flat = {}
        for d in self.PACKED:
            v = state_dict[d]
            a = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
            if a.dtype.name != d:
                raise ValueError(f"QuantizedModel.load_state_dict: {d!r} has dtype "
                                 f"{a.dtype.name}")
            flat[d] = a.reshape(-1)
        own = super().state_dict()
        need = {d: sum(int(np.prod(t.shape)) for t in own.values() if t.dtype == d)
                for d in self.PACKED}
        for d in self.PACKED:
            if flat[d].size != need[d]:
                raise ValueError(f"QuantizedModel.load_state_dict: {d!r} holds {flat[d].size} "
                                 f"values, the model needs {need[d]}")
        pos = dict.fromkeys(self.PACKED, 0)
        unpacked = OrderedDict()
        for name, t in own.items():
            n = int(np.prod(t.shape))
            unpacked[name] = flat[t.dtype][pos[t.dtype]:pos[t.dtype] + n].reshape(t.shape)
            pos[t.dtype] += n
        return super().load_state_dict(unpacked, strict=True)

    def __repr__(self):
        return f"QuantizedModel({self.spec()})"


# Limits of a model description read from a file (docs/ARCHITECTURE.md, "Limits and
# validation"): generous for any model of this course, small enough that nothing read from a
# file can make the loader allocate or recurse without bound.
_MAX_SPEC_DEPTH = 32
_MAX_SPEC_MODULES = 4096
_MAX_CHANNELS = 1 << 16
_MAX_KERNEL = 64
_MAX_STRIDE = 64
_MAX_PADDING = 1024


def _spec_int(where, args, name, lo, hi, default=None):
    v = args.get(name, default)
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{where}: {name} must be an integer in [{lo}, {hi}], got {v!r:.50}")
    return v


def _spec_choice(where, args, name, choices, default):
    v = args.get(name, default)
    if not isinstance(v, (str, bool)) or v not in choices or type(v) is not type(default):
        raise ValueError(f"{where}: {name} must be one of {list(choices)}, got {v!r:.50}")
    return v


_LEAF_ARGS = {
    "QuantStub": {"dtype"}, "DeQuantStub": set(), "QuantizedFlatten": set(),
    "QuantizedReLU": set(), "QuantizedAdd": {"relu", "out_dtype"},
    "QuantizedLinear": {"in_features", "out_features", "relu", "out_dtype"},
    "QuantizedConv2d": {"in_channels", "out_channels", "kernel_size", "stride", "padding",
                        "relu", "out_dtype"},
}


def check_spec(spec, where="model description"):
    """Validate a module description (:func:`module_spec` output read from a file) against
    hard limits before anything is built. Returns the buffer elements it needs per dtype,
    ``{"int8": n, "int32": n, "float32": n}``; raises ValueError naming the bad entry."""
    need = {"int8": 0, "int32": 0, "float32": 0}
    count = [0]

    def walk(node, path, depth):
        count[0] += 1
        if depth > _MAX_SPEC_DEPTH or count[0] > _MAX_SPEC_MODULES:
            raise ValueError(f"{where}: more than {_MAX_SPEC_MODULES} modules or deeper than "
                             f"{_MAX_SPEC_DEPTH} levels")
        if not isinstance(node, dict) or len(node) != 1:
            raise ValueError(f"{where}: {path}: a module is {{type: arguments}}, got "
                             f"{node!r:.100}")
        (kind, args), = node.items()
        at = f"{where}: {path} ({kind})"
        if kind == "Sequential":
            if not isinstance(args, list):
                raise ValueError(f"{at}: children must be a list, got {args!r:.100}")
            for i, child in enumerate(args):
                walk(child, f"{path}.{i}", depth + 1)
            return
        if kind == "QuantizedResidual":
            if not isinstance(args, dict) or set(args) != {"fn", "add"} or not (
                    isinstance(args["add"], dict) and list(args["add"]) == ["QuantizedAdd"]):
                raise ValueError(f"{at}: needs exactly 'fn' and a QuantizedAdd 'add', got "
                                 f"{args!r:.100}")
            walk(args["fn"], f"{path}.fn", depth + 1)
            walk(args["add"], f"{path}.add", depth + 1)
            return
        if kind == "Identity":
            if args != {}:
                raise ValueError(f"{at}: takes no arguments, got {args!r:.100}")
            return
        if kind not in _LEAF_ARGS:
            raise ValueError(f"{at}: unknown module type {kind!r:.50}")
        if not isinstance(args, dict) or not set(args) <= _LEAF_ARGS[kind]:
            raise ValueError(f"{at}: invalid arguments {args!r:.100} (keys must be among "
                             f"{sorted(_LEAF_ARGS[kind])})")
        if kind == "QuantStub":
            _spec_choice(at, args, "dtype", ("uint8", "int8"), "uint8")
            need["float32"] += 1
            need["int32"] += 1
            return
        if kind in ("QuantizedAdd", "QuantizedConv2d", "QuantizedLinear"):
            _spec_choice(at, args, "relu", (False, True), False)
            _spec_choice(at, args, "out_dtype", ("uint8", "int8", "int32"), "uint8")
        if kind == "QuantizedAdd":
            need["float32"] += 3
            need["int32"] += 3
            return
        if kind == "QuantizedLinear":
            n = _spec_int(at, args, "out_features", 1, _MAX_CHANNELS)
            k = _spec_int(at, args, "in_features", 1, _MAX_CHANNELS)
        elif kind == "QuantizedConv2d":
            n = _spec_int(at, args, "out_channels", 1, _MAX_CHANNELS)
            c = _spec_int(at, args, "in_channels", 1, _MAX_CHANNELS)
            ks = _spec_int(at, args, "kernel_size", 1, _MAX_KERNEL)
            _spec_int(at, args, "stride", 1, _MAX_STRIDE, default=1)
            if args.get("padding") is not None:
                _spec_int(at, args, "padding", 0, _MAX_PADDING)
            k = ks * ks * c
        else:
            return  # DeQuantStub, QuantizedFlatten, QuantizedReLU: no buffers
        need["int8"] += n * k
        need["int32"] += n + 2
        need["float32"] += n + 2

    if not isinstance(spec, dict) or set(spec) != {"quant", "body"}:
        raise ValueError(f"{where}: expected {{'quant': ..., 'body': ...}}, got {spec!r:.100}")
    walk(spec["quant"], "quant", 0)
    if list(spec["quant"]) != ["QuantStub"]:
        raise ValueError(f"{where}: 'quant' must be a QuantStub, got {spec['quant']!r:.100}")
    walk(spec["body"], "body", 0)
    return need


def load_quantized(path, device=None):
    """Rebuild a :class:`QuantizedModel` saved with ``needle.save(qmodel, path)``.

    The file's header and model description are validated first (hard limits, and every
    layer's buffers must match the tensors the file holds), so a hostile file is refused
    with a ValueError before anything is allocated from its metadata.
    """
    entries, meta = serialization.read_header(path)
    if SPEC_KEY not in meta:
        raise ValueError(f"{path}: not a quantized needle model (no {SPEC_KEY!r} metadata)")
    try:
        spec = json.loads(meta[SPEC_KEY])
        config = QConfig.from_json(meta.get(CONFIG_KEY, "{}"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise ValueError(f"{path}: corrupt quantized-model metadata: "
                         f"{type(e).__name__}: {str(e):.200}") from None
    need = check_spec(spec, f"{path}: {SPEC_KEY}")
    for d in QuantizedModel.PACKED:
        if d not in entries:
            raise ValueError(f"{path}: quantized model file has no {d!r} tensor")
        dtype, shape, _, _ = entries[d]
        held = int(np.prod(shape, dtype=object))
        if dtype.name != d or held != need[d]:
            raise ValueError(f"{path}: tensor {d!r} ({dtype.name}, {held} values) does not "
                             f"match the model description, which needs {need[d]} {d} values")
    from ..backend_ndarray import default_device
    device = default_device() if device is None else device
    model = QuantizedModel(build_module(spec["quant"], device), build_module(spec["body"],
                                                                             device), config)
    _move_buffers(model, device)
    tensors = serialization.load(path, device=device)
    model.load_state_dict(tensors)
    return model
