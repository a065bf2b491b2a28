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

__all__ = ["save", "load", "load_metadata", "read_header", "write_safetensors",
           "read_safetensors_header", "FORMAT_VERSION", "SerializationError"]

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
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("="))  # native byte order


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


def write_safetensors(f, arrays, metadata):
    """Write ``arrays`` and ``metadata`` to the binary file ``f`` in the layout of the module
    docstring (exercise 1.1 of notebook 01_save_load).

    arrays: dict str -> numpy array of dtype float32, int8, uint8 or int32 (native byte order,
        any strides), already checked by the caller (``save``).
    metadata: dict str -> str, stored as the header's ``"__metadata__"`` object.

    Header entries and tensor data in sorted name order; the JSON header (compact, UTF-8)
    padded with spaces to a multiple of 8 bytes; each tensor's bytes little-endian and row
    major, back to back from offset 0 of the data section.
    """
    ### BEGIN SOLUTION
    names = sorted(arrays)
    header = {"__metadata__": metadata}
    offset = 0
    for key in names:
        arr = arrays[key]
        header[key] = {"dtype": _CODE_OF[arr.dtype.name], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for key in names:
        arr = arrays[key]
        f.write(arr.astype(DTYPE_CODES[_CODE_OF[arr.dtype.name]], copy=False).tobytes())
    ### END SOLUTION


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

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"needle.save: directory {directory!r} does not exist")
    with atomic_write(path, "wb") as f:
        write_safetensors(f, arrays, meta)


# ------------------------------------------------------------------------------------- load

class _DuplicateKey(SerializationError):
    """A JSON object of the header names a key twice (the message does not name the file)."""


def _no_duplicates(pairs):
    """``object_pairs_hook`` for ``json.loads``: a dict, or _DuplicateKey for a repeated key."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {k!r} in header")
        out[k] = v
    return out


#: hard limits of a header entry (docs/ARCHITECTURE.md, "Limits and validation")
MAX_DIMS = 64
MAX_ELEMENTS = 2**60


def open_regular(path):
    """Open ``path`` for binary reading; only regular files (symlinks are followed to theirs).

    A FIFO, socket or device would block or never end: it is refused without reading, and
    without blocking (the file is opened non-blocking, checked with fstat, then switched back).
    """
    import fcntl
    import stat
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SerializationError(f"{path}: not a regular file (mode {stat.filemode(mode)}); "
                                     f"needle reads checkpoints from regular files only")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_entry(path, key, info):
    """(numpy dtype, shape, begin, end) of one header entry, or SerializationError."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise SerializationError(f"{path}: entry {key!r} must have exactly dtype, shape "
                                 f"and data_offsets, got {info!r:.200}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in DTYPE_CODES:
        raise SerializationError(f"{path}: tensor {key!r} has unsupported dtype {code!r:.50} "
                                 f"(supported: {sorted(DTYPE_CODES)})")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < MAX_ELEMENTS for d in shape)):
        raise SerializationError(f"{path}: tensor {key!r} has invalid shape {shape!r:.200} "
                                 f"(at most {MAX_DIMS} non-negative integer dimensions)")
    count = math.prod(shape)
    if count >= MAX_ELEMENTS:
        raise SerializationError(f"{path}: tensor {key!r} has {count} elements, more than the "
                                 f"limit 2^60")
    # numpy refuses a shape whose nonzero dimensions overflow, even with no element at all
    if math.prod(d for d in shape if d) >= MAX_ELEMENTS:
        raise SerializationError(f"{path}: tensor {key!r} has shape {shape} whose nonzero "
                                 f"dimensions multiply past the limit 2^60")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise SerializationError(f"{path}: tensor {key!r} has invalid data_offsets "
                                 f"{offsets!r:.200}")
    nbytes = count * DTYPE_CODES[code].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise SerializationError(
            f"{path}: tensor {key!r} with dtype {code} and shape {shape} needs {nbytes} "
            f"bytes but data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return DTYPE_CODES[code], tuple(shape), offsets[0], offsets[1]


def check_header_length(path, n, file_size):
    """SerializationError unless a header of ``n`` bytes fits the limit and a file of
    ``file_size`` bytes (after its 8-byte length); to call before reading the header."""
    if n > _MAX_HEADER:
        raise SerializationError(f"{path}: header length {n} exceeds the limit {_MAX_HEADER}")
    if 8 + n > file_size:
        raise SerializationError(f"{path}: truncated header (header length {n} but the file "
                                 f"has only {file_size - 8} bytes after the length)")


def read_safetensors_header(f, path, file_size):
    """Read the header of a safetensors file (exercise 1.2 of notebook 01_save_load).

    f: the file, open for binary reading at offset 0; path: its name (for messages);
    file_size: its size in bytes (at least 8).
    Returns ``(header, data_start)``: the header's JSON object as parsed (a dict of tensor
    entries plus ``"__metadata__"``; the caller checks it), and the file offset where the data
    section begins; ``f`` is left there. Call ``check_header_length(path, n, file_size)`` on the
    header length before reading the header, and parse the JSON with
    ``json.loads(text, object_pairs_hook=_no_duplicates)`` (a key given twice is an error).
    Invalid UTF-8 or JSON raise what decoding raises; the caller reports it.
    """
    ### BEGIN SOLUTION
    n = int.from_bytes(f.read(8), "little")
    check_header_length(path, n, file_size)
    raw = f.read(n)
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates), 8 + n
    ### END SOLUTION


