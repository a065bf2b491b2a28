"""needle.save / needle.load: tensors in the safetensors file format.

File layout (little endian throughout):

    [8 bytes]  N, the length of the JSON header, as an unsigned 64-bit integer
    [N bytes]  UTF-8 JSON object: for each tensor name
                   {"dtype": "F32" | "I8" | "U8" | "I32", "shape": [...],
                    "data_offsets": [begin, end]}
               with offsets into the data section, plus "__metadata__" (string -> string):
                   "needle.format_version": "1"
                   "needle.kind": "state_dict" or "model"
                   (quantized models add their configuration, see needle.quant)
               padded with spaces to a multiple of 8 bytes
    [rest]     the raw tensor bytes, row major, back to back with no gaps

Files written by the ``safetensors`` package load here and the other way round. Writes are
atomic: the bytes go to a temporary file in the target directory, which is fsync'ed and then
renamed over the target with ``os.replace``, so a crash never leaves a half-written file.
No pickle is involved anywhere.
"""
import json
import math
import os

import numpy as np

from ._atomic import atomic_write

__all__ = ["save", "load", "load_metadata", "FORMAT_VERSION", "SerializationError"]

FORMAT_VERSION = "1"
#: safetensors dtype code -> little-endian numpy dtype
DTYPE_CODES = {"F32": np.dtype("<f4"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
               "I32": np.dtype("<i4")}
_CODE_OF = {"float32": "F32", "int8": "I8", "uint8": "U8", "int32": "I32"}
_RESERVED = ("needle.format_version", "needle.kind")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors limit


class SerializationError(ValueError):
    """A file that is not a valid needle/safetensors file (the message names file and key)."""


# ------------------------------------------------------------------------------------- save

def _to_numpy(key, value):
    from .autograd import Tensor
    from .backend_ndarray import NDArray
    if isinstance(value, (Tensor, NDArray)):
        arr = value.numpy()
    elif isinstance(value, np.ndarray):
        arr = value
    else:
        raise TypeError(f"needle.save: value for key {key!r} must be a Tensor, NDArray or numpy "
                        f"array, got {type(value).__name__}")
    name = arr.dtype.name
    if name not in _CODE_OF:
        raise TypeError(f"needle.save: key {key!r} has dtype {name}; supported dtypes are "
                        f"{sorted(_CODE_OF)}")
    return np.asarray(arr, dtype=DTYPE_CODES[_CODE_OF[name]])  # tobytes() writes C order


def _collect(obj):
    """(tensors dict, kind, extra metadata) of a Module or a dict of tensors."""
    if isinstance(obj, dict):
        return obj, "state_dict", {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        extra = {}
        hook = getattr(obj, "serialization_metadata", None)
        if callable(hook):
            extra = dict(hook())
        return obj.state_dict(), "model", extra
    raise TypeError(f"needle.save: expected a Module or a dict of tensors, got "
                    f"{type(obj).__name__}")


def _check_metadata(metadata, reserved_ok=False):
    out = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"needle.save: metadata keys and values must be str, got "
                            f"{k!r}: {type(v).__name__}")
        if k in _RESERVED and not reserved_ok:
            raise ValueError(f"needle.save: metadata key {k!r} is reserved")
        out[k] = v
    return out


def _header_bytes(arrays, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for key in sorted(arrays):
        arr = arrays[key]
        header[key] = {"dtype": _CODE_OF[arr.dtype.name], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def save(obj, path, metadata=None):
    """Write a model's state_dict (or a dict of tensors) to a safetensors file, atomically.

    obj: an ``nn.Module`` (its ``state_dict()``: parameters and buffers; a module may add
        string metadata through a ``serialization_metadata()`` method) or a dict mapping str
        keys to Tensors / NDArrays / numpy arrays of dtype float32, int8, uint8 or int32.
    path: file to write (its directory must exist).
    metadata: optional dict of str -> str stored in the header's ``__metadata__``.
    """
    tensors, kind, extra = _collect(obj)
    arrays = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise ValueError(f"needle.save: invalid tensor key {key!r}")
        arrays[key] = _to_numpy(key, value)
    meta = _check_metadata(extra)
    meta.update(_check_metadata(metadata))
    meta["needle.format_version"] = FORMAT_VERSION
    meta["needle.kind"] = kind
    header = _header_bytes(arrays, meta)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"needle.save: directory {directory!r} does not exist")
    with atomic_write(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for key in sorted(arrays):
            f.write(arrays[key].tobytes())


# ------------------------------------------------------------------------------------- load

def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SerializationError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def _read_header(f, path, file_size):
    """Parse and validate the header; return (entries, metadata, data_start)."""
    if file_size < 8:
        raise SerializationError(f"{path}: truncated file ({file_size} bytes; a safetensors "
                                 f"file starts with an 8-byte header length)")
    n = int.from_bytes(f.read(8), "little")
    if n > _MAX_HEADER:
        raise SerializationError(f"{path}: header length {n} exceeds the limit {_MAX_HEADER}")
    if 8 + n > file_size:
        raise SerializationError(f"{path}: truncated header (header length {n} but the file "
                                 f"has only {file_size - 8} bytes after the length)")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SerializationError as e:
        raise SerializationError(f"{path}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SerializationError(f"{path}: corrupt header: not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise SerializationError(f"{path}: corrupt header: expected a JSON object, got "
                                 f"{type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SerializationError(f"{path}: __metadata__ must map strings to strings, got "
                                 f"{metadata!r}")
    version = metadata.get("needle.format_version")
    if version is not None and version != FORMAT_VERSION:
        raise SerializationError(f"{path}: unsupported needle.format_version {version!r} "
                                 f"(this needle reads {FORMAT_VERSION!r})")

    entries = {}
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SerializationError(f"{path}: entry {key!r} must have exactly dtype, shape "
                                     f"and data_offsets, got {info!r}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPE_CODES:
            raise SerializationError(f"{path}: tensor {key!r} has unsupported dtype {code!r} "
                                     f"(supported: {sorted(DTYPE_CODES)})")
        if not isinstance(shape, list) or not all(
                type(d) is int and d >= 0 for d in shape):
            raise SerializationError(f"{path}: tensor {key!r} has invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise SerializationError(f"{path}: tensor {key!r} has invalid data_offsets "
                                     f"{offsets!r}")
        nbytes = math.prod(shape) * DTYPE_CODES[code].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise SerializationError(
                f"{path}: tensor {key!r} with dtype {code} and shape {shape} needs {nbytes} "
                f"bytes but data_offsets {offsets} span {offsets[1] - offsets[0]}")
        entries[key] = (DTYPE_CODES[code], tuple(shape), offsets[0], offsets[1])

    data_size = file_size - 8 - n
    expected = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if begin != expected:
            what = "overlaps the previous tensor" if begin < expected else "leaves a gap"
            raise SerializationError(f"{path}: tensor {key!r} data_offsets [{begin}, {end}] "
                                     f"{what} (expected to start at {expected})")
        expected = end
    if expected > data_size:
        raise SerializationError(f"{path}: truncated data: the header describes {expected} "
                                 f"bytes of tensor data, the file holds {data_size}")
    if expected < data_size:
        raise SerializationError(f"{path}: {data_size - expected} unexpected trailing bytes "
                                 f"after the tensor data")
    return entries, metadata, 8 + n


def load_metadata(path):
    """The ``__metadata__`` dict (str -> str) of a safetensors file, after validating it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        _, metadata, _ = _read_header(f, path, os.fstat(f.fileno()).st_size)
    return metadata


def load_numpy(path):
    """``(arrays, metadata)``: the tensors of a file as numpy arrays, and its metadata."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        entries, metadata, start = _read_header(f, path, size)
        data = f.read()
    if len(data) != size - start:
        raise SerializationError(f"{path}: file changed while reading")
    arrays = {}
    for key, (dtype, shape, begin, end) in entries.items():
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=begin)
        arrays[key] = arr.reshape(shape).astype(dtype.newbyteorder("="))
    return arrays, metadata


def load(path, device=None, return_metadata=False):
    """Read a safetensors file written by ``needle.save`` (or by the safetensors package).

    path: the file. device: where the tensors go (default ``needle.default_device()``).
    Returns ``dict[str, Tensor]`` (requires_grad=False, dtypes as stored), or
    ``(tensors, metadata)`` with ``return_metadata=True``. Invalid files raise
    ``SerializationError`` (a ValueError) naming the file, the key and the bad values.
    """
    arrays, metadata = load_numpy(path)
    tensors = {k: _tensor(a, device) for k, a in arrays.items()}
    return (tensors, metadata) if return_metadata else tensors


def _tensor(a, device):
    from .autograd import Tensor
    from .backend_ndarray import NDArray, default_device
    device = default_device() if device is None else device
    # build 0-d arrays as a reshaped (1,) array so their shape survives
    nd = NDArray(a.reshape(a.shape or (1,)), device=device, dtype=a.dtype.name)
    if a.ndim == 0:
        nd = nd.reshape(())
    return Tensor(nd, requires_grad=False)
