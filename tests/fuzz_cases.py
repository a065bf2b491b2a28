"""The case families of the fuzz suite (run inside fuzz_harness workers).

Every family is ``f(seed) -> (outcome, detail)``: it draws hostile or valid arguments from
``numpy.random.default_rng(seed)``, calls the public API, and checks the result against a
numpy reference computed here with exact Python integers. It raises ``Wrong`` for a silent
wrong answer, for a valid input refused, or for an invalid one accepted; an exception from
the API is classified by the worker (documented exceptions are clean refusals).
"""
import json
import os
import stat
import tempfile

import numpy as np

from needle.backend_ndarray import NDArray, cpu
from needle.backend_ndarray.ndarray import MAX_ELEMENTS

INT64_MAX = 2**63 - 1


class Wrong(AssertionError):
    pass


def _expect(ok, msg):
    if not ok:
        raise Wrong(msg)


def _hostile_int(rng, small=8):
    """A count, stride or offset: mostly small, sometimes near an overflow boundary."""
    r = rng.random()
    if r < 0.55:
        return int(rng.integers(-2, small + 1))
    choices = [2**31 - 1, 2**31, 2**32, 2**60, 2**61 - 1, 2**61, 2**62, 2**62 + 1,
               INT64_MAX, -INT64_MAX - 1, -(2**62), int(rng.integers(-INT64_MAX, INT64_MAX))]
    v = choices[int(rng.integers(len(choices)))]
    return v if rng.random() < 0.8 else -v if v != -INT64_MAX - 1 else v


def _view_valid(shape, strides, offset, size):
    """The reference rule (exact integers): (valid, count)."""
    if len(shape) != len(strides) or any(n < 0 for n in shape):
        return False, 0
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if int(np.prod([n for n in shape if n], dtype=object)) >= MAX_ELEMENTS:
        return False, count
    if count == 0:
        return True, 0
    lo = hi = offset
    for n, s in zip(shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return (offset >= 0 and lo >= 0 and hi < size), count


def _gather(base, shape, strides, offset):
    if 0 in shape:
        return np.empty(shape, base.dtype)
    idx = np.full(shape, offset, dtype=np.int64)
    for d, (n, s) in enumerate(zip(shape, strides)):
        if n > 1:
            ax = np.arange(n, dtype=np.int64) * s
            idx = idx + ax.reshape((1,) * d + (n,) + (1,) * (len(shape) - d - 1))
    return base[idx]


def _random_view(rng, size):
    nd = int(rng.integers(0, 9))
    if rng.random() < 0.5:  # mostly sane: small dims and strides that may or may not fit
        shape = [int(rng.integers(0, 4)) for _ in range(nd)]
        strides = [int(rng.integers(-6, 7)) for _ in range(nd)]
        offset = int(rng.integers(-2, size + 2))
    else:
        shape = [abs(_hostile_int(rng, 3)) if rng.random() < 0.7 else _hostile_int(rng, 3)
                 for _ in range(nd)]
        strides = [_hostile_int(rng) for _ in range(nd)]
        offset = _hostile_int(rng, size)
    if rng.random() < 0.05 and nd:
        strides = strides[:-1]
    return shape, strides, offset


_DTYPES = ("float32", "int8", "uint8", "int32")


def _base(rng, size, dtype):
    if dtype == "float32":
        return rng.standard_normal(size).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size).astype(dtype)


# ---- views: NDArray.make / as_strided and the backend's raw strided kernels ---------------

def views_python(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 40))
    dtype = _DTYPES[int(rng.integers(4))]
    base = _base(rng, size, dtype)
    a = NDArray(base, device=cpu())
    shape, strides, offset = _random_view(rng, size)
    valid, _ = _view_valid(shape, strides, offset, size)
    try:
        v = NDArray.make(shape, strides=strides, device=a.device, handle=a._handle, offset=offset)
    except CLEAN_REFUSAL:
        _expect(not valid,
                f"valid view refused: {shape} {strides} {offset} of {size}")
        return "clean", "refused"
    _expect(valid, f"invalid view accepted: {shape} {strides} {offset} of {size}")
    if v.size > 1 << 20:  # a valid broadcast view of a huge result: not materialised here
        return "ok", "large view"
    got = v.numpy()
    _expect(np.array_equal(got, _gather(base, shape, strides, offset)), "view values differ")
    return "ok", ""


