"""NDArray: a strided n-dimensional array over a flat backend buffer.

An ``NDArray`` is a view (shape, strides, offset, all in elements) into a flat ``Array`` that
lives on a device. Views (reshape of compact arrays, permute, broadcast_to, getitem, flip,
as_strided) share the buffer; ``compact()`` copies a view into a fresh row-major buffer.
Five dtypes exist: float32, float64, int8, uint8, int32. Every device holds float32 and the
three integer dtypes; float64 lives only where the backend lists it in its ``DTYPES`` (the
numpy backend, ``cpu_numpy()``), and asking for it elsewhere raises a TypeError that says so.
Every dtype supports creation, numpy round trips, views, setitem, ``astype`` and
``to(device)``; math needs a float dtype (float32 with float64 gives float64, as in numpy).

Devices: ``cpu()`` (C++ backend), ``cuda()`` (CUDA backend), ``cpu_numpy()`` (numpy backend).

Data given without a dtype becomes float32 (the kit's default, and the course's compiled
backend), except under ``NEEDLE_BACKEND=np`` (the course's numpy backend), where numpy's own
float dtype is kept on a device that holds it (see ``implicit_dtype``).
"""
import builtins
import operator
import os
from functools import lru_cache, reduce

import numpy as np

from . import ndarray_backend_numpy

DTYPES = ("float32", "float64", "int8", "uint8", "int32")
FLOAT_DTYPES = ("float32", "float64")
#: the dtypes every backend holds; a backend module that holds more lists them in ``DTYPES``
BASE_DTYPES = ("float32", "int8", "uint8", "int32")
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


def prod(x):
    return reduce(operator.mul, x, 1)


def normalize_dtype(dtype):
    """Return the dtype name (one of ``DTYPES``) of a str or numpy dtype; None -> "float32"."""
    if dtype is None:
        return "float32"
    if type(dtype) is str and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}") from None
    if name not in DTYPES:
        raise TypeError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}")
    return name


def _shape_arg(shape):
    """Accept ``f((2, 3))``, ``f([2, 3])`` and ``f(2, 3)`` alike; return a tuple of ints."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


#: largest element count of an array or view, and bound of every index (as in the native
#: backends, src/common/checked_size.h): byte offsets then always fit in int64
MAX_ELEMENTS = 2**60
_INT64_MAX = 2**63 - 1


def check_view(shape, strides, offset, buffer_size, what="view"):
    """Raise ValueError unless the view (tuples of ints, in elements) is valid for a buffer of
    ``buffer_size`` elements: equal lengths, no negative dimension, fewer than 2^60 elements,
    strides and offset within int64, and every element it reaches inside the buffer. An empty
    view reaches nothing."""
    if len(shape) != len(strides):
        raise ValueError(f"{what}: shape {shape} and strides {strides} differ in length")
    if any(n < 0 for n in shape):
        raise ValueError(f"{what}: negative dimension in shape {shape}")
    if any(not -_INT64_MAX - 1 <= v <= _INT64_MAX for v in strides + (offset,)):
        raise ValueError(f"{what}: strides {strides} / offset {offset} are outside int64")
    if prod(n for n in shape if n) >= MAX_ELEMENTS:  # even an empty shape must be representable
        raise ValueError(f"{what}: shape {shape} has more than the limit of 2^60 elements")
    if 0 in shape:
        return
    lo = hi = offset
    for n, st in zip(shape, strides):
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    if lo < 0 or hi >= buffer_size:
        raise ValueError(f"{what}: shape {shape} strides {strides} offset {offset} reaches "
                         f"elements [{lo}, {hi}] outside a buffer of {buffer_size} elements")


def _as_int(v, what):
    """A Python int from an int-like value (bools and floats are refused, not truncated)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what} must be integers, got {v!r}")
    return int(v)


def _ints(values, what):
    return tuple(_as_int(v, what) for v in values)


def _saturate_int(a, dtype):
    """An integer/bool numpy array clipped to the range of the integer ``dtype``, without a
    wider temporary: unchanged when its own dtype already fits (the cast happens later),
    else clipped once in its own dtype."""
    if a.dtype.kind == "b":
        return a
    lo, hi = INT_RANGES[dtype]
    info = np.iinfo(a.dtype)
    if info.min >= lo and info.max <= hi:
        return a
    return np.clip(a, builtins.max(lo, info.min), builtins.min(hi, info.max))


@lru_cache(maxsize=4096)
def _compact_strides(shape):
    stride, res = 1, []
    for n in reversed(shape):
        res.append(stride)
        stride *= n
    return tuple(res[::-1])


