"""The quantization math of needle-quant, in plain numpy.

This module is the single source of truth for every number the toolkit produces: the C++ and
CUDA int8 kernels and the numpy backend are tested bit for bit against it. It imports nothing
from needle.

Conventions (docs/ARCHITECTURE.md, "Quantization math"):

* quantize    ``q = clamp(rint(x / s) + zp, qmin, qmax)``; ``x / s`` is a float32 IEEE division
              and ``rint`` rounds half to even.
* dequantize  ``x = (q - zp) * s`` in float32.
* qparams     the range ``[lo, hi]`` is first extended to contain 0, then
              affine     ``s = (hi - lo) / (qmax - qmin)``, ``zp = clamp(qmin - rint(lo / s))``
              symmetric  ``s = max(|lo|, |hi|) / ((qmax - qmin) / 2)``, ``zp = 0`` for signed
                         types and the middle of the range (128 for uint8) for unsigned ones.
              A zero range gives ``s = 1``.
* requantize  ``M = s_in * s_w[c] / s_out = M0 * 2^-n``, ``M0`` in [0.5, 1),
              ``m = rint(M0 * 2^31)`` (int32), ``shift = 31 + n``,
              ``y = (acc * m + 2^(shift - 1)) >> shift`` with 64-bit integers,
              ``out = clamp(y + zp_out, lo, hi)``; a fused ReLU raises ``lo`` to ``zp_out``.
* integer GEMM ``acc[i, c] = sum_k x[i, k] * w[c, k] - zx * colsum[c] + bias_q[c]`` with
              ``colsum[c] = sum_k w[c, k]``, then requantize per output channel.

Per-channel parameters: every function that takes a scale or zero point accepts a 1-D array
together with ``axis``, the axis of the data the parameters run along.
"""
import numpy as np

__all__ = [
    "DTYPES", "qrange", "choose_qparams", "quantize", "dequantize", "fake_quantize",
    "quantize_bias", "quantize_multiplier", "requant_multiplier", "requantize",
    "weight_colsum", "qgemm_reference", "ADD_LEFT_SHIFT", "add_multipliers", "quantized_add",
]

#: integer dtypes the kernels produce and consume
DTYPES = ("int8", "uint8", "int32")

_INT32_MIN = -(2 ** 31)
_INT32_MAX = 2 ** 31 - 1


def _dtype_name(dtype):
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"quantized dtype must be one of {DTYPES}, got {name}")
    return name


def qrange(dtype="int8", bits=None, reduced_range=False):
    """Integer range ``(qmin, qmax)`` of a quantized type.

    dtype: "int8", "uint8" or "int32" (signedness comes from the dtype).
    bits: number of bits actually used (2..8 for int8/uint8; default: the full dtype width).
    reduced_range: for signed types drop the most negative value so the range is symmetric,
        e.g. int8 [-127, 127]; for unsigned types drop the largest value (uint8 [0, 254]).

    Returns Python ints. Examples: int8 -> (-128, 127); int8 reduced -> (-127, 127);
    uint8 -> (0, 255); 4-bit signed -> (-8, 7).
    """
    name = _dtype_name(dtype)
    width = np.dtype(name).itemsize * 8
    if bits is None:
        bits = width
    if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= width:
        raise ValueError(f"bits must be an integer in [2, {width}] for {name}, got {bits!r}")
    bits = int(bits)
    if name == "uint8":
        qmin, qmax = 0, 2 ** bits - 1
        if reduced_range:
            qmax -= 1
    else:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if reduced_range:
            qmin += 1
    return qmin, qmax


def _as_range(lo, hi):
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi must have the same shape, got {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"range must be finite, got lo={lo}, hi={hi}")
    if np.any(lo > hi):
        raise ValueError(f"range must satisfy lo <= hi, got lo={lo}, hi={hi}")
    return lo, hi