def views_native(seed):
    """compact / to_numpy / ewise_setitem / scalar_setitem called with raw views."""
    rng = np.random.default_rng(seed)
    mod = cpu().mod
    size = int(rng.integers(1, 40))
    dtype = _DTYPES[int(rng.integers(4))]
    base = _base(rng, size, dtype)
    shape, strides, offset = _random_view(rng, size)
    valid, count = _view_valid(shape, strides, offset, size)
    arr = NDArray(base, device=cpu())._handle
    op = ("compact", "to_numpy", "ewise_setitem", "scalar_setitem")[int(rng.integers(4))]
    if valid and count >= 4096:  # huge valid (broadcast) views: only their refusals are tested
        op = "compact" if op == "to_numpy" else op
    out_size = count if valid and count < 4096 else int(rng.integers(0, 64))
    try:
        if op == "compact":
            out = mod.Array(out_size, dtype)
            mod.compact(arr, out, shape, strides, offset)
            got = mod.to_numpy(out, [out_size], [1], 0)
        elif op == "to_numpy":
            got = mod.to_numpy(arr, shape, strides, offset).reshape(-1)
        elif op == "ewise_setitem":
            src = _base(rng, out_size, dtype)
            mod.ewise_setitem(NDArray(src, device=cpu())._handle, arr, shape, strides, offset)
            got = mod.to_numpy(arr, [size], [1], 0)
        else:
            mod.scalar_setitem(out_size, 7, arr, shape, strides, offset)
            got = mod.to_numpy(arr, [size], [1], 0)
    except CLEAN_REFUSAL:
        _expect(not valid or out_size != count, f"{op}: valid view refused: {shape} {strides} "
                                                f"{offset} of {size}")
        return "clean", op
    _expect(valid and (op == "to_numpy" or out_size == count),
            f"{op}: invalid view accepted: {shape} {strides} {offset} of {size}")
    if op in ("compact", "to_numpy"):
        want = _gather(base, shape, strides, offset).reshape(-1)
    else:
        want = base.copy()
        idx = _gather(np.arange(size), shape, strides, offset).reshape(-1)
        vals = src if op == "ewise_setitem" else np.full(count, 7, dtype)
        for i, j in enumerate(idx):  # sequential: the last write wins, as the kernel's
            want[j] = vals[i]
    _expect(np.array_equal(got, want), f"{op}: values differ")
    return "ok", op


# ---- elementwise, reductions, matmul ------------------------------------------------------

def _sizes(rng, n=3):
    base = int(rng.integers(0, 50))
    return [base if rng.random() < 0.7 else abs(_hostile_int(rng, 60)) % 200 for _ in range(n)]