class BackendDevice:
    """A device backed by one backend module (or ``None`` when that backend is unavailable)."""

    def __init__(self, name, mod):
        self.name = name
        self.mod = mod
        self._dtypes = tuple(getattr(mod, "DTYPES", BASE_DTYPES))

    def __eq__(self, other):
        return isinstance(other, BackendDevice) and self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return self.name + "()"

    # A device is a handle on a process-wide backend: copies are the device itself, and a pickle
    # stores only its name.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (device_by_name, (self.name,))

    def __getattr__(self, name):
        # Backend functions are looked up on the module once, then cached on the device.
        if name.startswith("__"):
            return self._backend_dunder(name)
        mod = self.__dict__.get("mod")
        if mod is None:
            why = BACKEND_IMPORT_ERRORS.get(f"ndarray_backend_{self.name}", "no device is present")
            raise RuntimeError(f"device {self.name}() is not available: {why}")
        value = getattr(mod, name)
        self.__dict__[name] = value
        return value

    # Module-level names every Python module has: never offered as device attributes.
    _MODULE_DUNDERS = frozenset(("__name__", "__doc__", "__file__", "__loader__", "__spec__",
                                 "__package__", "__builtins__", "__cached__", "__path__", "__dict__"))

    def _backend_dunder(self, name):
        """A dunder the backend declares (``__device_name__``, ``__tile_size__``, as the course's
        backends do); protocol lookups (``__array__``, ``__len__``, ...) still fail."""
        mod = self.__dict__.get("mod")
        if mod is None or name in self._MODULE_DUNDERS or name not in vars(mod):
            raise AttributeError(f"{self!r} has no attribute {name!r}")
        return vars(mod)[name]

    def enabled(self):
        return self.mod is not None

    @property
    def dtypes(self):
        """The dtypes this device holds: ``BASE_DTYPES``, or the backend module's ``DTYPES``."""
        return self._dtypes

    def check_dtype(self, dtype):
        """``dtype`` normalised (see ``normalize_dtype``); a TypeError naming it and the way out
        when this device cannot hold it (float64 on the compiled backends)."""
        dtype = normalize_dtype(dtype)
        if dtype not in self._dtypes:
            raise TypeError(
                f"dtype {dtype} is not available on device {self!r}, which holds {', '.join(self.dtypes)}; "
                f"use device cpu_numpy() (or NEEDLE_BACKEND=np) for {dtype} arrays, or convert the "
                f"data to one of those dtypes first (e.g. .astype('float32'))")
        return dtype

    # creators ------------------------------------------------------------------------------
    def _random(self, draw, shape, dtype):
        # float64 arrays get unrounded float64 draws; every other dtype the float32 ones
        dtype = self.check_dtype(dtype)
        values = draw(*_shape_arg(shape)).astype(np.float64 if dtype == "float64" else np.float32)
        return NDArray(values, device=self, dtype=dtype)

    def randn(self, *shape, dtype="float32"):
        """Standard normal samples (numpy's global RNG), shape ``shape``."""
        return self._random(np.random.randn, shape, dtype)

    def rand(self, *shape, dtype="float32"):
        """Uniform [0, 1) samples (numpy's global RNG), shape ``shape``."""
        return self._random(np.random.rand, shape, dtype)

    def one_hot(self, n, i, dtype="float32"):
        """Rows of the n x n identity picked by the integer indices ``i`` (shape i.shape + (n,))."""
        dtype = self.check_dtype(dtype)
        idx = np.asarray(i.numpy() if isinstance(i, NDArray) else i).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"one_hot: indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
        return NDArray(np.eye(n, dtype=dtype)[idx], device=self, dtype=dtype)

    def empty(self, shape, dtype="float32"):
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        return NDArray.make(shape, device=self, dtype=dtype)

    def full(self, shape, fill_value, dtype="float32"):
        arr = self.empty(shape, dtype)
        arr.fill(fill_value)
        return arr

    def zeros(self, *shape, dtype="float32"):
        return self.full(_shape_arg(shape), 0, dtype)

    def ones(self, *shape, dtype="float32"):
        return self.full(_shape_arg(shape), 1, dtype)


_CPU_NUMPY_DEVICE = BackendDevice("cpu_numpy", ndarray_backend_numpy)


def cpu_numpy():
    """The numpy reference backend (always available)."""
    return _CPU_NUMPY_DEVICE


BACKEND_IMPORT_ERRORS = {}  # module name -> why it could not be imported