def choose_qparams(lo, hi, scheme="affine", dtype="uint8", bits=None, reduced_range=False):
    """Scale and zero point covering the real range ``[lo, hi]``.

    lo, hi: floats, or 1-D arrays (one entry per channel) of the same shape.
    scheme: "affine" (zero point anywhere in the range) or "symmetric" (zero point at the
        middle of the integer range: 0 for signed types, 2^(bits-1) for unsigned ones).
    dtype, bits, reduced_range: the integer range, see :func:`qrange`.

    The range is extended to contain 0 so that real 0 is exactly representable.
        affine:    s = (hi - lo) / (qmax - qmin),  zp = clamp(qmin - rint(lo / s), qmin, qmax)
        symmetric: s = max(|lo|, |hi|) / ((qmax - qmin) / 2)
    ``s`` is computed in float64 and rounded to float32; ``lo / s`` in the zero point uses the
    float32 division that :func:`quantize` uses, so ``quantize(lo) == qmin``. A zero range gives
    s = 1.0; a positive range is never given a scale below the smallest normal float32.

    Returns ``(scale, zero_point)``: float32 and int32 numpy scalars (0-d arrays for scalar
    input) or 1-D arrays for per-channel input.
    """
    if scheme not in ("affine", "symmetric"):
        raise ValueError(f"scheme must be 'affine' or 'symmetric', got {scheme!r}")
    qmin, qmax = qrange(dtype, bits, reduced_range)
    lo, hi = _as_range(lo, hi)
    ### BEGIN SOLUTION
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    if scheme == "affine":
        scale = (hi - lo) / (qmax - qmin)
    else:
        scale = np.maximum(-lo, hi) / ((qmax - qmin) / 2.0)
    scale = scale.astype(np.float32)
    scale = np.where(hi - lo == 0.0, np.float32(1.0), scale)
    scale = np.maximum(scale, np.finfo(np.float32).tiny).astype(np.float32)
    if scheme == "affine":
        steps = np.rint(lo.astype(np.float32) / scale).astype(np.float64)
        zero_point = np.clip(qmin - steps, qmin, qmax).astype(np.int32)
    else:
        mid = 0 if qmin < 0 else (qmin + qmax + 1) // 2
        zero_point = np.full(scale.shape, mid, dtype=np.int32)
    ### END SOLUTION
    return scale, zero_point


def _param(p, x_ndim, axis, dtype, what):
    """Reshape a per-tensor or per-channel parameter so it broadcasts against the data."""
    p = np.asarray(p, dtype=dtype)
    if p.ndim == 0 or p.size == 1 and axis is None:
        return p.reshape(())
    if axis is None:
        raise ValueError(f"{what} has shape {p.shape}: per-channel parameters need an axis")
    if p.ndim != 1:
        raise ValueError(f"per-channel {what} must be 1-D, got shape {p.shape}")
    axis = axis % x_ndim
    shape = [1] * x_ndim
    shape[axis] = p.shape[0]
    return p.reshape(shape)


def _check_channels(x, p, axis, what):
    p = np.asarray(p)
    if p.ndim == 1 and axis is not None and p.shape[0] != x.shape[axis]:
        raise ValueError(
            f"{what} has {p.shape[0]} channels but the data has {x.shape[axis]} along axis {axis}"
        )


def quantize(x, scale, zero_point, dtype="uint8", axis=None, bits=None, reduced_range=False,
             qmin=None, qmax=None):
    """Quantize real values: ``q = clamp(rint(x / s) + zp, qmin, qmax)``.

    x: float array (converted to float32).
    scale, zero_point: scalars, or 1-D arrays of length ``x.shape[axis]``.
    dtype: output dtype ("int8" or "uint8"; "int32" for biases).
    bits, reduced_range: the clamp range (see :func:`qrange`); ``qmin``/``qmax`` override it.

    ``x / s`` is an IEEE float32 division, ``rint`` rounds half to even, values beyond the range
    saturate (including +-inf) and NaN maps to the zero point (real 0).
    Returns an array of ``dtype`` with the shape of x.
    """
    name = _dtype_name(dtype)
    lo_q, hi_q = qrange(name, bits, reduced_range)
    qmin = lo_q if qmin is None else int(qmin)
    qmax = hi_q if qmax is None else int(qmax)
    x = np.asarray(x, dtype=np.float32)
    _check_channels(x, scale, axis, "scale")
    _check_channels(x, zero_point, axis, "zero_point")
    s = _param(scale, x.ndim, axis, np.float32, "scale")
    zp = _param(zero_point, x.ndim, axis, np.int64, "zero_point")
    ### BEGIN SOLUTION
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = np.rint(x / s).astype(np.float64)  # integer valued; float64 keeps r + zp exact
    r = np.where(np.isnan(r), 0.0, r)
    q = np.clip(r + zp, qmin, qmax)
    return q.astype(name)
    ### END SOLUTION