def elementwise(seed):
    rng = np.random.default_rng(seed)
    mod = cpu().mod
    na, nb, no = _sizes(rng)
    dts = [("float32" if rng.random() < 0.85 else _DTYPES[int(rng.integers(4))]) for _ in range(3)]
    a_np, b_np = _base(rng, na, dts[0]), _base(rng, nb, dts[1])
    a, b = NDArray(a_np, device=cpu())._handle, NDArray(b_np, device=cpu())._handle
    out = mod.Array(no, dts[2])
    op = ("add", "mul", "maximum", "exp", "scalar_add", "astype")[int(rng.integers(6))]
    valid = na == no and (op in ("exp", "scalar_add", "astype") or na == nb)
    valid = valid and (op == "astype" or (dts[0] == "float32" and dts[2] == "float32" and
                                          (op in ("exp", "scalar_add") or dts[1] == "float32")))
    try:
        if op in ("add", "mul", "maximum"):
            getattr(mod, "ewise_" + op)(a, b, out)
            want = {"add": np.add, "mul": np.multiply, "maximum": np.maximum}[op](a_np, b_np)
        elif op == "exp":
            mod.ewise_exp(a, out)
            want = np.exp(a_np)
        elif op == "scalar_add":
            mod.scalar_add(a, 1.5, out)
            want = a_np + np.float32(1.5)
        else:
            mod.astype(a, out)
            want = None
    except CLEAN_REFUSAL:
        _expect(not valid, f"{op}: valid sizes {na} {nb} {no} {dts} refused")
        return "clean", op
    _expect(valid, f"{op}: invalid sizes/dtypes {na} {nb} {no} {dts} accepted")
    got = mod.to_numpy(out, [no], [1], 0)
    if want is not None:
        _expect(np.allclose(got, want, rtol=1e-6, atol=0, equal_nan=True), f"{op}: values differ")
    return "ok", op


def reductions(seed):
    rng = np.random.default_rng(seed)
    mod = cpu().mod
    outer = int(rng.integers(0, 6))
    r = int(rng.integers(1, 9)) if rng.random() < 0.6 else _hostile_int(rng, 9)
    n_in = outer * r if rng.random() < 0.6 and 0 <= outer * r < 4096 else int(rng.integers(0, 60))
    a_np = rng.standard_normal(n_in).astype(np.float32)
    out = mod.Array(outer, "float32")
    kind = ("sum", "max")[int(rng.integers(2))]
    valid = r >= 1 and n_in == outer * r
    try:
        getattr(mod, "reduce_" + kind)(NDArray(a_np, device=cpu())._handle, out, r)
    except CLEAN_REFUSAL:
        _expect(not valid, f"reduce_{kind}: valid outer={outer} r={r} refused")
        return "clean", kind
    _expect(valid, f"reduce_{kind}: input {n_in} != {outer} * {r} accepted")
    got = mod.to_numpy(out, [outer], [1], 0)
    ref = a_np.astype(np.float64).reshape(outer, r)
    want = ref.sum(1) if kind == "sum" else ref.max(1)
    _expect(np.allclose(got, want, rtol=1e-5, atol=1e-5), f"reduce_{kind}: values differ")
    return "ok", kind


def matmul(seed):
    rng = np.random.default_rng(seed)
    mod = cpu().mod
    dims = [int(rng.integers(0, 20)) if rng.random() < 0.7 else _hostile_int(rng, 20)
            for _ in range(3)]
    m, n, p = dims
    sane = all(0 <= d < 64 for d in dims)
    sizes = [m * n, n * p, m * p] if sane and rng.random() < 0.7 else \
        [int(rng.integers(0, 64)) for _ in range(3)]
    a_np = rng.standard_normal(sizes[0]).astype(np.float32)
    b_np = rng.standard_normal(sizes[1]).astype(np.float32)
    out = mod.Array(sizes[2], "float32")
    valid = min(dims) >= 0 and sizes == [m * n, n * p, m * p]
    try:
        mod.matmul(NDArray(a_np, device=cpu())._handle, NDArray(b_np, device=cpu())._handle,
                   out, m, n, p)
    except CLEAN_REFUSAL:
        _expect(not valid, f"matmul: valid {m} {n} {p} refused")
        return "clean", "matmul"
    _expect(valid, f"matmul: sizes {sizes} for m, n, p = {dims} accepted")
    got = mod.to_numpy(out, [m * p], [1], 0).reshape(m, p)
    want = a_np.reshape(m, n).astype(np.float64) @ b_np.reshape(n, p)
    _expect(np.allclose(got, want, rtol=1e-4, atol=1e-4), "matmul: values differ")
    return "ok", "matmul"


# ---- the int8 kernels -----------------------------------------------------------------------