def _load_backend_from(directory, name):
    """The extension module ``name`` from ``directory`` (``$NEEDLE_BACKEND_DIR``: e.g. the
    sanitizer build's modules), registered under this package's name."""
    import glob
    import importlib.util
    import os
    import sys
    found = sorted(glob.glob(os.path.join(directory, f"{name}.*so"))) + sorted(
        glob.glob(os.path.join(directory, f"{name}.pyd")))
    if not found:
        raise ModuleNotFoundError(f"no {name} module in NEEDLE_BACKEND_DIR={directory}")
    full = f"{__package__}.{name}"
    spec = importlib.util.spec_from_file_location(full, found[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[full]
        raise
    return module


def _import_backend(name):
    """The compiled backend module, or None. A module that is missing is normal (not built); one
    that exists but fails to load (stale or broken build) also warns, with the reason. With
    ``$NEEDLE_BACKEND_DIR`` set, the modules come from that directory instead of the package."""
    import os
    from importlib import import_module
    try:
        if os.environ.get("NEEDLE_BACKEND_DIR"):
            return _load_backend_from(os.environ["NEEDLE_BACKEND_DIR"], name)
        return import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as e:
        BACKEND_IMPORT_ERRORS[name] = f"not built ({e}); run `make build`"
    except ImportError as e:
        import warnings
        BACKEND_IMPORT_ERRORS[name] = f"failed to load: {e}"
        warnings.warn(f"needle: {name} exists but failed to load ({e}); rebuild with `make build`",
                      RuntimeWarning, stacklevel=2)
    return None


_CPU_MOD = _import_backend("ndarray_backend_cpu")
_CUDA_MOD = _import_backend("ndarray_backend_cuda")


def _cuda_usable(mod):
    if mod is None:
        return False
    probe = getattr(mod, "device_count", None)
    if probe is None:
        return True
    try:
        return probe() > 0
    except Exception:
        return False


_CPU_DEVICE = BackendDevice("cpu", _CPU_MOD)
_CUDA_DEVICE = None  # created on first use: probing the GPU may take a moment


def cpu():
    """The C++ CPU backend (``enabled()`` is False when the extension is not built)."""
    return _CPU_DEVICE


def cuda():
    """The CUDA backend (``enabled()`` is False without the extension or without a GPU)."""
    global _CUDA_DEVICE
    if _CUDA_DEVICE is None:
        _CUDA_DEVICE = BackendDevice("cuda", _CUDA_MOD if _cuda_usable(_CUDA_MOD) else None)
    return _CUDA_DEVICE


def device_by_name(name):
    """``cpu()``, ``cuda()`` or ``cpu_numpy()`` from its name."""
    makers = {"cpu": cpu, "cuda": cuda, "cpu_numpy": cpu_numpy}
    if name not in makers:
        raise ValueError(f"unknown device {name!r}; expected one of {sorted(makers)}")
    return makers[name]()


# NEEDLE_BACKEND picks the default device, as the course's backend selection does: "nd" (the
# default: the compiled CPU backend when built) or "np" (numpy); a device name also works.
_BACKEND_CHOICES = {"nd": None, "np": "cpu_numpy", "cpu_numpy": "cpu_numpy", "cpu": "cpu", "cuda": "cuda"}


def _backend_from_env():
    import os
    value = os.environ.get("NEEDLE_BACKEND", "nd").strip() or "nd"
    if value not in _BACKEND_CHOICES:
        raise RuntimeError(f"Unknown needle array backend NEEDLE_BACKEND={value!r}; "
                           f"use one of {sorted(_BACKEND_CHOICES)}")
    return _BACKEND_CHOICES[value]


_DEFAULT_DEVICE_NAME = _backend_from_env()


def default_device():
    """The device ``NEEDLE_BACKEND`` names; by default ``cpu()`` when the C++ backend is built,
    else ``cpu_numpy()``."""
    if _DEFAULT_DEVICE_NAME is None:
        return cpu() if _CPU_MOD is not None else cpu_numpy()
    device = device_by_name(_DEFAULT_DEVICE_NAME)
    if not device.enabled():
        raise RuntimeError(f"NEEDLE_BACKEND={_DEFAULT_DEVICE_NAME} but device {device} is not available; "
                           "unset NEEDLE_BACKEND or build that backend")
    return device


def all_devices():
    """Every device whose backend is available, in the order cpu_numpy, cpu, cuda."""
    return [d for d in (cpu_numpy(), cpu(), cuda()) if d.enabled()]


# NEEDLE_BACKEND=np stands for the course's numpy backend, where arrays are numpy arrays: data
# given without a dtype keeps numpy's float dtype (float64 for lists and np.random.randn).
# Everywhere else such data becomes float32, as on the course's compiled backend, which the
# kit's models, quantization code and notebooks rely on.
KEEP_NUMPY_FLOATS = os.environ.get("NEEDLE_BACKEND", "").strip() == "np"


def default_float_dtype(device):
    """The float dtype of data given without a dtype on ``device``: "float32", or "float64"
    under ``NEEDLE_BACKEND=np`` when ``device`` holds it (cpu_numpy)."""
    return "float64" if KEEP_NUMPY_FLOATS and "float64" in device.dtypes else "float32"


def implicit_dtype(data, device, *, from_numpy, floats_only=False):
    """The dtype ``NDArray(data, device)`` takes without a ``dtype``: ``data`` is a numpy array
    (``from_numpy``) or ``np.asarray`` of a list or scalar; ``floats_only`` gives the rule of
    Tensors, which are always float.

    Default: numpy arrays of float32 or an integer dtype of ``BASE_DTYPES`` keep it, all else
    (float64 arrays, lists, Python scalars) becomes float32. ``NEEDLE_BACKEND=np``: numpy's
    dtype (float64 for float lists) is kept when ``device`` holds it, else the data takes
    ``default_float_dtype(device)``."""
    name = data.dtype.name
    if floats_only and name not in FLOAT_DTYPES:
        return default_float_dtype(device)
    if KEEP_NUMPY_FLOATS:
        return name if name in device.dtypes else default_float_dtype(device)
    return name if from_numpy and name in BASE_DTYPES else "float32"


def _is_scalar(x):
    return isinstance(x, (int, float, bool, np.number, np.bool_)) or (
        isinstance(x, np.ndarray) and x.ndim == 0)


class NDArray:
    """A strided view into a flat buffer on a device.

    ``NDArray(other, device=None, dtype=None)`` copies ``other`` (NDArray, numpy array, list or
    scalar). Without ``dtype``: numpy arrays of float32, int8, uint8 or int32 keep it, other
    numpy arrays (float64 included), lists and Python scalars become float32; under
    ``NEEDLE_BACKEND=np`` numpy's dtype is kept where the device holds it (``implicit_dtype``).
    An explicit ``dtype`` the device cannot hold raises TypeError.
    """

    # numpy must defer to our reflected operators (np.float32(2) * x -> x.__rmul__).
    __array_ufunc__ = None

    def __init__(self, other, device=None, dtype=None):
        if isinstance(other, NDArray):
            device = other.device if device is None else device
            src = other.to(device)
            if dtype is not None and normalize_dtype(dtype) != src.dtype:
                self._init(src.astype(dtype))
            else:
                self._init(src.copy() if src is other else src.compact())
            return
        device = default_device() if device is None else device
        is_np = isinstance(other, (np.ndarray, np.generic))
        other = np.asarray(other)
        if other.dtype.kind not in "biuf":
            raise TypeError(f"NDArray: cannot store {other.dtype} data (complex, object, string "
                            f"and time values have no exact {DTYPES} form); convert it first")
        if dtype is None:
            np_dtype = implicit_dtype(other, device, from_numpy=is_np)
        else:
            np_dtype = device.check_dtype(dtype)
        is_float = np_dtype in FLOAT_DTYPES
        if not is_float and other.dtype.kind == "f":
            # Floats to integers follow the astype rules (half to even, saturation, NaN -> 0).
            src = NDArray(other.astype(np.float32), device=device, dtype="float32")
            self._init(src.astype(np_dtype))
            return
        if not is_float and other.dtype.kind in "iub":
            other = _saturate_int(other, np_dtype)
        array = np.asarray(other, dtype=np_dtype, order="C")  # keeps 0-d arrays 0-d
        out = NDArray.make(array.shape, device=device, dtype=np_dtype)
        device.from_numpy(array, out._handle)
        self._init(out)

    def _init(self, other):
        self._shape = other._shape
        self._strides = other._strides
        self._offset = other._offset
        self._device = other._device
        self._handle = other._handle
        self._dtype = other._dtype

    @staticmethod
    def compact_strides(shape):
        """Row-major strides (in elements) of ``shape``."""
        return _compact_strides(tuple(shape))

    @staticmethod
    def _new(shape, strides, device, handle, offset, dtype):
        """Internal constructor without checks: shape/strides are tuples of ints."""
        array = object.__new__(NDArray)
        array._shape = shape
        array._strides = strides
        array._offset = offset
        array._device = device
        array._handle = handle
        array._dtype = dtype
        return array

    @staticmethod
    def _alloc(shape, device, dtype="float32"):
        """Internal: a fresh compact array (shape a checked tuple, dtype a normalised name)."""
        return NDArray._new(shape, _compact_strides(shape), device, device.Array(prod(shape), dtype), 0, dtype)

    def _view(self, shape, strides, offset):
        check_view(shape, strides, offset, self._handle.size)
        return NDArray._new(shape, strides, self._device, self._handle, offset, self._dtype)

    @staticmethod
    def make(shape, strides=None, device=None, handle=None, offset=0, dtype="float32"):
        """A new NDArray with the given view; allocates a buffer unless ``handle`` is given
        (then the dtype is the handle's)."""
        shape = _ints(shape, "NDArray.make: shape")
        strides = _compact_strides(shape) if strides is None else _ints(strides, "NDArray.make: strides")
        offset = _as_int(offset, "NDArray.make: offset")
        device = device if device is not None else default_device()
        if handle is None:  # a fresh buffer of prod(shape) elements: the view must fit in it
            check_view(shape, strides, offset, MAX_ELEMENTS, "NDArray.make")
            dtype = device.check_dtype(dtype)
            handle = device.Array(prod(shape), dtype)
        else:
            dtype = normalize_dtype(handle.dtype)
        check_view(shape, strides, offset, handle.size, "NDArray.make")
        return NDArray._new(shape, strides, device, handle, offset, dtype)

    # properties ----------------------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def strides(self):
        return self._strides

    @property
    def offset(self):
        return self._offset

    @property
    def device(self):
        return self._device

    @property
    def dtype(self):
        return self._dtype

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def size(self):
        return prod(self._shape)

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of a 0-d NDArray")
        return self._shape[0]

    def __repr__(self):
        return f"NDArray({self.numpy()!r}, device={self.device}, dtype={self.dtype})"

    def __str__(self):
        return str(self.numpy())

    # copy.deepcopy gives an independent compact copy; pickling stores the values, the dtype
    # and the device name.
    def __deepcopy__(self, memo):
        return self.copy()

    def __array__(self, dtype=None, copy=None):
        # np.asarray / np.testing / np.array_split accept NDArrays as course code expects.
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __reduce__(self):
        return (NDArray, (self.numpy(), self._device, self._dtype))

    # basic -----------------------------------------------------------------------------------
    def fill(self, value):
        """Set every element of the underlying buffer to ``value`` (in place)."""
        self._device.fill(self._handle, self._check_value(value))

    def to(self, device):
        if device == self.device:
            return self
        return NDArray(self.numpy(), device=device, dtype=self.dtype)

    def numpy(self):
        """A numpy copy of the array, in its dtype."""
        return self.device.to_numpy(self._handle, self.shape, self.strides, self._offset)

    def is_compact(self):
        """True when the array is the whole of its buffer in row-major order."""
        return (self._offset == 0 and self._strides == _compact_strides(self._shape)
                and prod(self._shape) == self._handle.size)

    def compact(self):
        """The array itself when compact, else a row-major copy."""
        if self.is_compact():
            return self
        out = NDArray._alloc(self._shape, self._device, self._dtype)
        self._device.compact(self._handle, out._handle, self._shape, self._strides, self._offset)
        return out

    def copy(self):
        """A compact copy that never shares the buffer."""
        out = NDArray._alloc(self._shape, self._device, self._dtype)
        self._device.compact(self._handle, out._handle, self._shape, self._strides, self._offset)
        return out

    def as_strided(self, shape, strides):
        """A view with the given shape and strides (elements) at the same offset and buffer."""
        shape, strides = _ints(shape, "as_strided: shape"), _ints(strides, "as_strided: strides")
        check_view(shape, strides, self._offset, self._handle.size, "as_strided")
        return NDArray._new(shape, strides, self._device, self._handle, self._offset, self._dtype)

    # views -------------------------------------------------------------------------------------
    @property
    def flat(self):
        """A 1-D view of all elements in row-major order, sharing the buffer (the course's
        ``backward_check`` writes through ``x.flat[j] += eps``). Needs row-major strides (any
        offset); other views raise rather than hand back a copy that writes would not reach."""
        if self._strides != _compact_strides(self._shape) and self.size > 1:
            raise ValueError(f"flat: the view of shape {self.shape} with strides {self.strides} is not "
                             "row-major contiguous; call .compact() first")
        return self._view((self.size,), (1,), self._offset)

    def reshape(self, *new_shape):
        """Reshape (one dimension may be -1); a view of compact arrays, else of a compact copy."""
        new_shape = list(_shape_arg(new_shape))
        if new_shape.count(-1) > 1:
            raise ValueError(f"reshape: at most one -1 allowed in {tuple(new_shape)}")
        if -1 in new_shape:
            known = prod(s for s in new_shape if s != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of shape {self.shape} into {tuple(new_shape)}")
            new_shape[new_shape.index(-1)] = self.size // known
        new_shape = tuple(new_shape)
        if prod(new_shape) != self.size or any(s < 0 for s in new_shape):
            raise ValueError(f"cannot reshape array of shape {self.shape} (size {self.size}) into {new_shape}")
        src = self.compact()
        return src._view(new_shape, _compact_strides(new_shape), 0)

    def permute(self, *new_axes):
        """Reorder the axes (a view): ``new_axes`` is a permutation of range(ndim)."""
        axes = _shape_arg(new_axes)
        axes = tuple(a + self.ndim if a < 0 else a for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"permute: {tuple(new_axes)} is not a permutation of the axes of shape {self.shape}")
        return self._view(tuple(self._shape[a] for a in axes), tuple(self._strides[a] for a in axes),
                          self._offset)

    def transpose(self, axes=None):
        """numpy-style transpose (reverse the axes by default)."""
        return self.permute(tuple(range(self.ndim))[::-1] if axes is None else axes)

    def broadcast_to(self, *new_shape):
        """Broadcast as numpy does (leading axes may be added; size-1 axes stretch): a view."""
        new_shape = _shape_arg(new_shape)
        if len(new_shape) < self.ndim:
            raise ValueError(f"cannot broadcast shape {self.shape} to {new_shape}")
        lead = len(new_shape) - self.ndim
        strides = [0] * lead
        for i, (n, s) in enumerate(zip(self.shape, self.strides)):
            if n == new_shape[lead + i]:
                strides.append(s)
            elif n == 1:
                strides.append(0)
            else:
                raise ValueError(f"cannot broadcast shape {self.shape} to {new_shape}")
        return self._view(new_shape, tuple(strides), self._offset)

    def process_slice(self, sl, dim):
        """``sl`` on axis ``dim`` as an explicit ``slice(start, stop, step)`` (numpy's rules for
        None and negative bounds; steps must be positive)."""
        if not 0 <= dim < self.ndim:
            raise IndexError(f"process_slice: axis {dim} is out of range for shape {self.shape}")
        start, stop, step = sl.indices(self.shape[dim])
        if step <= 0:
            raise ValueError(f"slice steps must be positive, got {step} on axis {dim}")
        return slice(start, builtins.max(start, stop), step)

    def _view_of(self, idxs):
        """Shape, strides, offset of ``self[idxs]`` (numpy basic indexing, steps > 0)."""
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        if builtins.sum(1 for i in idxs if i is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis")
        if Ellipsis in [i for i in idxs if i is Ellipsis]:
            k = next(j for j, i in enumerate(idxs) if i is Ellipsis)
            fill = self.ndim - (len(idxs) - 1)
            idxs = idxs[:k] + (slice(None),) * builtins.max(fill, 0) + idxs[k + 1:]
        if len(idxs) > self.ndim:
            raise IndexError(f"too many indices ({len(idxs)}) for array of shape {self.shape}")
        idxs = idxs + (slice(None),) * (self.ndim - len(idxs))
        shape, strides, offset = [], [], self._offset
        for axis, (idx, n, st) in enumerate(zip(idxs, self.shape, self.strides)):
            if isinstance(idx, slice):
                start, stop, step = idx.indices(n)
                if step <= 0:
                    raise ValueError(f"slice steps must be positive, got {step} on axis {axis}")
                length = builtins.max(0, (stop - start + step - 1) // step)
                if length > 0:
                    offset += start * st
                shape.append(length)
                strides.append(st * step)
            elif isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
                i = int(idx)
                if i < -n or i >= n:
                    raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n} (shape {self.shape})")
                offset += (i % n) * st
            else:
                raise TypeError(f"unsupported index {idx!r}: use ints, slices or ...")
        return tuple(shape), tuple(strides), offset

    def __getitem__(self, idxs):
        """Basic indexing as in numpy (ints drop the axis, slices keep it); returns a view."""
        shape, strides, offset = self._view_of(idxs)
        return self._view(shape, strides, offset)

    def __setitem__(self, idxs, other):
        """Assign an NDArray (broadcast to the view as numpy would) or a scalar, in place.
        numpy arrays and lists are converted to this array's dtype first."""
        view = self[idxs]
        if isinstance(other, (np.ndarray, list, tuple)) and not _is_scalar(other):
            other = NDArray(np.asarray(other), device=self._device, dtype=self._dtype)
        if isinstance(other, NDArray):
            self._check_device(other)
            if other.dtype != self.dtype:
                raise TypeError(f"setitem: value dtype {other.dtype} does not match array dtype {self.dtype}")
            if other.shape != view.shape:
                other = other.broadcast_to(view.shape)
            src = other.copy() if other._handle is self._handle else other.compact()
            self.device.ewise_setitem(src._handle, self._handle, view.shape, view.strides, view._offset)
        elif _is_scalar(other):
            self.device.scalar_setitem(view.size, self._check_value(other), self._handle,
                                       view.shape, view.strides, view._offset)
        else:
            raise TypeError(f"setitem: value must be an NDArray or a scalar, got {type(other).__name__}")

    def flip(self, axes=None):
        """Reverse the order of elements along ``axes`` (int, tuple, or None for all): a view."""
        axes = self._axes(axes) if axes is not None else tuple(range(self.ndim))
        strides, offset = list(self.strides), self._offset
        for a in axes:
            if self.shape[a] > 0:
                offset += (self.shape[a] - 1) * strides[a]
            strides[a] = -strides[a]
        return self._view(self._shape, tuple(strides), offset)

    def pad(self, axes, value=0):
        """Pad with ``value``: ``axes`` holds one (before, after) pair per axis."""
        axes = tuple(tuple(int(v) for v in p) for p in axes)
        if len(axes) != self.ndim or any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in axes):
            raise ValueError(f"pad: need one non-negative (before, after) pair per axis of shape {self.shape}, got {axes}")
        out = self.device.full(tuple(n + b + a for n, (b, a) in zip(self.shape, axes)), value, dtype=self.dtype)
        out[tuple(slice(b, b + n) for n, (b, _) in zip(self.shape, axes))] = self
        return out

    def astype(self, dtype):
        """Convert to ``dtype`` (float->int: round half to even, saturate, NaN -> 0; int->int:
        saturate). Returns ``self`` when the dtype already matches."""
        dtype = normalize_dtype(dtype)
        if dtype == self.dtype:
            return self
        self._device.check_dtype(dtype)
        src = self.compact()
        out = NDArray._alloc(self._shape, self._device, dtype)
        self.device.astype(src._handle, out._handle)
        return out

    # helpers ---------------------------------------------------------------------------------
    def _check_value(self, value):
        """A scalar suitable for this dtype; integers must fit the integer range."""
        if self.dtype in FLOAT_DTYPES:
            return float(value)
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise ValueError(f"value {value} is not an integer, cannot store it in {self.dtype}")
        value = int(value)
        lo, hi = INT_RANGES[self.dtype]
        if not lo <= value <= hi:
            raise ValueError(f"value {value} is out of range [{lo}, {hi}] of {self.dtype}")
        return value

    def _check_device(self, other):
        if other.device != self.device:
            raise ValueError(f"arrays are on different devices: {self.device} and {other.device}")

    def result_dtype(self, op, other=None):
        """The dtype of float math ``op`` on this array (and the NDArray ``other``): the float
        dtype of both, float64 when one is float64 (numpy's promotion); TypeError for integer
        arrays."""
        dtype = self._dtype
        for d in (dtype,) if other is None else (dtype, other._dtype):
            if d not in FLOAT_DTYPES:
                raise TypeError(f"{op} needs float32, got {d}; convert integer arrays with "
                                ".astype('float32') first (float64 works too where the device holds it)")
        if other is not None and other._dtype != dtype:
            dtype = "float64"
        return dtype

    def _axes(self, axis):
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        res = []
        for a in axes:
            a = int(a)
            if not -self.ndim <= a < self.ndim:
                raise ValueError(f"axis {a} is out of range for array of shape {self.shape}")
            res.append(a % self.ndim)
        if len(set(res)) != len(res):
            raise ValueError(f"repeated axis in {axis}")
        return tuple(res)

    # math ------------------------------------------------------------------------------------
    def ewise_or_scalar(self, other, ewise_func, scalar_func, op="op"):
        """Apply ``ewise_func`` with an NDArray of the same shape or ``scalar_func`` with a scalar
        (the result has ``result_dtype``; a scalar never changes it)."""
        if isinstance(other, NDArray):
            self._check_device(other)
            dtype = self.result_dtype(op, other)
            if other.shape != self.shape:
                raise ValueError(f"{op}: shapes {self.shape} and {other.shape} differ (broadcast explicitly)")
            out = NDArray._alloc(self._shape, self._device, dtype)
            ewise_func(self.astype(dtype).compact()._handle, other.astype(dtype).compact()._handle, out._handle)
        else:
            out = NDArray._alloc(self._shape, self._device, self.result_dtype(op))
            scalar_func(self.compact()._handle, float(other), out._handle)
        return out

    def _binary(self, other, name):
        if not isinstance(other, NDArray) and not _is_scalar(other):
            return NotImplemented
        return self.ewise_or_scalar(other, getattr(self.device, "ewise_" + name),
                                    getattr(self.device, "scalar_" + name), op=name)

    def __add__(self, other):
        return self._binary(other, "add")

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, NDArray):
            return self + (-other)
        if not _is_scalar(other):
            return NotImplemented
        return self + (-float(other))

    def __rsub__(self, other):
        if not _is_scalar(other):
            return NotImplemented
        return (-self) + other

    def __mul__(self, other):
        return self._binary(other, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._binary(other, "div")

    def __rtruediv__(self, other):
        if not _is_scalar(other):
            return NotImplemented
        return self.device.full(self.shape, float(other), dtype=self.result_dtype("div")) / self

    def __neg__(self):
        return self * (-1.0)

    def __pow__(self, other):
        if not _is_scalar(other):
            raise TypeError(f"power: exponent must be a scalar, got {type(other).__name__}")
        out = NDArray._alloc(self._shape, self._device, self.result_dtype("power"))
        self.device.scalar_power(self.compact()._handle, float(other), out._handle)
        return out

    def maximum(self, other):
        return self._binary(other, "maximum")

    def __eq__(self, other):
        return self._binary(other, "eq")

    def __ge__(self, other):
        return self._binary(other, "ge")

    def __ne__(self, other):
        res = self == other
        return res if res is NotImplemented else 1 - res

    def __gt__(self, other):
        ge, eq = self >= other, self == other
        return NotImplemented if ge is NotImplemented else ge - eq

    def __lt__(self, other):
        res = self >= other
        return res if res is NotImplemented else 1 - res

    def __le__(self, other):
        res = self > other
        return res if res is NotImplemented else 1 - res

    __hash__ = None

    def _unary(self, name):
        out = NDArray._alloc(self._shape, self._device, self.result_dtype(name))
        getattr(self.device, "ewise_" + name)(self.compact()._handle, out._handle)
        return out

    def log(self):
        return self._unary("log")

    def exp(self):
        return self._unary("exp")

    def tanh(self):
        return self._unary("tanh")

    def __matmul__(self, other):
        """2-D matrix product [m, n] @ [n, p] -> [m, p] (``result_dtype``)."""
        if not isinstance(other, NDArray):
            return NotImplemented
        self._check_device(other)
        dtype = self.result_dtype("matmul", other)
        if self.ndim != 2 or other.ndim != 2 or self.shape[1] != other.shape[0]:
            raise ValueError(f"matmul: shapes {self.shape} and {other.shape} do not fit (need [m, n] @ [n, p])")
        m, n, p = self.shape[0], self.shape[1], other.shape[1]
        out = NDArray._alloc((m, p), self._device, dtype)
        if m * p == 0:
            out.fill(0.0)
        elif n == 0:
            out.fill(0.0)
        else:
            self.device.matmul(self.astype(dtype).compact()._handle, other.astype(dtype).compact()._handle,
                               out._handle, m, n, p)
        return out

    # reductions ------------------------------------------------------------------------------
    def _reduce(self, axis, keepdims, name):
        dtype = self.result_dtype(name)
        axes = tuple(range(self.ndim)) if axis is None else self._axes(axis)
        keep = tuple(a for a in range(self.ndim) if a not in axes)
        red_size = prod(self.shape[a] for a in axes)
        out_shape = tuple(1 if a in axes else n for a, n in enumerate(self.shape)) if keepdims \
            else tuple(self.shape[a] for a in keep)
        if not axes:
            return self.copy().reshape(out_shape)
        if red_size == 0:
            if name == "max":
                raise ValueError(f"max over a zero-size axis of shape {self.shape}")
            return self.device.full(out_shape, 0.0, dtype=dtype)
        view = self.permute(keep + axes).compact()
        out = NDArray._alloc(out_shape, self._device, dtype)
        if out.size > 0:
            getattr(self.device, "reduce_" + name)(view._handle, out._handle, red_size)
        return out

    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (None = all, int, or tuple of ints); numpy's result shape."""
        return self._reduce(axis, keepdims, "sum")

    def max(self, axis=None, keepdims=False):
        """Maximum over ``axis`` (None = all, int, or tuple of ints); numpy's result shape."""
        return self._reduce(axis, keepdims, "max")


# ---- module-level functions (the array_api used by needle's ops) ----------------------------
def array(a, dtype=None, device=None):
    """An NDArray copy of ``a`` (see ``NDArray`` for the default dtype)."""
    return NDArray(a, device=device, dtype=dtype)


def empty(shape, dtype="float32", device=None):
    return (device if device is not None else default_device()).empty(shape, dtype)


def full(shape, fill_value, dtype="float32", device=None):
    return (device if device is not None else default_device()).full(shape, fill_value, dtype)


def zeros(shape, dtype="float32", device=None):
    return full(shape, 0, dtype, device)


def ones(shape, dtype="float32", device=None):
    return full(shape, 1, dtype, device)


def broadcast_to(a, shape):
    return a.broadcast_to(shape)


def reshape(a, shape):
    return a.reshape(shape)


def permute(a, axes):
    return a.permute(axes)


def maximum(a, b):
    return a.maximum(b)


def log(a):
    return a.log()


def exp(a):
    return a.exp()


def tanh(a):
    return a.tanh()


def negative(a):
    return -a


def matmul(a, b):
    return a @ b


def sum(a, axis=None, keepdims=False):  # noqa: A001 - the array API name
    return a.sum(axis=axis, keepdims=keepdims)


summation = sum


def max(a, axis=None, keepdims=False):  # noqa: A001 - the array API name
    return a.max(axis=axis, keepdims=keepdims)


def flip(a, axes=None):
    return a.flip(axes)


def pad(a, axes, value=0):
    return a.pad(axes, value)


def stack(arrays, axis=0):
    """Stack same-shaped arrays along a new axis ``axis``."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("stack needs at least one array")
    first = arrays[0]
    for a in arrays[1:]:
        if a.shape != first.shape or a.dtype != first.dtype:
            raise ValueError(f"stack: arrays differ: {first.shape} {first.dtype} vs {a.shape} {a.dtype}")
        first._check_device(a)
    if not -first.ndim - 1 <= axis <= first.ndim:
        raise ValueError(f"stack: axis {axis} out of range for arrays of shape {first.shape}")
    axis %= first.ndim + 1
    shape = first.shape[:axis] + (len(arrays),) + first.shape[axis:]
    out = NDArray.make(shape, device=first.device, dtype=first.dtype)
    for i, a in enumerate(arrays):
        out[(slice(None),) * axis + (i,)] = a
    return out


def split(a, axis=0):
    """The inverse of ``stack``: a tuple of compact arrays, one per index along ``axis``."""
    axis = a._axes(axis)[0]
    return tuple(a[(slice(None),) * axis + (i,)].compact() for i in range(a.shape[axis]))