def dequantize(q, scale, zero_point, axis=None):
    """Real values of quantized data: ``x = (q - zp) * s`` in float32.

    q: integer array; scale, zero_point: scalars or 1-D arrays along ``axis``.
    Returns float32 with the shape of q.
    """
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise TypeError(f"dequantize needs integer data, got {q.dtype}")
    _check_channels(q, scale, axis, "scale")
    _check_channels(q, zero_point, axis, "zero_point")
    s = _param(scale, q.ndim, axis, np.float32, "scale")
    zp = _param(zero_point, q.ndim, axis, np.int64, "zero_point")
    ### BEGIN SOLUTION
    return (q.astype(np.int64) - zp).astype(np.float32) * s
    ### END SOLUTION


def fake_quantize(x, scale, zero_point, dtype="uint8", axis=None, bits=None,
                  reduced_range=False):
    """``dequantize(quantize(x))``: the float values a quantized model actually sees."""
    q = quantize(x, scale, zero_point, dtype, axis, bits, reduced_range)
    return dequantize(q, scale, zero_point, axis)


def quantize_bias(bias, input_scale, weight_scale):
    """Quantize a bias to int32 with scale ``s_in * s_w[c]``: ``b_q = rint(b / (s_in * s_w[c]))``.

    bias: float [N]; input_scale: scalar; weight_scale: scalar or [N].
    The division runs in float64 (the bias scale is tiny and the result is an int32, so the
    extra precision keeps it faithful); results saturate to the int32 range, NaN -> 0.
    Returns int32 [N].
    """
    b = np.asarray(bias, dtype=np.float64)
    s = np.float64(np.float32(input_scale)) * np.asarray(weight_scale, np.float32).astype(np.float64)
    ### BEGIN SOLUTION
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = np.rint(b / s)
    r = np.where(np.isnan(r), 0.0, r)
    return np.clip(r, _INT32_MIN, _INT32_MAX).astype(np.int32)
    ### END SOLUTION


def quantize_multiplier(M):
    """Decompose a positive real multiplier as ``M ~= m * 2^-(31 + n)``.

    ``M = M0 * 2^-n`` with ``M0`` in [0.5, 1); ``m = rint(M0 * 2^31)`` as int32 (when that rounds
    to 2^31, ``m = 2^30`` and ``n - 1``). The relative error is at most 2^-31.

    Edge rules: M == 0 and M < 2^-32 (where n would exceed 31, the largest shift; products
    with any int32 accumulator round to 0 or +-1) give (m, n) = (0, 0), i.e. a zero output; M that rounds to 2^30 or above (n would be
    below -30) and negative or non-finite M raise ValueError.

    M: scalar or array (float64 recommended). Returns ``(m, n)`` int32 arrays of M's shape.
    """
    M = np.asarray(M, dtype=np.float64)
    if not np.all(np.isfinite(M)) or np.any(M < 0):
        raise ValueError(f"multiplier must be finite and >= 0, got {M}")
    if np.any(M >= 2.0 ** 30):
        raise ValueError(f"multiplier must be < 2^30, got {M.max()}")
    ### BEGIN SOLUTION
    M0, e = np.frexp(M)  # M = M0 * 2^e, M0 in [0.5, 1)
    n = -e.astype(np.int64)
    m = np.rint(np.ldexp(M0, 31)).astype(np.int64)
    carry = m == 2 ** 31
    m = np.where(carry, 2 ** 30, m)
    n = np.where(carry, n - 1, n)
    tiny = (M == 0) | (n > 31)
    m = np.where(tiny, 0, m)
    n = np.where(tiny, 0, n)
    ### END SOLUTION
    if np.any(n < -30):
        raise ValueError(f"multiplier must round to below 2^30, got {M.max()}")
    return m.astype(np.int32), n.astype(np.int32)


def requant_multiplier(input_scale, weight_scale, output_scale):
    """``quantize_multiplier(s_in * s_w / s_out)`` with the product formed in float64."""
    s_in = np.float64(np.float32(input_scale))
    s_w = np.asarray(weight_scale, np.float32).astype(np.float64)
    s_out = np.float64(np.float32(output_scale))
    return quantize_multiplier(s_in * s_w / s_out)