def _qparams(rng, n, out_dtype):
    bias = rng.integers(-1000, 1000, n).astype(np.int32)
    mult = rng.integers(2**29, 2**31 - 1, n).astype(np.int32)
    shift = rng.integers(-12, 2, n).astype(np.int32)
    return bias, mult, shift


def qgemm(seed):
    from needle.quant import reference as R
    rng = np.random.default_rng(seed)
    mod = cpu().mod
    m, n, k = (int(rng.integers(0, 40)) if rng.random() < 0.8 else _hostile_int(rng, 40)
               for _ in range(3))
    sane = 0 <= m < 64 and 0 <= n < 64 and 0 <= k < 200
    mm, nn, kk = (m, n, k) if sane else (3, 4, 5)
    a_dt = ("uint8", "int8")[int(rng.integers(2))]
    out_dt = ("uint8", "int8", "int32")[int(rng.integers(3))]
    a_np = _base(rng, mm * kk, a_dt).reshape(mm, kk)
    w_np = _base(rng, nn * kk, "int8").reshape(nn, kk)
    a_zp = int(rng.integers(-5, 260)) if rng.random() < 0.9 else _hostile_int(rng)
    out_zp = int(rng.integers(-130, 260)) if rng.random() < 0.9 else _hostile_int(rng)
    bias, mult, shift = _qparams(rng, nn, out_dt)
    if rng.random() < 0.1:
        shift[0] = _hostile_int(rng) % 200 - 100
    relu = bool(rng.integers(2))
    h = lambda x, dt: NDArray(x, device=cpu(), dtype=dt)._handle  # noqa: E731
    try:
        packed = mod.qpack_weights(h(w_np, "int8"), n, k)
        out = mod.Array(mm * nn, out_dt)
        colsum = R.weight_colsum(w_np)
        mod.qgemm(h(a_np, a_dt), packed, out, m, n, k, a_zp, h(colsum, "int32"),
                  h(bias, "int32"), h(mult, "int32"), h(shift, "int32"), out_zp, relu)
    except CLEAN_REFUSAL:
        return "clean", "qgemm"
    _expect(sane, f"qgemm: m, n, k = {m}, {n}, {k} accepted for buffers of {mm}, {nn}, {kk}")
    _expect(-2**31 <= a_zp < 2**31 and -2**31 <= out_zp < 2**31, "zero point outside int32 "
                                                                  "accepted")
    got = mod.to_numpy(out, [mm * nn], [1], 0).reshape(mm, nn)
    want = R.qgemm_reference(a_np, w_np, a_zp, bias, mult, shift, out_zp, relu, out_dt)
    _expect(np.array_equal(got, want), "qgemm: values differ from the reference")
    return "ok", "qgemm"