def _read_header(f, path, file_size):
    """Parse and validate the whole header against the file size before any tensor is read;
    return (entries, metadata, data_start)."""
    if file_size < 8:
        raise SerializationError(f"{path}: truncated file ({file_size} bytes; a safetensors "
                                 f"file starts with an 8-byte header length)")
    try:
        header, data_start = read_safetensors_header(f, path, file_size)
    except _DuplicateKey as e:
        raise SerializationError(f"{path}: {e}") from None
    except SerializationError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError also covers JSONDecodeError and integers beyond Python's digit limit;
        # RecursionError a pathologically nested header
        raise SerializationError(f"{path}: corrupt header: not valid UTF-8 JSON "
                                 f"({type(e).__name__}: {str(e):.200})") from None
    if f.tell() != data_start or not 8 <= data_start <= file_size:
        raise SerializationError(f"{path}: the header ends at byte {f.tell()} but the data "
                                 f"section is said to start at byte {data_start} (a file "
                                 f"that changed while reading?)")
    if not isinstance(header, dict):
        raise SerializationError(f"{path}: corrupt header: expected a JSON object, got "
                                 f"{type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SerializationError(f"{path}: __metadata__ must map strings to strings, got "
                                 f"{metadata!r:.200}")
    version = metadata.get("needle.format_version")
    if version is not None and version != FORMAT_VERSION:
        raise SerializationError(f"{path}: unsupported needle.format_version {version!r:.50} "
                                 f"(this needle reads {FORMAT_VERSION!r})")

    entries = {key: _check_entry(path, key, info) for key, info in header.items()}
    data_size = file_size - data_start
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
    return entries, metadata, data_start


def read_header(path):
    """``(entries, metadata)`` of a safetensors file after validating its whole header against
    the file size; nothing else is read. entries: name -> (numpy dtype, shape, begin, end)."""
    path = os.fspath(path)
    with open_regular(path) as f:
        entries, metadata, _ = _read_header(f, path, os.fstat(f.fileno()).st_size)
    return entries, metadata


def load_metadata(path):
    """The ``__metadata__`` dict (str -> str) of a safetensors file, after validating it."""
    return read_header(path)[1]


def _iter_entries(path):
    """Yield ``metadata``, then ``(key, dtype, shape, fill)`` per tensor in file order, where
    ``fill(buffer)`` reads the tensor's bytes into a writable byte memoryview of exactly its
    size (in pieces if the caller likes: successive calls continue where the last stopped).
    Nothing but the header is read before the caller asks."""
    path = os.fspath(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        entries, metadata, start = _read_header(f, path, size)
        yield metadata
        for key, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2]):
            f.seek(start + begin)

            def fill(buf, key=key):
                got = 0
                while got < len(buf):
                    n = f.readinto(buf[got:])
                    if not n:
                        raise SerializationError(f"{path}: file changed while reading (tensor "
                                                 f"{key!r} ends early)")
                    got += n

            yield key, dtype, shape, fill