def requantize(acc, multiplier, shift, out_zero_point, out_dtype="uint8", relu=False,
               axis=-1, qmin=None, qmax=None):
    """Requantize int32 accumulators to the output type.

    acc: integer array; multiplier (m), shift (n): int32 scalars or 1-D arrays along ``axis``
    (the output channels, the last axis by default), from :func:`quantize_multiplier`.
    With 64-bit integers: ``s = 31 + n``, ``y = (acc * m + 2^(s-1)) >> s`` (arithmetic shift,
    rounds half up), ``out = clamp(y + zp_out, lo, hi)`` with ``[lo, hi]`` the range of
    out_dtype (or qmin/qmax) and ``lo = max(lo, zp_out)`` when ``relu``.
    acc is saturated to int32 first (the kernels accumulate in int32).
    Returns an array of out_dtype ("uint8" or "int8").
    """
    name = _dtype_name(out_dtype)
    lo, hi = qrange(name)
    lo = lo if qmin is None else int(qmin)
    hi = hi if qmax is None else int(qmax)
    acc = np.clip(np.asarray(acc, dtype=np.int64), _INT32_MIN, _INT32_MAX)
    ax = None if np.ndim(multiplier) == 0 else axis
    m = _param(multiplier, acc.ndim, ax, np.int64, "multiplier")
    n = _param(shift, acc.ndim, ax, np.int64, "shift")
    if np.any(n < -30) or np.any(n > 31):
        raise ValueError(f"shift n must be in [-30, 31], got {np.asarray(shift)}")
    ### BEGIN SOLUTION
    s = 31 + n
    y = (acc * m + (np.int64(1) << (s - 1))) >> s
    if relu:
        lo = max(lo, int(out_zero_point))
    return np.clip(y + int(out_zero_point), lo, hi).astype(name)
    ### END SOLUTION


def weight_colsum(w):
    """``colsum[c] = sum_k w[c, k]`` of int8 weights [N, K], as int32 [N]."""
    w = np.asarray(w)
    return w.astype(np.int64).sum(axis=1).astype(np.int32)


def qgemm_reference(a, w, a_zero_point, bias=None, multiplier=None, shift=None,
                    out_zero_point=0, relu=False, out_dtype="uint8", colsum=None):
    """Integer GEMM of a quantized layer, exactly as the backend ``qgemm`` kernels compute it.

    a: uint8 or int8 [M, K] activations with zero point ``a_zero_point``.
    w: int8 [N, K] weights with zero point 0 (one row per output channel).
    bias: int32 [N] (quantized with :func:`quantize_bias`) or None.
    multiplier, shift: int32 [N], the (m, n) pairs of :func:`quantize_multiplier`
        (``shift`` holds n; the right shift applied is 31 + n). Ignored for int32 output.
    colsum: int32 [N]; defaults to :func:`weight_colsum` of w (the backends get it precomputed).

        acc[i, c] = sum_k a[i, k] * w[c, k] - a_zero_point * colsum[c] + bias[c]
                  (= sum_k (a[i, k] - a_zero_point) * w[c, k] + bias[c])

    computed with int64 intermediates and saturated to int32. out_dtype "int32" returns acc;
    "uint8"/"int8" returns :func:`requantize` (acc, multiplier, shift, out_zero_point, relu).
    Returns [M, N] of out_dtype.
    """
    a = np.asarray(a)
    w = np.asarray(w)
    if a.ndim != 2 or w.ndim != 2:
        raise ValueError(f"qgemm needs 2-D a [M, K] and w [N, K], got {a.shape} and {w.shape}")
    if a.dtype not in (np.uint8, np.int8):
        raise TypeError(f"qgemm activations must be uint8 or int8, got {a.dtype}")
    if w.dtype != np.int8:
        raise TypeError(f"qgemm weights must be int8, got {w.dtype}")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"qgemm inner dimensions differ: a {a.shape}, w {w.shape}")
    N = w.shape[0]
    name = _dtype_name(out_dtype)
    colsum = weight_colsum(w) if colsum is None else np.asarray(colsum, np.int32)
    bias = np.zeros(N, np.int32) if bias is None else np.asarray(bias, np.int32)
    for what, p in (("colsum", colsum), ("bias", bias)):
        if p.shape != (N,):
            raise ValueError(f"qgemm {what} must have shape ({N},), got {p.shape}")
    ### BEGIN SOLUTION
    acc = a.astype(np.int64) @ w.astype(np.int64).T
    acc = acc - np.int64(a_zero_point) * colsum.astype(np.int64) + bias.astype(np.int64)
    acc = np.clip(acc, _INT32_MIN, _INT32_MAX)
    ### END SOLUTION
    if name == "int32":
        return acc.astype(np.int32)
    if multiplier is None or shift is None:
        raise ValueError("qgemm with uint8/int8 output needs multiplier and shift")
    multiplier = np.broadcast_to(np.asarray(multiplier, np.int32), (N,))
    shift = np.broadcast_to(np.asarray(shift, np.int32), (N,))
    return requantize(acc, multiplier, shift, out_zero_point, name, relu, axis=-1)