def qconv(seed):
    from needle.quant import reference as R
    rng = np.random.default_rng(seed)
    mod = cpu().mod
    geo = [int(rng.integers(1, 6)) for _ in range(7)]  # batch h w c c_out kh kw
    stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, 3))
    if rng.random() < 0.35:
        i = int(rng.integers(9))
        v = _hostile_int(rng, 6)
        if i < 7:
            geo[i] = v
        elif i == 7:
            stride = v
        else:
            pad = v
    b, h, w, c, co, kh, kw = geo
    sane = all(0 < g < 8 for g in geo) and 0 < stride < 4 and 0 <= pad < 4 and \
        h + 2 * pad >= kh and w + 2 * pad >= kw
    bb, hh, ww, cc, cco, kkh, kkw = geo if sane else (1, 3, 3, 2, 2, 2, 2)
    x_np = _base(rng, bb * hh * ww * cc, "uint8").reshape(bb, hh, ww, cc)
    k = kkh * kkw * cc
    w_np = _base(rng, cco * k, "int8").reshape(cco, k)
    zp = int(rng.integers(0, 256))
    bias, mult, shift = _qparams(rng, cco, "uint8")
    ho = (hh + 2 * pad - kkh) // stride + 1 if sane else 1
    wo = (ww + 2 * pad - kkw) // stride + 1 if sane else 1
    n_out = bb * ho * wo * cco if sane else int(rng.integers(0, 64))
    hd = lambda x, dt: NDArray(x, device=cpu(), dtype=dt)._handle  # noqa: E731
    try:
        packed = mod.qpack_weights(hd(w_np, "int8"), cco, k)
        out = mod.Array(n_out, "uint8")
        mod.qconv2d_nhwc(hd(x_np, "uint8"), packed, out, b, h, w, c, co, kh, kw, stride, pad, zp,
                         hd(R.weight_colsum(w_np), "int32"), hd(bias, "int32"),
                         hd(mult, "int32"), hd(shift, "int32"), 3, False)
    except CLEAN_REFUSAL:
        return "clean", "qconv"
    _expect(sane, f"qconv2d_nhwc: geometry {geo} stride {stride} pad {pad} accepted")
    xp = np.pad(x_np, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=zp)
    cols = np.stack([xp[:, i * stride:i * stride + kkh, j * stride:j * stride + kkw, :]
                     .reshape(bb, -1) for i in range(ho) for j in range(wo)], 1).reshape(-1, k)
    want = R.qgemm_reference(cols, w_np, zp, bias, mult, shift, 3, False, "uint8")
    got = mod.to_numpy(out, [n_out], [1], 0).reshape(want.shape)
    _expect(np.array_equal(got, want), "qconv2d_nhwc: values differ from the reference")
    return "ok", "qconv"


def quant_kernels_python(seed):
    """needle.quant.kernels.qgemm: per-call parameters must be honoured (never cached by name)."""
    from needle.quant import kernels as K
    from needle.quant import reference as R
    rng = np.random.default_rng(seed)
    n, k, m = (int(rng.integers(1, 9)) for _ in range(3))
    w_np = _base(rng, n * k, "int8").reshape(n, k)
    a_np = _base(rng, m * k, "uint8").reshape(m, k)
    w = K.PackedWeights(NDArray(w_np, dtype="int8"))
    a = NDArray(a_np, dtype="uint8")
    for _ in range(3):
        bias, mult, shift = _qparams(rng, n, "int8")
        zp = int(rng.integers(0, 256))
        got = K.qgemm(a, w, zp, bias, mult, shift, 1, False, "int8").numpy()
        want = R.qgemm_reference(a_np, w_np, zp, bias, mult, shift, 1, False, "int8")
        _expect(np.array_equal(got, want), "kernels.qgemm: values differ (stale parameters?)")
    return "ok", "kernels"


# ---- the CUDA host emulation ------------------------------------------------------------------

def _emulate():
    try:
        from needle.backend_ndarray import ndarray_backend_cuda as C
    except ImportError:
        return None
    return C.emulate


def emulate_compact(seed):
    e = _emulate()
    if e is None:
        return "ok", "no CUDA build"
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 40))
    dtype = _DTYPES[int(rng.integers(4))]
    base = _base(rng, size, dtype)
    shape, strides, offset = _random_view(rng, size)
    valid, count = _view_valid(shape, strides, offset, size)
    valid = valid and len(shape) <= 8 and count <= 2**26
    try:
        got = e.compact(base, shape, strides, offset)
    except CLEAN_REFUSAL:
        _expect(not valid, f"emulate.compact: valid view refused {shape} {strides} {offset}")
        return "clean", "compact"
    _expect(valid, f"emulate.compact: invalid view accepted {shape} {strides} {offset} of {size}")
    _expect(np.array_equal(got, _gather(base, shape, strides, offset)), "emulate.compact differs")
    return "ok", "compact"


