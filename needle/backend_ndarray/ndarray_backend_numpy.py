"""The reference backend of NDArray, written with numpy.

It provides exactly the backend module interface of docs/ARCHITECTURE.md: a flat ``Array``
buffer plus free functions taking shapes, strides and offsets in elements. The C++ and CUDA
backends are tested against it, so it favours clarity over speed. Beyond the dtypes every
backend holds it also holds float64 (listed in ``DTYPES``): its float math runs in the dtype
of its operands, which must agree (NDArray promotes mixed operands first).
"""
import numpy as np

__device_name__ = "cpu_numpy"

DTYPES = ("float32", "float64", "int8", "uint8", "int32")
FLOAT_DTYPES = ("float32", "float64")
_INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int32": (-(2**31), 2**31 - 1),
}


def _check_dtype(dtype):
    dtype = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if dtype not in DTYPES:
        raise TypeError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}")
    return dtype


class Array:
    """A flat buffer of ``size`` elements of ``dtype`` (one of ``DTYPES``)."""

    def __init__(self, size, dtype="float32"):
        size = int(size)
        if size < 0:
            raise ValueError(f"Array size must be >= 0, got {size}")
        self.dtype = _check_dtype(dtype)  # the name, fixed for the buffer's life
        self.array = np.empty(size, dtype=self.dtype)

    @property
    def size(self):
        return self.array.size

    def ptr(self):
        return self.array.ctypes.data


def _check_view(a, shape, strides, offset):
    """Raise unless every element the strided view reaches lies inside ``a``."""
    shape, strides, offset = tuple(int(s) for s in shape), tuple(int(s) for s in strides), int(offset)
    if len(shape) != len(strides):
        raise ValueError(f"shape {shape} and strides {strides} differ in length")
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    if 0 in shape:
        return shape, strides, offset
    lo = offset + sum((n - 1) * st for n, st in zip(shape, strides) if st < 0)
    hi = offset + sum((n - 1) * st for n, st in zip(shape, strides) if st > 0)
    if lo < 0 or hi >= a.size:
        raise ValueError(
            f"view shape={shape} strides={strides} offset={offset} reaches elements "
            f"[{lo}, {hi}] outside a buffer of size {a.size}")
    return shape, strides, offset


def _strided(a, shape, strides, offset):
    """A numpy view (shares memory) of the strided region of the flat buffer ``a``."""
    shape, strides, offset = _check_view(a, shape, strides, offset)
    if 0 in shape:
        return np.empty(shape, dtype=a.array.dtype)
    item = a.array.itemsize
    return np.lib.stride_tricks.as_strided(
        a.array[offset:], shape, tuple(s * item for s in strides))


def _check_same(a, out, what):
    if a.dtype != out.dtype:
        raise TypeError(f"{what}: dtype {a.dtype} does not match out dtype {out.dtype}")


def _check_float(name, *arrays):
    """Every array float32, or every one float64."""
    for x in arrays:
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} needs float32 or float64, got {x.dtype}")
    if len({x.dtype for x in arrays}) > 1:
        raise TypeError(f"{name}: operands differ in dtype ({', '.join(x.dtype for x in arrays)})")


def _check_sizes(name, out, *arrays):
    for x in arrays:
        if x.size != out.size:
            raise ValueError(f"{name}: input size {x.size} != output size {out.size}")


def to_numpy(a, shape, strides, offset):
    """Copy the strided view of ``a`` into a new numpy array of ``a.dtype``."""
    return np.array(_strided(a, shape, strides, offset), copy=True)


def from_numpy(a, out):
    """Copy a contiguous numpy array of ``out.dtype`` and ``out.size`` elements into ``out``."""
    a = np.asarray(a)
    if str(a.dtype) != out.dtype:
        raise TypeError(f"from_numpy: numpy dtype {a.dtype} does not match Array dtype {out.dtype}")
    if a.size != out.size:
        raise ValueError(f"from_numpy: numpy array has {a.size} elements, Array has {out.size}")
    out.array[:] = a.reshape(-1)


def fill(out, val):
    out.array.fill(val)


def compact(a, out, shape, strides, offset):
    _check_same(a, out, "compact")
    view = _strided(a, shape, strides, offset)
    if view.size != out.size:
        raise ValueError(f"compact: view of shape {tuple(shape)} has {view.size} elements, out has {out.size}")
    out.array[:] = view.reshape(-1)


def ewise_setitem(a, out, shape, strides, offset):
    _check_same(a, out, "ewise_setitem")
    view = _strided(out, shape, strides, offset)
    if view.size != a.size:
        raise ValueError(f"ewise_setitem: view of shape {tuple(shape)} has {view.size} elements, input has {a.size}")
    view[...] = a.array.reshape(view.shape)


def scalar_setitem(size, val, out, shape, strides, offset):
    view = _strided(out, shape, strides, offset)
    if view.size != size:
        raise ValueError(f"scalar_setitem: view of shape {tuple(shape)} has {view.size} elements, size is {size}")
    view[...] = val


def astype(a, out):
    """Convert ``a`` into ``out``'s dtype: float->int rounds half to even and saturates (NaN->0);
    int->int saturates; int->float rounds to nearest."""
    _check_sizes("astype", out, a)
    src, dst = a.array, out.dtype
    if dst in FLOAT_DTYPES:
        out.array[:] = src.astype(dst)
        return
    lo, hi = _INT_RANGES[dst]
    if src.dtype.kind == "f":
        x = np.rint(src.astype(np.float64))
        x = np.nan_to_num(x, nan=0.0, posinf=hi, neginf=lo)
        out.array[:] = np.clip(x, lo, hi).astype(dst)
    else:
        out.array[:] = np.clip(src.astype(np.int64), lo, hi).astype(dst)