#: fractional bits kept while the two inputs of a quantized addition are rescaled
ADD_LEFT_SHIFT = 20


def add_multipliers(a_scale, b_scale, out_scale):
    """(m_a, n_a, m_b, n_b): the multipliers ``s_a / s_out`` and ``s_b / s_out`` (float64)."""
    s_out = np.float64(np.float32(out_scale))
    m_a, n_a = quantize_multiplier(np.float64(np.float32(a_scale)) / s_out)
    m_b, n_b = quantize_multiplier(np.float64(np.float32(b_scale)) / s_out)
    return m_a, n_a, m_b, n_b


def quantized_add(a, a_zero_point, a_mult, a_shift, b, b_zero_point, b_mult, b_shift,
                  out_zero_point, out_dtype="uint8", relu=False):
    """Elementwise sum of two quantized tensors in the output's quantization, integers only.

    a, b: integer arrays of the same shape with zero points za, zb; (a_mult, a_shift) and
    (b_mult, b_shift) the :func:`quantize_multiplier` pairs of s_a / s_out and s_b / s_out.
    With L = ADD_LEFT_SHIFT (20) fractional bits and 64-bit integers:

        ya = ((a - za) * 2^L * m_a + 2^(sa - 1)) >> sa,  sa = 31 + n_a   (same for b)
        y  = (ya + yb + 2^(L - 1)) >> L
        out = clamp(y + zp_out, lo, hi)      (lo = max(lo, zp_out) with ``relu``)

    so the only rounding that matters is the final one (each ya carries 20 extra bits).
    Returns an array of out_dtype with a's shape.
    """
    name = _dtype_name(out_dtype)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"quantized_add needs equal shapes, got {a.shape} and {b.shape}")
    lo, hi = qrange(name)
    ### BEGIN SOLUTION
    L = ADD_LEFT_SHIFT

    def rescale(x, m, n):
        s = 31 + np.int64(n)
        return (x * np.int64(m) + (np.int64(1) << (s - 1))) >> s

    ya = rescale((a - int(a_zero_point)) << L, a_mult, a_shift)
    yb = rescale((b - int(b_zero_point)) << L, b_mult, b_shift)
    y = (ya + yb + (1 << (L - 1))) >> L
    if relu:
        lo = max(lo, int(out_zero_point))
    return np.clip(y + int(out_zero_point), lo, hi).astype(name)
    ### END SOLUTION


# ------------------------------------------------------------------------------------------
# Weight-only int4, group-wise (docs/ARCHITECTURE.md, "Weight-only int4")
#
# A float weight W [N, K] (one row per output channel) is cut along K into groups of
# ``group`` values (the last group of a row may be shorter). Every group g of row n has a
# float32 scale s[n, g] and a zero point z[n, g] in [0, 15]; its 4-bit codes are
#     u = clamp(rint(w / s) + z, 0, 15),     w ~= (u - z) * s
# symmetric: s = max|w| / 7.5 (choose_qparams on the signed 4-bit range [-8, 7]), z = 8
# asymmetric: s = (hi - lo) / 15, z = clamp(-rint(lo / s), 0, 15): choose_qparams "affine" on
#     uint8 with bits=4 (the range extended to contain 0).
# Packing: two codes per byte, row by row, ``ceil(K / 2)`` bytes a row; code k sits in byte
# k // 2, in the LOW nibble when k is even and the HIGH nibble when k is odd; the unused high
# nibble of a row with odd K is 0.
# ------------------------------------------------------------------------------------------