def emulate_qgemm(seed):
    from needle.quant import reference as R
    e = _emulate()
    if e is None:
        return "ok", "no CUDA build"
    rng = np.random.default_rng(seed)
    m, n, k = (int(rng.integers(0, 24)) for _ in range(3))
    out_dt = ("uint8", "int8", "int32")[int(rng.integers(3))]
    a_np = _base(rng, m * k, "uint8").reshape(m, k)
    w_np = _base(rng, n * k, "int8").reshape(n, k)
    bias, mult, shift = _qparams(rng, n, out_dt)
    colsum = R.weight_colsum(w_np)
    lists = [colsum.tolist(), bias.tolist(), mult.tolist(), shift.tolist()]
    if rng.random() < 0.3:  # hostile: wrong lengths, shifts, shapes, dtypes
        j = int(rng.integers(4))
        lists[j] = lists[j][:-1] if lists[j] and rng.random() < 0.5 else lists[j] + [1]
    if rng.random() < 0.1:
        a_np = a_np.astype(np.float32)
    path = ("dp4a", "mma")[int(rng.integers(2))]
    try:
        got = e.qgemm(a_np, w_np, 3, *lists, 2, False, out_dt, path)
    except CLEAN_REFUSAL:
        return "clean", "qgemm"
    _expect(all(len(v) == n for v in lists) and a_np.dtype == np.uint8,
            "emulate.qgemm accepted bad arguments")
    want = R.qgemm_reference(a_np, w_np, 3, bias, mult, shift, 2, False, out_dt)
    _expect(np.array_equal(got, want), f"emulate.qgemm ({path}) differs from the reference")
    return "ok", "qgemm"


def emulate_misc(seed):
    e = _emulate()
    if e is None:
        return "ok", "no CUDA build"
    rng = np.random.default_rng(seed)
    if rng.random() < 0.5:
        shape = (int(rng.integers(0, 30)), int(rng.integers(0, 30)))
        if rng.random() < 0.2:  # a huge broadcast view: refused before any copy
            x = np.broadcast_to(np.float32(1), (2**20, 2**20))
        else:
            x = rng.standard_normal(shape).astype(np.float32)
        y = rng.standard_normal((x.shape[1], int(rng.integers(0, 30)))).astype(np.float32) \
            if x.shape[1] < 1000 else x
        try:
            got = e.matmul(x, y)
        except CLEAN_REFUSAL:
            return "clean", "matmul"
        _expect(np.allclose(got, x.astype(np.float64) @ y, rtol=1e-4, atol=1e-4),
                "emulate.matmul differs")
        return "ok", "matmul"
    src = ("float32", "int8", "uint8", "int32")[int(rng.integers(4))]
    dst = ("float32", "int8", "uint8", "int32", "float64")[int(rng.integers(5))]
    x = _base(rng, int(rng.integers(0, 50)), src)
    if src == "float32":
        x = (x * 1e3).astype(np.float32)
    try:
        got = e.astype(x, dst)
    except CLEAN_REFUSAL:
        _expect(dst == "float64", f"emulate.astype {src}->{dst} refused")
        return "clean", "astype"
    if dst == "float32":
        want = x.astype(np.float32)
    else:
        info = np.iinfo(dst)
        want = np.clip(np.rint(x.astype(np.float64)), info.min, info.max).astype(dst)
    _expect(np.array_equal(got, want), f"emulate.astype {src}->{dst} differs")
    return "ok", "astype"


# ---- checkpoint files -------------------------------------------------------------------------

def _valid_file(rng, path):
    import needle
    tensors = {}
    for i in range(int(rng.integers(1, 4))):
        dt = _DTYPES[int(rng.integers(4))]
        shape = tuple(int(s) for s in rng.integers(0, 5, int(rng.integers(0, 4))))
        tensors[f"t{i}"] = _base(rng, int(np.prod(shape)), dt).reshape(shape)
    needle.save(tensors, path)
    return tensors