def _native(arr, dtype):
    """``arr`` (raw bytes of file dtype ``dtype``) in native byte order (a no-op on x86)."""
    if dtype == dtype.newbyteorder("="):
        return arr
    return arr.view(dtype).astype(dtype.newbyteorder("="))


def load_numpy(path):
    """``(arrays, metadata)``: the tensors of a file as numpy arrays, and its metadata."""
    it = _iter_entries(path)
    metadata = next(it)
    arrays = {}
    for key, dtype, shape, fill in it:
        arr = np.empty(shape, dtype=dtype.newbyteorder("="))
        fill(memoryview(arr.reshape(-1).view(np.uint8)))
        arrays[key] = _native(arr, dtype)
    return arrays, metadata


#: tensors larger than this are copied to the device in pieces of this size
_CHUNK_BYTES = 8 << 20


def load(path, device=None, return_metadata=False):
    """Read a safetensors file written by ``needle.save`` (or by the safetensors package).

    path: the file (a regular file). device: where the tensors go (default
    ``needle.default_device()``). Returns ``dict[str, Tensor]`` (requires_grad=False, dtypes
    as stored), or ``(tensors, metadata)`` with ``return_metadata=True``. Invalid files raise
    ``SerializationError`` (a ValueError) naming the file, the key and the bad values; the
    whole header is validated against the file size before any tensor is allocated. Large
    tensors are streamed to the device in 8 MiB pieces: peak memory is the result plus 16 MiB.
    """
    it = _iter_entries(path)
    metadata = next(it)
    tensors = {key: _read_tensor(dtype, shape, fill, device) for key, dtype, shape, fill in it}
    return (tensors, metadata) if return_metadata else tensors


def load_checkpoint(path, device=None, return_metadata=False):
    """``load`` for the checkpoints the course ships (the pretrained models of the notebooks).

    Until notebook 01's reader is written (its stub raises NotImplementedError) the file is
    read with the ``safetensors`` package instead, so that the later notebooks run whatever
    the order in which their exercises are done. Same arguments and result as ``load``.
    """
    try:
        return load(path, device=device, return_metadata=return_metadata)
    except NotImplementedError:
        pass
    from safetensors import safe_open
    path = os.fspath(path)
    open_regular(path).close()
    with safe_open(path, "np") as f:
        metadata = dict(f.metadata() or {})
        tensors = {key: _tensor(np.ascontiguousarray(f.get_tensor(key)), device)
                   for key in f.keys()}
    return (tensors, metadata) if return_metadata else tensors


def _read_tensor(dtype, shape, fill, device):
    from .autograd import Tensor
    from .backend_ndarray import NDArray, default_device
    device = default_device() if device is None else device
    native = dtype.newbyteorder("=")
    count = math.prod(shape)
    if count * dtype.itemsize <= _CHUNK_BYTES:
        arr = np.empty(shape, dtype=native)
        fill(memoryview(arr.reshape(-1).view(np.uint8)))
        return _tensor(_native(arr, dtype), device)
    flat = NDArray.make((count,), device=device, dtype=native.name)
    step = _CHUNK_BYTES // dtype.itemsize
    chunk = np.empty(step, dtype=native)
    for i in range(0, count, step):
        part = chunk[:min(step, count - i)]
        fill(memoryview(part.view(np.uint8)))
        flat[i:i + part.size] = NDArray(_native(part, dtype), device=device, dtype=native.name)
    return Tensor(flat.reshape(shape), requires_grad=False)


def _tensor(a, device):
    from .autograd import Tensor
    from .backend_ndarray import NDArray, default_device
    device = default_device() if device is None else device
    # build 0-d arrays as a reshaped (1,) array so their shape survives
    nd = NDArray(a.reshape(a.shape or (1,)), device=device, dtype=a.dtype.name)
    if a.ndim == 0:
        nd = nd.reshape(())
    return Tensor(nd, requires_grad=False)