__all__ += ["INT4_SCHEMES", "INT4_LANES", "int4_groups", "quantize_int4", "pack_int4",
            "unpack_int4", "dequantize_int4", "int4_gemm_reference"]

INT4_SCHEMES = ("symmetric", "asymmetric")
#: partial sums per parity per group in the int4 product (the width of one AVX2 float32 vector)
INT4_LANES = 8


def int4_groups(k, group):
    """Number of groups of a row of ``k`` values: ``ceil(k / group)``. ``group`` must be a
    positive multiple of 8 (the kernels unpack 8 codes at a time), ``k`` >= 1."""
    if not isinstance(group, (int, np.integer)) or group < 8 or group % 8:
        raise ValueError(f"int4 group size must be a positive multiple of 8 (e.g. 32, 64, "
                         f"128), got {group!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"int4 rows need k >= 1 values, got {k!r}")
    return -(-int(k) // int(group))


def quantize_int4(w, group=64, scheme="symmetric"):
    """Group-wise int4 codes of a float weight.

    w: float [N, K] (output channels x reduction), finite. group: values per group (multiple
    of 8). scheme: "symmetric" (zero point 8) or "asymmetric" (zero point per group).
    Returns ``(codes uint8 [N, K] in [0, 15], scales float32 [N, G], zero_points uint8 [N, G])``
    with ``G = ceil(K / group)``.
    """
    if scheme not in INT4_SCHEMES:
        raise ValueError(f"int4 scheme must be one of {INT4_SCHEMES}, got {scheme!r}")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int4 needs a 2-D weight [N, K], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize_int4: the weight holds non-finite values")
    n, k = w.shape
    ng = int4_groups(k, group)
    ### BEGIN SOLUTION
    # pad each row to whole groups with NaN: ignored by the range, quantized to the zero point
    # (one group longer than the row holds just the row: no padding as long as the group)
    width = group if ng > 1 else k
    g = np.full((n, ng * width), np.nan, np.float32)
    g[:, :k] = w
    g = g.reshape(n, ng, width)
    lo = np.nanmin(g, axis=2).reshape(-1)
    hi = np.nanmax(g, axis=2).reshape(-1)
    if scheme == "symmetric":
        scale, _ = choose_qparams(lo, hi, "symmetric", "int8", bits=4)
        zp = np.full(scale.shape, 8, np.int64)
    else:
        scale, zp = choose_qparams(lo, hi, "affine", "uint8", bits=4)
    scale = scale.reshape(n, ng)
    zp = zp.reshape(n, ng).astype(np.int64)
    # the padding NaNs quantize to the zero point and are cut off again
    codes = quantize(g.reshape(n * ng, width), scale.reshape(-1), zp.reshape(-1), "uint8",
                     axis=0, qmin=0, qmax=15)
    codes = codes.reshape(n, ng * width)[:, :k]
    return codes, scale.astype(np.float32), zp.astype(np.uint8)
    ### END SOLUTION


def pack_int4(codes):
    """Two 4-bit codes per byte: uint8 [N, K] in [0, 15] -> uint8 [N, ceil(K / 2)], code k in
    the low nibble of byte k // 2 when k is even, the high nibble when k is odd."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise ValueError(f"pack_int4 needs 2-D integer codes, got {codes.dtype} {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise ValueError(f"int4 codes must lie in [0, 15], got [{codes.min()}, {codes.max()}]")
    n, k = codes.shape
    padded = np.zeros((n, k + (k & 1)), np.uint8)
    padded[:, :k] = codes
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, k):
    """Inverse of :func:`pack_int4`: uint8 [N, ceil(k / 2)] -> codes uint8 [N, k]."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != -(-int(k) // 2):
        raise ValueError(f"unpack_int4 needs uint8 [N, ceil({k} / 2)], got {packed.dtype} "
                         f"{packed.shape}")
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :k]


def _expand_groups(p, k, group):
    """[N, G] per-group values -> [N, k] per-value ones (memory O(N k) for any group size)."""
    return np.asarray(p)[:, np.arange(k) // group]


def dequantize_int4(packed, scales, zero_points, group, k):
    """Float32 [N, k] weights ``(u - z) * s`` of packed int4 codes (for checks and for the
    reference; the kernels never form them)."""
    u = unpack_int4(packed, k).astype(np.int64)
    z = _expand_groups(zero_points, k, group).astype(np.int64)
    s = _expand_groups(np.asarray(scales, np.float32), k, group)
    return (u - z).astype(np.float32) * s


def int4_gemm_reference(x, packed, scales, zero_points, group, k):
    """``y [M, N] = x [M, k] @ W^T`` for int4 weights W [N, k], in the kernels' exact float32
    order (so they can be compared bit for bit; every operation is a float32 IEEE multiply or
    add, never a fused multiply-add).

    For every row m and output channel n, and every group g of ``group`` values (in order),
    with two sets of 8 partial sums (for the codes at even and at odd positions t of the
    group, which is how one byte holds them):

        pe[0..7] = po[0..7] = 0
        for t in 0 .. len(g) - 1:   k = g * group + t
            p = po if t is odd else pe
            p[(t % 16) // 2] = p[(t % 16) // 2] + float32(u[n, k] - z[n, g]) * x[m, k]
        q[l] = pe[l] + po[l]
        sum_g = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7))
        y[m, n] = y[m, n] + s[n, g] * sum_g          (y starts at 0)

    x: float32 [M, k]; packed uint8 [N, ceil(k/2)]; scales float32 [N, G]; zero_points uint8
    [N, G]. Returns float32 [M, N].
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"int4_gemm: x must be [M, {k}], got {x.shape}")
    ng = int4_groups(k, group)
    u = unpack_int4(packed, k)
    n = u.shape[0]
    scales = np.asarray(scales, np.float32)
    zero_points = np.asarray(zero_points)
    if scales.shape != (n, ng) or zero_points.shape != (n, ng):
        raise ValueError(f"int4_gemm: scales and zero points must be [{n}, {ng}], got "
                         f"{scales.shape} and {zero_points.shape}")
    ### BEGIN SOLUTION
    m = x.shape[0]
    L = INT4_LANES
    y = np.zeros((m, n), np.float32)
    w = u.astype(np.int64) - _expand_groups(zero_points, k, group).astype(np.int64)
    w = w.astype(np.float32)                                   # [N, k] small integers
    for g in range(ng):
        k0, k1 = g * group, min(k, (g + 1) * group)
        pe = np.zeros((m, n, L), np.float32)
        po = np.zeros((m, n, L), np.float32)
        for t0 in range(k0, k1, 2 * L):                        # 16 codes: 8 bytes
            t1 = min(k1, t0 + 2 * L)
            prod = w[None, :, t0:t1] * x[:, None, t0:t1]       # [M, N, <=16] float32
            even, odd = prod[..., 0::2], prod[..., 1::2]
            pe[..., :even.shape[-1]] = pe[..., :even.shape[-1]] + even
            po[..., :odd.shape[-1]] = po[..., :odd.shape[-1]] + odd
        q = pe + po
        s = ((q[..., 0] + q[..., 4]) + (q[..., 2] + q[..., 6])) + \
            ((q[..., 1] + q[..., 5]) + (q[..., 3] + q[..., 7]))
        y = y + scales[None, :, g] * s
    return y
    ### END SOLUTION


# ------------------------------------------------------------------------------------------
# Dynamic int8 (docs/ARCHITECTURE.md, "Dynamic int8"): weights per output channel, symmetric
# int8 [-127, 127], prepared once; activations affine uint8 per tensor from the range each
# call observes; the integer GEMM's int32 accumulator is turned back into float32 by
#     y = float32(acc) * (float32(s_x) * s_w[c])
# (a float32 product per channel, then one float32 multiply per output).
# ------------------------------------------------------------------------------------------

__all__ += ["dynamic_weight", "dynamic_linear_reference"]


def dynamic_weight(w):
    """Per-output-channel symmetric int8 of a float weight [N, K]: ``(w_q int8 [N, K],
    scale float32 [N])`` (range [-127, 127], zero point 0)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"dynamic_weight needs a 2-D weight [N, K], got shape {w.shape}")
    scale, zp = choose_qparams(w.min(axis=1), w.max(axis=1), "symmetric", "int8",
                               reduced_range=True)
    return quantize(w, scale, zp, "int8", axis=0, reduced_range=True), scale


def dynamic_linear_reference(x, w_q, w_scale, gemm=None):
    """``x [M, K] @ W^T`` with dynamic int8, for W prepared by :func:`dynamic_weight`.

    x: float [M, K] (converted to float32), finite; w_q: int8 [N, K] (zero point 0);
    w_scale: float32 [N]. ``gemm(x_q, zero_point)`` computes the int32 accumulator
    ``sum_k (x_q[m, k] - zero_point) * w_q[n, k]`` [M, N] of uint8 codes x_q [M, K]; the
    default is :func:`qgemm_reference`, the kit's kernels pass their own.

    1. one affine uint8 range per call: the min and max of all of x,
       ``s_x, z_x = choose_qparams(min, max, "affine", "uint8")``;
    2. ``x_q = quantize(x, s_x, z_x, "uint8")``; ``acc = gemm(x_q, z_x)``;
    3. ``y = float32(acc) * (float32(s_x) * w_scale[c])``, exactly in this float32 order.

    An empty x (M = 0) gives float32 [0, N] without calling gemm; NaN or inf in x is a
    ValueError. Returns float32 [M, N].
    """
    x = np.asarray(x, dtype=np.float32)
    w_q = np.asarray(w_q)
    w_scale = np.asarray(w_scale, np.float32)
    if w_q.ndim != 2 or w_q.dtype != np.int8:
        raise ValueError(f"dynamic linear: w_q must be int8 [N, K], got {w_q.dtype} {w_q.shape}")
    if x.ndim != 2 or x.shape[1] != w_q.shape[1]:
        raise ValueError(f"dynamic linear: x must be [M, {w_q.shape[1]}], got {x.shape}")
    if w_scale.shape != (w_q.shape[0],):
        raise ValueError(f"dynamic linear: w_scale must be [{w_q.shape[0]}], got "
                         f"{w_scale.shape}")
    if gemm is None:
        def gemm(xq, zp):
            return qgemm_reference(xq, w_q, zp, out_dtype="int32")
    ### BEGIN SOLUTION
    if x.shape[0] == 0:
        return np.zeros((0, w_q.shape[0]), np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("dynamic quantization: the activation holds non-finite values")
    s_x, z_x = choose_qparams(x.min(), x.max(), "affine", "uint8")
    acc = gemm(quantize(x, s_x, z_x, "uint8"), int(z_x))
    per_channel = np.float32(s_x) * w_scale
    return np.asarray(acc).astype(np.float32) * per_channel[None, :]
    ### END SOLUTION


# ------------------------------------------------------------------------------------------
# SmoothQuant scale migration (docs/ARCHITECTURE.md, "Outliers"): a per-input-channel factor
# s_j moves range from the activation to the weight without changing the float product,
# (x / s) @ (W * s)^T = x @ W^T, so per-tensor activation quantization no longer spends its
# levels on a few outlier channels.
#     s_j = max|X_j|^alpha / max_n |W_nj|^(1 - alpha)     (float64, then float32; channels
#           where either maximum is 0 get s_j = 1)
# ------------------------------------------------------------------------------------------

__all__ += ["smoothquant_scales"]


def smoothquant_scales(act_absmax, w, alpha=0.5):
    """Smoothing factors s [K] (float32) for activations with per-channel max |x| ``act_absmax``
    [K] feeding a weight w [N, K]; ``alpha`` in [0, 1] (0: no migration of the activation
    range, 1: all of it)."""
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or a.shape != (w.shape[1],):
        raise ValueError(f"smoothquant_scales: act_absmax must be [K] for w [N, K], got "
                         f"{a.shape} and {w.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"smoothquant alpha must lie in [0, 1], got {alpha}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("smoothquant_scales: act_absmax must be finite and >= 0")
    if w.shape[0] == 0:
        raise ValueError("smoothquant_scales: the weight has no rows (N = 0)")
    ### BEGIN SOLUTION
    wmax = np.abs(w).max(axis=0).astype(np.float64)
    ok = (a > 0) & (wmax > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(ok, a ** alpha / wmax ** (1.0 - alpha), 1.0)
    return s.astype(np.float32)
    ### END SOLUTION
