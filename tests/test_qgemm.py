"""The int8 GEMM backend call (docs/ARCHITECTURE.md, "Integer GEMM backend call").

Every backend's ``qpack_weights`` + ``qgemm`` must reproduce ``needle.quant.reference
.qgemm_reference`` bit for bit. On the C++ backend each instruction-set path (scalar, AVX2,
AVX-VNNI, AVX-512, AVX-512 VNNI, whichever this CPU has) is forced in turn through
``_qgemm_isa``; cuda runs when present. cpu_numpy *is* the reference, so it only takes part in
the argument-error tests.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from needle.backend_ndarray import ndarray as nd
from needle.quant.reference import qgemm_reference, quantize_multiplier, weight_colsum

REPO = Path(__file__).resolve().parent.parent
_CPU = nd.cpu()
_CUDA = nd.cuda()


def _paths():
    """(device, path) pairs: every int8 path of the C++ backend, then cuda's single path."""
    params = []
    if _CPU.enabled():
        for isa in _CPU.mod._qgemm_isas():
            params.append(pytest.param((_CPU, isa), id=f"cpu-{isa}"))
    else:
        params.append(pytest.param((_CPU, None), id="cpu", marks=pytest.mark.skip(
            reason="C++ backend not built (run `make build`)")))
    params.append(pytest.param((_CUDA, None), id="cuda", marks=pytest.mark.skipif(
        not _CUDA.enabled(), reason="no CUDA backend or no GPU")))
    return params


@pytest.fixture(params=_paths())
def path(request):
    """A device with one int8 GEMM path forced (restored to automatic choice afterwards)."""
    device, isa = request.param
    if isa is not None:
        assert device.mod._qgemm_isa(isa) == isa
    yield device
    if isa is not None:
        device.mod._qgemm_isa("auto")


def _array(device, x):
    x = np.ascontiguousarray(x)
    arr = device.Array(x.size, str(x.dtype))
    device.from_numpy(x.reshape(-1), arr)
    return arr


def run_qgemm(device, a, w, a_zp, colsum, bias, mult, shift, out_zp, relu, out_dtype):
    """Pack w, run the backend's qgemm, return out as numpy [M, N]."""
    m, k = a.shape
    n = w.shape[0]
    packed = device.qpack_weights(_array(device, w), n, k)
    out = device.Array(m * n, out_dtype)
    device.qgemm(_array(device, a), packed, out, m, n, k, a_zp, _array(device, colsum),
                 _array(device, bias), _array(device, mult), _array(device, shift), out_zp, relu)
    return device.to_numpy(out, (m, n), (n, 1), 0)


def make_case(rng, m, n, k, a_dtype, out_dtype):
    """Random operands with realistic requantization multipliers (outputs not all clamped)."""
    if a_dtype == "uint8":
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        a_zp = int(rng.integers(0, 256))
    else:
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        a_zp = int(rng.integers(-128, 128))
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    bias = rng.integers(-(2 ** 16), 2 ** 16, n, dtype=np.int32)
    # |acc| is about 128 * 70 * sqrt(k): scale it to roughly +-100 output steps
    real = rng.uniform(0.3, 3.0, n) * 100.0 / (128 * 70 * np.sqrt(max(k, 1)))
    mult, shift = quantize_multiplier(real)
    out_zp = {"uint8": int(rng.integers(0, 256)), "int8": int(rng.integers(-128, 128)),
              "int32": 0}[out_dtype]
    return dict(a=a, w=w, a_zp=a_zp, colsum=weight_colsum(w), bias=bias, mult=mult,
                shift=shift, out_zp=out_zp)


def check(device, case, relu, out_dtype):
    got = run_qgemm(device, case["a"], case["w"], case["a_zp"], case["colsum"], case["bias"],
                    case["mult"], case["shift"], case["out_zp"], relu, out_dtype)
    want = qgemm_reference(case["a"], case["w"], case["a_zp"], case["bias"], case["mult"],
                           case["shift"], case["out_zp"], relu, out_dtype, colsum=case["colsum"])
    assert got.dtype == want.dtype and got.shape == want.shape
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        i, j = bad[0]
        raise AssertionError(f"{len(bad)} mismatches, first at {i, j}: got {got[i, j]}, "
                             f"want {want[i, j]}")
    return want


