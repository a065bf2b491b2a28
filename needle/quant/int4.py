"""Weight-only int4 weights (group-wise scales) and their matrix product.

    w4 = Int4Weight.from_float(w, group=64, scheme="symmetric")   # w float32 [N, K]
    y = w4.matmul(x)                                               # x float32 [M, K] -> [M, N]

The math (quantization, nibble order, the product's exact float32 order) is
``reference.quantize_int4`` / ``pack_int4`` / ``int4_gemm_reference``. ``matmul`` runs the
backend's ``int4_gemm`` kernel when the device has one (the C++ CPU backend, AVX-512, AVX2
or scalar chosen at run time, or the CUDA backend) and the numpy reference otherwise or
with ``NEEDLE_QUANT_REFERENCE=1``; both give the same bits.

File format (one weight, under a key prefix ``p``, in a needle safetensors file):
``p.codes`` uint8 [N, ceil(K/2)], ``p.scales`` float32 [N, G], ``p.zeros`` uint8 [N, G]
(G = ceil(K / group); zero points 8 for the symmetric scheme), and the JSON description
``{"shape": [N, K], "group": group, "scheme": scheme}`` kept by the file's model metadata.
:func:`check_int4_entries` validates the header entries against such a description before
anything is read.
"""
import json

import numpy as np

from .. import serialization
from ..backend_ndarray import NDArray, default_device
from ..serialization import SerializationError
from . import reference as R
from .kernels import _force_reference

__all__ = ["Int4Weight", "has_native_int4", "check_int4_description", "check_int4_entries",
           "INT4_GROUPS", "MAX_INT4_DIM", "INT4_KEY", "save_int4", "load_int4",
           "int4_file_parts", "read_int4_descriptions"]

#: group sizes the kit documents (any positive multiple of 8 works)
INT4_GROUPS = (32, 64, 128)
#: largest N or K a file may describe (keeps every allocation bounded)
MAX_INT4_DIM = 1 << 20


def has_native_int4(device):
    mod = getattr(device, "mod", None)
    return mod is not None and hasattr(mod, "int4_gemm")