def _hostile_header(rng):
    big = [2**31, 2**40, 2**62, 2**64, 10**30, -1]
    choice = int(rng.integers(10))
    if choice == 0:
        return {"t": {"dtype": "F32", "shape": [int(rng.choice(big))] * int(rng.integers(1, 4)),
                      "data_offsets": [0, 4]}}
    if choice == 1:
        return {"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}
    if choice == 2:
        return {"t": {"dtype": str(rng.choice(["F64", "BF16", "I64", "", "f32"])), "shape": [1],
                      "data_offsets": [0, 4]}}
    if choice == 3:
        deep = "[" * int(rng.integers(100, 100000)) + "]" * 3
        return deep
    if choice == 4:
        return {"t": {"dtype": "I8", "shape": [0] * 10 + [2**62], "data_offsets": [0, 0]}}
    if choice == 5:
        return {"__metadata__": rng.choice([None, [], 0, "x", {"a": 1}]) if rng.random() < 0.8
                else {"needle.format_version": "9"}}
    if choice == 6:
        return {"t": {"dtype": "U8", "shape": [1] * 100, "data_offsets": [0, 1]}}
    if choice == 7:
        return {"t": {"dtype": "I32", "shape": [2], "data_offsets": [4, 12]}}
    if choice == 8:
        return "9" * 5000
    return {"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}


def checkpoint_files(seed):
    import needle
    from needle.serialization import SerializationError
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.safetensors")
        tensors = _valid_file(rng, path)
        blob = open(path, "rb").read()
        kind = int(rng.integers(8))
        valid = False
        if kind == 0:  # the valid file itself
            valid = True
        elif kind == 1:  # truncated anywhere
            open(path, "wb").write(blob[:int(rng.integers(0, len(blob)))])
        elif kind == 2:  # one byte flipped in the header
            b = bytearray(blob)
            hl = int.from_bytes(blob[:8], "little")
            i = int(rng.integers(0, 8 + hl))
            b[i] ^= 1 << int(rng.integers(8))
            open(path, "wb").write(bytes(b))
            valid = None  # may still be valid (e.g. a changed name)
        elif kind == 3:  # hostile header
            raw = _hostile_header(rng)
            raw = (raw if isinstance(raw, str) else json.dumps(raw)).encode()
            data = bytes(int(rng.integers(0, 16)))
            open(path, "wb").write(len(raw).to_bytes(8, "little") + raw + data)
        elif kind == 4:  # huge header length
            open(path, "wb").write(int(rng.choice([2**63, 2**40, 10**8])).to_bytes(8, "little")
                                   + blob[8:])
        elif kind == 5:
            os.unlink(path)
            os.mkfifo(path)
        elif kind == 6:
            os.unlink(path)
            os.symlink(str(rng.choice(["/dev/zero", "/dev/null", d, path])), path)
        else:  # trailing garbage
            open(path, "wb").write(blob + bytes(int(rng.integers(1, 9))))
        try:
            got = needle.load(path)
        except SerializationError:
            _expect(valid is not True, "a valid checkpoint was refused")
            return "clean", f"kind {kind}"
        except OSError as e:
            _expect(kind == 6 and valid is not True, f"OSError on a non-link file: {e}")
            return "clean", f"kind {kind}"
        _expect(valid is not False, f"a hostile checkpoint (kind {kind}) was accepted")
        if valid:
            for k, v in tensors.items():
                _expect(got[k].shape == v.shape and np.array_equal(got[k].numpy(), v),
                        f"tensor {k} differs after loading")
        return "ok", f"kind {kind}"


from needle.serialization import SerializationError  # noqa: E402

CLEAN_REFUSAL = (ValueError, TypeError, SerializationError)

FAMILIES = {
    "views_python": views_python, "views_native": views_native, "elementwise": elementwise,
    "reductions": reductions, "matmul": matmul, "qgemm": qgemm, "qconv": qconv,
    "quant_kernels_python": quant_kernels_python, "emulate_compact": emulate_compact,
    "emulate_qgemm": emulate_qgemm, "emulate_misc": emulate_misc,
    "checkpoint_files": checkpoint_files,
}