# M x N x K: ones, odd sizes, k not a multiple of 4 (tail groups), several n blocks (> 256)
# and k blocks (> 256 bytes), one full-ish conv-shaped tile, 8 channels over two k blocks.
SHAPES = [(1, 1, 1), (1, 17, 5), (5, 1, 3), (7, 33, 9), (13, 16, 64), (6, 64, 4),
          (97, 70, 130), (31, 257, 301), (200, 16, 27), (3, 300, 1030), (4, 5, 0),
          (9, 8, 600)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_qgemm_matches_reference(path, rng, shape, a_dtype):
    m, n, k = shape
    for out_dtype in ("uint8", "int8", "int32"):
        case = make_case(rng, m, n, k, a_dtype, out_dtype)
        for relu in (False, True):
            want = check(path, case, relu, out_dtype)
    # the outputs are spread out, not all clamped to one value
    assert m * n < 8 or len(np.unique(want)) > 2


@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_qgemm_extreme_values(path, a_dtype):
    """Largest products in every lane (255 * -128, and -128 * -128 for int8 activations),
    accumulators that saturate int32 after the bias, multipliers at both ends of the range."""
    m, n, k = 9, 40, 4099
    lo = 0 if a_dtype == "uint8" else -128
    hi = 255 if a_dtype == "uint8" else 127
    a = np.full((m, k), lo, dtype=a_dtype)
    a[::2] = hi
    a[:, ::3] = lo
    w = np.full((n, k), -128, dtype=np.int8)
    w[1::2] = 127
    w[::5, ::7] = 0
    colsum = weight_colsum(w)
    bias = np.zeros(n, np.int32)
    bias[::3] = 2 ** 31 - 1
    bias[1::3] = -(2 ** 31)
    mult = np.full(n, 2 ** 31 - 1, np.int32)
    mult[::4] = 2 ** 30
    shift = np.full(n, -30, np.int32)
    shift[::2] = 31
    shift[1::6] = 0
    case = dict(a=a, w=w, a_zp=hi if a_dtype == "int8" else 0, colsum=colsum, bias=bias,
                mult=mult, shift=shift, out_zp=0)
    for out_dtype in ("uint8", "int8", "int32"):
        for relu in (False, True):
            check(path, case, relu, out_dtype)
    acc = check(path, case, False, "int32")
    assert acc.max() == 2 ** 31 - 1 and acc.min() == -(2 ** 31)


def test_qgemm_zero_point_folding(path, rng):
    """A zero point that is the midpoint of the data (a - zp symmetric) and one at the ends."""
    case = make_case(rng, 20, 24, 40, "uint8", "int32")
    for zp in (0, 128, 255, -7, 100000):
        case["a_zp"] = zp
        check(path, case, False, "int32")


def test_qgemm_empty_m(path):
    w = np.ones((3, 5), np.int8)
    out = run_qgemm(path, np.zeros((0, 5), np.uint8), w, 0, weight_colsum(w),
                    np.zeros(3, np.int32), np.ones(3, np.int32), np.zeros(3, np.int32), 0,
                    False, "uint8")
    assert out.shape == (0, 3)


def test_paths_agree_on_large_gemm(rng):
    """A GEMM large enough to use several threads and every cache block: all paths agree."""
    if not _CPU.enabled():
        pytest.skip("C++ backend not built")
    case = make_case(rng, 300, 272, 700, "int8", "uint8")
    results = {}
    try:
        for isa in _CPU.mod._qgemm_isas():
            _CPU.mod._qgemm_isa(isa)
            results[isa] = check(_CPU, case, True, "uint8")
    finally:
        _CPU.mod._qgemm_isa("auto")
    assert len(results) >= 1


# ---- argument errors ---------------------------------------------------------------------------
ALL_DEVICES = [pytest.param(nd.cpu_numpy(), id="cpu_numpy"),
               pytest.param(_CPU, id="cpu", marks=pytest.mark.skipif(
                   not _CPU.enabled(), reason="C++ backend not built")),
               pytest.param(_CUDA, id="cuda", marks=pytest.mark.skipif(
                   not _CUDA.enabled(), reason="no CUDA backend or no GPU"))]


def _good_args(device, m=4, n=5, k=6, out_dtype="uint8"):
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    args = dict(
        a=_array(device, rng.integers(0, 256, (m, k), dtype=np.uint8)),
        packed=device.qpack_weights(_array(device, w), n, k),
        out=device.Array(m * n, out_dtype), m=m, n=n, k=k, a_zero_point=3,
        colsum=_array(device, weight_colsum(w)), bias=_array(device, np.zeros(n, np.int32)),
        multiplier=_array(device, np.full(n, 2 ** 30, np.int32)),
        shift=_array(device, np.zeros(n, np.int32)), out_zero_point=0, relu=False)
    return args


def _call(device, args):
    device.qgemm(args["a"], args["packed"], args["out"], args["m"], args["n"], args["k"],
                 args["a_zero_point"], args["colsum"], args["bias"], args["multiplier"],
                 args["shift"], args["out_zero_point"], args["relu"])


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_qgemm_rejects_bad_dtypes(device):
    args = _good_args(device)
    _call(device, args)  # the good arguments work
    for key, bad in [("a", device.Array(24, "float32")), ("a", device.Array(24, "int32")),
                     ("out", device.Array(20, "float32")), ("colsum", device.Array(5, "int8")),
                     ("bias", device.Array(5, "float32")), ("shift", device.Array(5, "uint8"))]:
        bad_args = dict(args, **{key: bad})
        with pytest.raises(TypeError):
            _call(device, bad_args)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_qgemm_rejects_bad_sizes(device):
    args = _good_args(device)
    for key, bad in [("a", device.Array(23, "uint8")), ("out", device.Array(21, "uint8")),
                     ("colsum", device.Array(4, "int32")), ("bias", device.Array(6, "int32")),
                     ("multiplier", device.Array(0, "int32")), ("m", 5), ("k", 7), ("n", 4)]:
        with pytest.raises(ValueError):
            _call(device, dict(args, **{key: bad}))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_qpack_weights_rejects_bad_input(device):
    with pytest.raises(TypeError):
        device.qpack_weights(device.Array(6, "uint8"), 2, 3)
    with pytest.raises(ValueError):
        device.qpack_weights(device.Array(7, "int8"), 2, 3)


def test_cpu_qgemm_rejects_foreign_packing_and_bad_params():
    if not _CPU.enabled():
        pytest.skip("C++ backend not built")
    args = _good_args(_CPU, m=4, n=16, k=8)
    raw = _array(_CPU, np.zeros((16, 8), np.int8))  # unpacked weights of a plausible size
    with pytest.raises(ValueError, match="qpack_weights"):
        _call(_CPU, dict(args, packed=raw))
    other = _CPU.qpack_weights(_array(_CPU, np.zeros((16, 8), np.int8)), 8, 16)
    with pytest.raises(ValueError, match="packed for n=8 k=16"):
        _call(_CPU, dict(args, packed=other, n=16, k=8))
    bad_shift = _array(_CPU, np.full(16, 32, np.int32))
    with pytest.raises(ValueError, match=r"shift\[0\] = 32"):
        _call(_CPU, dict(args, shift=bad_shift))
    with pytest.raises(ValueError, match="int32 range"):
        _call(_CPU, dict(args, a_zero_point=2 ** 31))
    with pytest.raises(ValueError, match="exceeds"):
        _CPU.qpack_weights(_CPU.Array(70000, "int8"), 1, 70000)
    with pytest.raises(ValueError, match="unknown int8 GEMM path"):
        _CPU.mod._qgemm_isa("sse9")


def test_needle_isa_env_caps_the_path():
    """NEEDLE_ISA (read by the process) lowers the automatic choice."""
    if not _CPU.enabled():
        pytest.skip("C++ backend not built")
    code = ("from needle.backend_ndarray import ndarray_backend_cpu as m; "
            "print(m._qgemm_isa('auto'), ' '.join(m._qgemm_isas()))")
    for level, expect in [("scalar", "scalar"), ("avx2", "avx2")]:
        env = dict(os.environ, NEEDLE_ISA=level, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        if expect not in _CPU.mod._qgemm_isas():
            continue
        assert out[0] == expect
        assert "vnni" not in out[1:]


# ---- fused NHWC convolution (C++ backend) ------------------------------------------------------
def im2col_nhwc(x, kh, kw, stride, padding, pad_value):
    """numpy im2col: x [B, H, W, C] -> [B*Ho*Wo, kh*kw*C] in (kh, kw, c) order."""
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=pad_value)
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    cols = np.empty((b, ho, wo, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
    return cols.reshape(b * ho * wo, kh * kw * c), ho, wo


@pytest.fixture(params=[pytest.param(isa, id=isa) for isa in
                        (_CPU.mod._qgemm_isas() if _CPU.enabled() else [])])
def cpu_path(request):
    _CPU.mod._qgemm_isa(request.param)
    yield _CPU
    _CPU.mod._qgemm_isa("auto")


# (batch, h, w, c, c_out, kernel, stride, padding): MnistCNN / ResNet9-like layers, a 1x1, a
# kernel wider than the image, a 3-channel input whose patches end in a k tail, and patches of
# whole 64-byte rows (64 channels: the tile path reads the im2col rows in place)
CONVS = [(2, 7, 7, 1, 8, 3, 1, 1), (2, 9, 8, 8, 16, 3, 2, 1), (1, 5, 5, 16, 17, 3, 1, 1),
         (3, 11, 11, 3, 16, 7, 4, 3), (2, 1, 1, 32, 20, 3, 1, 1), (1, 6, 5, 5, 3, 1, 1, 0),
         (1, 4, 4, 70, 33, 3, 2, 0), (1, 3, 3, 2, 4, 5, 1, 2), (2, 8, 8, 64, 24, 1, 1, 0),
         (1, 10, 10, 64, 20, 3, 1, 1)]


@pytest.mark.parametrize("geom", CONVS, ids=lambda g: "-".join(map(str, g)))
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_qconv2d_nhwc_matches_im2col_reference(cpu_path, rng, geom, a_dtype):
    b, h, w, c, c_out, ks, stride, pad = geom
    dev = cpu_path
    if a_dtype == "uint8":
        x = rng.integers(0, 256, (b, h, w, c), dtype=np.uint8)
        zp = int(rng.integers(1, 255))
    else:
        x = rng.integers(-128, 128, (b, h, w, c), dtype=np.int8)
        zp = int(rng.integers(-127, 127))
    k = ks * ks * c
    cols, ho, wo = im2col_nhwc(x, ks, ks, stride, pad, zp)
    for out_dtype in ("uint8", "int8", "int32"):
        case = make_case(rng, cols.shape[0], c_out, k, "uint8", out_dtype)
        wq = case["w"]
        packed = dev.qpack_weights(_array(dev, wq), c_out, k)
        for relu in (False, True):
            out = dev.Array(b * ho * wo * c_out, out_dtype)
            dev.qconv2d_nhwc(_array(dev, x), packed, out, b, h, w, c, c_out, ks, ks, stride, pad,
                             zp, _array(dev, case["colsum"]), _array(dev, case["bias"]),
                             _array(dev, case["mult"]), _array(dev, case["shift"]),
                             case["out_zp"], relu)
            got = dev.to_numpy(out, (b * ho * wo, c_out), (c_out, 1), 0)
            want = qgemm_reference(cols, wq, zp, case["bias"], case["mult"], case["shift"],
                                   case["out_zp"], relu, out_dtype, colsum=case["colsum"])
            np.testing.assert_array_equal(got, want)


def test_qconv2d_nhwc_rejects_bad_arguments():
    if not _CPU.enabled():
        pytest.skip("C++ backend not built")
    dev = _CPU
    b, h, w, c, c_out, ks = 1, 5, 5, 2, 3, 3
    k = ks * ks * c
    wq = np.ones((c_out, k), np.int8)
    packed = dev.qpack_weights(_array(dev, wq), c_out, k)
    ch = lambda v: _array(dev, np.full(c_out, v, np.int32))  # noqa: E731
    good = dict(x=_array(dev, np.zeros((b, h, w, c), np.uint8)), packed=packed,
                out=dev.Array(b * h * w * c_out, "uint8"), batch=b, h=h, w=w, c=c, c_out=c_out,
                kh=ks, kw=ks, stride=1, padding=1, a_zero_point=0, colsum=ch(k), bias=ch(0),
                multiplier=ch(2 ** 30), shift=ch(0), out_zero_point=0, relu=False)
    dev.qconv2d_nhwc(**good)
    for key, bad, err in [("x", dev.Array(50, "float32"), TypeError),
                          ("x", dev.Array(49, "uint8"), ValueError),
                          ("out", dev.Array(74, "uint8"), ValueError),
                          ("stride", 0, ValueError), ("padding", -1, ValueError),
                          ("c", 3, ValueError), ("a_zero_point", 256, ValueError),
                          ("kh", 9, ValueError)]:
        with pytest.raises(err):
            dev.qconv2d_nhwc(**dict(good, **{key: bad}))


def test_qgemm_concurrent_calls(rng):
    """Several Python threads calling qgemm at once (the GIL is released) all get exact
    results: one call uses the helper threads, the others run on their own thread."""
    if not _CPU.enabled():
        pytest.skip("C++ backend not built")
    import threading
    cases = [make_case(rng, 300, 40 + 8 * i, 400, "uint8", "uint8") for i in range(4)]
    errors = []

    def worker(case):
        try:
            for _ in range(3):
                check(_CPU, case, True, "uint8")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