# ---- float math (float32 or float64; scalars are taken in the operand's dtype) --------------
def _ewise(name, fn):
    def op(a, b, out):
        _check_float(name, a, b, out)
        _check_sizes(name, out, a, b)
        with np.errstate(all="ignore"):
            out.array[:] = fn(a.array, b.array)
    op.__name__ = name
    return op


def _scalar(name, fn):
    def op(a, val, out):
        _check_float(name, a, out)
        _check_sizes(name, out, a)
        with np.errstate(all="ignore"):
            out.array[:] = fn(a.array, a.array.dtype.type(val))
    op.__name__ = name
    return op


def _unary(name, fn):
    def op(a, out):
        _check_float(name, a, out)
        _check_sizes(name, out, a)
        with np.errstate(all="ignore"):
            out.array[:] = fn(a.array)
    op.__name__ = name
    return op


ewise_add = _ewise("ewise_add", np.add)
ewise_mul = _ewise("ewise_mul", np.multiply)
ewise_div = _ewise("ewise_div", np.divide)
ewise_maximum = _ewise("ewise_maximum", np.maximum)
ewise_eq = _ewise("ewise_eq", lambda x, y: (x == y).astype(x.dtype))
ewise_ge = _ewise("ewise_ge", lambda x, y: (x >= y).astype(x.dtype))

scalar_add = _scalar("scalar_add", np.add)
scalar_mul = _scalar("scalar_mul", np.multiply)
scalar_div = _scalar("scalar_div", np.divide)
scalar_power = _scalar("scalar_power", np.power)
scalar_maximum = _scalar("scalar_maximum", np.maximum)
scalar_eq = _scalar("scalar_eq", lambda x, y: (x == y).astype(x.dtype))
scalar_ge = _scalar("scalar_ge", lambda x, y: (x >= y).astype(x.dtype))

ewise_log = _unary("ewise_log", np.log)
ewise_exp = _unary("ewise_exp", np.exp)
ewise_tanh = _unary("ewise_tanh", np.tanh)


def matmul(a, b, out, m, n, p):
    """out[m, p] = a[m, n] @ b[n, p]; all compact row-major, all float32 or all float64."""
    _check_float("matmul", a, b, out)
    if a.size != m * n or b.size != n * p or out.size != m * p:
        raise ValueError(f"matmul: sizes a={a.size} b={b.size} out={out.size} do not fit m={m} n={n} p={p}")
    out.array[:] = (a.array.reshape(m, n) @ b.array.reshape(n, p)).reshape(-1)


def _reduce(name, fn):
    def op(a, out, reduce_size):
        _check_float(name, a, out)
        if reduce_size <= 0 or a.size != out.size * reduce_size:
            raise ValueError(f"{name}: input size {a.size} != out size {out.size} * reduce_size {reduce_size}")
        out.array[:] = fn(a.array.reshape(-1, reduce_size), axis=1)
    op.__name__ = name
    return op


reduce_max = _reduce("reduce_max", np.max)
reduce_sum = _reduce("reduce_sum", np.sum)


# ---- int8 kernels -------------------------------------------------------------------------
def qpack_weights(w, n, k):
    """The numpy backend keeps weights in their [n, k] row-major layout: returns a copy."""
    if w.dtype != "int8":
        raise TypeError(f"qpack_weights needs int8 weights, got {w.dtype}")
    if w.size != n * k:
        raise ValueError(f"qpack_weights: weight size {w.size} != n*k = {n}*{k}")
    out = Array(w.size, "int8")
    out.array[:] = w.array
    return out


def qgemm(a, packed, out, m, n, k, a_zero_point, colsum, bias, multiplier, shift,
          out_zero_point, relu):
    """Integer GEMM of docs/ARCHITECTURE.md ("Integer GEMM backend call") on numpy arrays."""
    if a.dtype not in ("uint8", "int8"):
        raise TypeError(f"qgemm needs uint8 or int8 activations, got {a.dtype}")
    if packed.dtype != "int8":
        raise TypeError(f"qgemm needs int8 packed weights, got {packed.dtype}")
    if out.dtype not in ("uint8", "int8", "int32"):
        raise TypeError(f"qgemm output must be uint8, int8 or int32, got {out.dtype}")
    for name, arr in (("colsum", colsum), ("bias", bias), ("multiplier", multiplier), ("shift", shift)):
        if arr.dtype != "int32":
            raise TypeError(f"qgemm: {name} must be int32, got {arr.dtype}")
        if arr.size != n:
            raise ValueError(f"qgemm: {name} has {arr.size} elements, expected n = {n}")
    if a.size != m * k or packed.size != n * k or out.size != m * n:
        raise ValueError(f"qgemm: sizes a={a.size} w={packed.size} out={out.size} do not fit m={m} n={n} k={k}")
    # The single source of truth for the integer math (imported here: needle.quant imports
    # the framework, which imports this module).
    from needle.quant.reference import qgemm_reference
    res = qgemm_reference(
        a.array.reshape(m, k), packed.array.reshape(n, k), int(a_zero_point), bias=bias.array,
        multiplier=multiplier.array, shift=shift.array, out_zero_point=int(out_zero_point),
        relu=bool(relu), out_dtype=out.dtype, colsum=colsum.array)
    out.array[:] = np.asarray(res).reshape(-1)