def _integers(what, a, hi):
    """``a`` as an integer array with values in [0, hi] (ValueError naming the first bad one)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise ValueError(f"int4 weight {what} must be integers, got dtype {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > hi):
        bad = int(np.argmax((a < 0) | (a > hi)))
        raise ValueError(f"int4 weight {what}: value {int(a.flat[bad])} at flat index {bad} is "
                         f"outside [0, {hi}]")
    return a


def _frozen(a, dtype):
    out = np.array(a, dtype=dtype, order="C", copy=True)
    out.setflags(write=False)
    return out


class Int4Weight:
    """A float weight W [N, K] (rows = output channels) as group-wise int4.

    codes uint8 [N, ceil(K/2)] (packed), scales float32 [N, G], zeros uint8 [N, G];
    ``group`` values per group, ``scheme`` "symmetric" | "asymmetric".
    """

    def __init__(self, codes, scales, zeros, shape, group, scheme, device=None):
        n, k = (int(d) for d in shape)
        ng = R.int4_groups(k, group)
        if scheme not in R.INT4_SCHEMES:
            raise ValueError(f"int4 scheme must be one of {R.INT4_SCHEMES}, got {scheme!r}")
        # read-only copies: the device copies are made once, so a later edit of these arrays
        # would be silently ignored; values are checked before the casts, which would wrap
        self.codes = _frozen(_integers("codes", codes, 255), np.uint8)
        self.scales = _frozen(np.asarray(scales), np.float32)
        self.zeros = _frozen(_integers("zeros", zeros, 255), np.uint8)
        for what, arr, want in (("codes", self.codes, (n, -(-k // 2))),
                                ("scales", self.scales, (n, ng)), ("zeros", self.zeros, (n, ng))):
            if arr.shape != want:
                raise ValueError(f"int4 weight {what} must have shape {want}, got {arr.shape}")
        if not np.all(np.isfinite(self.scales)):
            bad = int(np.argmax(~np.isfinite(self.scales)))
            raise ValueError(f"int4 weight: scale {self.scales.flat[bad]} at flat index {bad} of "
                             f"scales {self.scales.shape} is not finite")
        self.n, self.k, self.group, self.scheme = n, k, int(group), scheme
        self._check_zero_points()
        self.device = default_device() if device is None else device
        self._handles = None

    @classmethod
    def from_float(cls, w, group=64, scheme="symmetric", device=None):
        """Quantize a float weight [N, K] (numpy or NDArray/Tensor) group by group."""
        w = w.numpy() if hasattr(w, "numpy") else np.asarray(w)
        codes, scales, zeros = R.quantize_int4(w, group, scheme)
        return cls(R.pack_int4(codes), scales, zeros, w.shape, group, scheme, device)

    def dequantize(self):
        """The float32 weights [N, K] the int4 codes stand for (for checks; the kernel never
        forms them)."""
        return R.dequantize_int4(self.codes, self.scales, self.zeros, self.group, self.k)

    @property
    def nbytes(self):
        return self.codes.nbytes + self.scales.nbytes + self.zeros.nbytes

    def _check_zero_points(self):
        if self.zeros.size and int(self.zeros.max()) > 15:
            bad = int(np.argmax(self.zeros > 15))
            raise ValueError(f"int4 weight: zero point {int(self.zeros.flat[bad])} at flat "
                             f"index {bad} of zeros {self.zeros.shape} is outside [0, 15]")

    def _device_arrays(self):
        """(codes, scales, zeros) NDArrays on the device, made once. The zero points were
        checked by the constructor (and the arrays are read-only), so ``matmul`` can pass
        ``zeros_checked=True`` (on CUDA the per-call check copies them to the host)."""
        if self._handles is None:
            d = self.device
            self._handles = (NDArray(self.codes, device=d, dtype="uint8"),
                             NDArray(self.scales, device=d, dtype="float32"),
                             NDArray(self.zeros, device=d, dtype="uint8"))
        return self._handles

    def matmul(self, x):
        """``x [M, K] @ W^T`` -> float32 numpy [M, N] (x: float numpy [M, K] or [K])."""
        x = np.asarray(x, dtype=np.float32)
        vector = x.ndim == 1
        x = x.reshape(1, -1) if vector else x
        if x.ndim != 2 or x.shape[1] != self.k:
            raise ValueError(f"int4 matmul: x must be [M, {self.k}], got {x.shape}")
        if _force_reference() or not has_native_int4(self.device):
            y = R.int4_gemm_reference(x, self.codes, self.scales, self.zeros, self.group, self.k)
        else:
            codes, scales, zeros = self._device_arrays()
            xa = NDArray(np.ascontiguousarray(x), device=self.device, dtype="float32")
            out = NDArray.make((x.shape[0], self.n), device=self.device, dtype="float32")
            self.device.int4_gemm(xa._handle, codes._handle, scales._handle, zeros._handle,
                                  out._handle, x.shape[0], self.n, self.k, self.group,
                                  zeros_checked=True)
            y = out.numpy()
        return y[0] if vector else y

    # files ------------------------------------------------------------------------------
    def description(self):
        return {"shape": [self.n, self.k], "group": self.group, "scheme": self.scheme}

    def tensors(self, prefix):
        return {f"{prefix}.codes": self.codes, f"{prefix}.scales": self.scales,
                f"{prefix}.zeros": self.zeros}

    @classmethod
    def from_tensors(cls, prefix, description, arrays, device=None, where="int4 weight"):
        """Rebuild from a file's arrays (already checked by :func:`check_int4_entries`); the
        values are checked too: zero points in [0, 15] (8 for symmetric), scales finite > 0."""
        n, k, group, scheme = check_int4_description(description, where)
        zeros = np.asarray(arrays[f"{prefix}.zeros"])
        scales = np.asarray(arrays[f"{prefix}.scales"])
        if zeros.size and zeros.max() > 15:
            raise SerializationError(f"{where}: {prefix}.zeros holds {int(zeros.max())}, "
                                     f"outside [0, 15]")
        if scheme == "symmetric" and np.any(zeros != 8):
            raise SerializationError(f"{where}: {prefix}.zeros must all be 8 for the "
                                     f"symmetric scheme")
        if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise SerializationError(f"{where}: {prefix}.scales must be finite and > 0")
        return cls(arrays[f"{prefix}.codes"], scales, zeros, (n, k), group, scheme, device)


def check_int4_description(d, where="int4 weight"):
    """``(n, k, group, scheme)`` of a JSON weight description, or SerializationError."""
    if not isinstance(d, dict) or set(d) != {"shape", "group", "scheme"}:
        raise SerializationError(f"{where}: an int4 weight is described by exactly shape, "
                                 f"group and scheme, got {d!r:.200}")
    shape, group, scheme = d["shape"], d["group"], d["scheme"]
    if (not isinstance(shape, list) or len(shape) != 2 or
            not all(type(v) is int and 1 <= v <= MAX_INT4_DIM for v in shape)):
        raise SerializationError(f"{where}: int4 shape must be [N, K] with 1 <= N, K <= "
                                 f"{MAX_INT4_DIM}, got {shape!r:.100}")
    if type(group) is not int or not 8 <= group <= MAX_INT4_DIM or group % 8:
        raise SerializationError(f"{where}: int4 group must be a positive multiple of 8, got "
                                 f"{group!r:.50}")
    if scheme not in R.INT4_SCHEMES:
        raise SerializationError(f"{where}: int4 scheme must be one of {R.INT4_SCHEMES}, got "
                                 f"{scheme!r:.50}")
    return shape[0], shape[1], group, scheme


def check_int4_entries(entries, prefix, description, where="int4 weight"):
    """Check a file's header ``entries`` (from ``serialization.read_header``) hold exactly the
    tensors the description needs, with the right dtype and shape."""
    n, k, group, _ = check_int4_description(description, where)
    ng = R.int4_groups(k, group)
    for suffix, dtype, shape in (("codes", "uint8", (n, -(-k // 2))),
                                 ("scales", "float32", (n, ng)), ("zeros", "uint8", (n, ng))):
        key = f"{prefix}.{suffix}"
        if key not in entries:
            raise SerializationError(f"{where}: the file has no tensor {key!r}")
        got_dtype, got_shape = entries[key][0], tuple(entries[key][1])
        if got_dtype.name != dtype or got_shape != shape:
            raise SerializationError(f"{where}: tensor {key!r} is {got_dtype.name} {got_shape}, "
                                     f"the description needs {dtype} {shape}")


#: metadata key of the JSON {name: description} of the int4 weights in a file
INT4_KEY = "needle.quant.int4"
#: most int4 weights one file may describe
MAX_INT4_WEIGHTS = 4096


def int4_file_parts(weights):
    """(tensors, metadata) that store ``weights`` ({name: Int4Weight}) in a needle file."""
    tensors, desc = {}, {}
    for name, w in weights.items():
        tensors.update(w.tensors(name))
        desc[name] = w.description()
    return tensors, {INT4_KEY: json.dumps(desc, sort_keys=True)}


def save_int4(path, weights, tensors=None, metadata=None):
    """Write ``weights`` ({name: Int4Weight}) and optional extra float tensors to ``path``."""
    parts, meta = int4_file_parts(weights)
    overlap = set(parts) & set(tensors or {})
    if overlap:
        raise ValueError(f"save_int4: tensor names {sorted(overlap)} are used twice")
    parts.update(tensors or {})
    meta.update(metadata or {})
    serialization.save(parts, path, metadata=meta)


def read_int4_descriptions(path, entries, meta):
    """{name: description} of a file's int4 weights, every one checked against the header
    entries (dtype and shape of codes, scales, zeros), before anything is read."""
    if INT4_KEY not in meta:
        raise SerializationError(f"{path}: no {INT4_KEY!r} metadata: not an int4 weight file")
    try:
        desc = json.loads(meta[INT4_KEY])
    except (ValueError, RecursionError) as e:
        raise SerializationError(f"{path}: corrupt {INT4_KEY!r} metadata: {str(e):.200}") from None
    if not isinstance(desc, dict) or len(desc) > MAX_INT4_WEIGHTS:
        raise SerializationError(f"{path}: {INT4_KEY!r} must map at most {MAX_INT4_WEIGHTS} "
                                 f"names to descriptions")
    for name, d in desc.items():
        check_int4_entries(entries, name, d, f"{path}: int4 weight {name!r}")
    return desc


def load_int4(path, device=None):
    """``(weights {name: Int4Weight}, other tensors {name: numpy}, metadata)`` of a file
    written by :func:`save_int4`. Every field is validated against the file first; a bad file
    raises SerializationError naming it."""
    entries, meta = serialization.read_header(path)
    desc = read_int4_descriptions(path, entries, meta)
    arrays, _ = serialization.load_numpy(path)
    weights = {name: Int4Weight.from_tensors(name, d, arrays, device, f"{path}")
               for name, d in desc.items()}
    owned = {f"{n}.{s}" for n in desc for s in ("codes", "scales", "zeros")}
    rest = {k: v for k, v in arrays.items() if k not in owned}
    return weights, rest, meta
