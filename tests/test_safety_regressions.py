"""Regression tests for inputs that once crashed, hung, exhausted memory or gave wrong results.

Each case that could crash or hang runs in its own interpreter (``_py``), so a segfault or a
hang is a test failure instead of a dead test session.
"""
import gzip
import http.server
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import needle
from needle.backend_ndarray import NDArray, cpu
from needle.serialization import SerializationError

REPO = Path(__file__).resolve().parents[1]
needs_cpu = pytest.mark.skipif(not cpu().enabled(), reason="the C++ backend is not built")
# Under AddressSanitizer (make sanitize) resident memory includes its shadow and quarantine.
measures_memory = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", "") or not os.path.exists("/proc/self/status"),
    reason="ASan distorts resident memory; VmHWM needs /proc")


def _py(code, timeout=300):
    """Run ``code`` in a fresh interpreter at the repository root; return its stdout. A
    signal (crash) or a timeout fails the test with the script's stderr."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, cwd=str(REPO), env=env)
    assert p.returncode == 0, f"exit status {p.returncode}\n{p.stderr[-2000:]}"
    return p.stdout


# Peak resident memory of the calling process in MiB, from VmHWM: unlike ru_maxrss it starts
# afresh at exec, so a child started from a large test process measures only itself.
PEAK = textwrap.indent("""
def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) // 1024
""", " " * 8)  # indented like the scripts it is prepended to
on_linux = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")


def _raises(expr, exc="ValueError", match=""):
    """Script lines (indented like the scripts' first lines) asserting ``expr`` raises."""
    return textwrap.indent(f"""
try:
    {expr}
except {exc} as e:
    assert {match!r} in str(e), str(e)
    print("refused")
else:
    raise SystemExit({("accepted: " + expr[:60])!r})
""", " " * 8)


@needs_cpu
def test_view_whose_extent_overflows_int64_is_refused():
    out = _py("""
        import numpy as np
        from needle.backend_ndarray import NDArray
        a = NDArray(np.zeros(8, np.float32))
        m = a.device.mod
    """ + _raises("NDArray.make((2,)*8, strides=(2**61-1,)*8, device=a.device, handle=a._handle)"
                  ".numpy()", match="outside a buffer")
              + _raises("m.compact(a._handle, m.Array(256), [2]*8, [2**61-1]*8, 0)",
                        match="outside a buffer")
              + _raises("m.to_numpy(a._handle, [2]*5, [2**62-1]*5, 0)")
              + _raises("m.scalar_setitem(32, 1.0, a._handle, [2]*5, [2**62]*5, 0)")
              + _raises("m.ewise_setitem(m.Array(32), a._handle, [2]*5, [-2**62]*5, 7)"))
    assert out.count("refused") == 5


@needs_cpu
def test_python_view_constructors_validate():
    a = NDArray(np.arange(6, dtype=np.float32))
    with pytest.raises(ValueError, match="negative dimension"):
        NDArray(np.zeros(1, np.float32)).broadcast_to((-5,))
    with pytest.raises(ValueError, match="outside a buffer"):
        a.as_strided((2, 2), (2**62, 1))
    with pytest.raises(ValueError, match="2\\^60"):
        NDArray(np.zeros(1, np.float32)).broadcast_to((2**31, 2**31))
    with pytest.raises(ValueError, match="outside a buffer"):
        NDArray.make((4,), strides=(2,), device=a.device)  # a fresh buffer of 4 elements
    with pytest.raises(TypeError):
        NDArray.make((2.5,), device=a.device)
    # valid views keep working, including empty ones and negative strides
    assert a.as_strided((3, 2), (1, 1)).numpy().tolist() == [[0, 1], [1, 2], [2, 3]]
    assert NDArray.make((0, 2**40), strides=(1, 1), device=a.device,
                        handle=a._handle).numpy().shape == (0, 2**40)
    assert a.flip(0).numpy().tolist() == [5, 4, 3, 2, 1, 0]


def test_cuda_emulation_views_are_checked_without_overflow():
    pytest.importorskip("needle.backend_ndarray.ndarray_backend_cuda")
    out = _py("""
        import numpy as np
        from needle.backend_ndarray import ndarray_backend_cuda as C
    """ + _raises("C.emulate.compact(np.zeros(4, np.int8), [2], [2**63-1], 1)")
              + _raises("C.emulate.compact(np.arange(16, dtype=np.float32), [2, 2], "
                        "[2**62, 2**62-2], 4)")
              + _raises("C.emulate.compact(np.zeros(1, np.int8), [2**40], [0], 0)",
                        match="emulation limit")
              + _raises("C.emulate.matmul(np.broadcast_to(np.float32(1), (2**20, 2**20)), "
                        "np.zeros((2**20, 1), np.float32))", match="emulation limit"))
    assert out.count("refused") == 4


@needs_cpu
def test_matmul_and_reduce_sizes_that_overflow_are_refused():
    out = _py("""
        import needle as n
        m = n.cpu().mod
        A = m.Array
    """ + _raises("m.matmul(A(4), A(16), A(4), 2**62+1, 4, 4)", match="2^60")
              + _raises("m.matmul(A(0), A(0), A(0), 2**62, 2**2, 0)")
              + _raises("m.reduce_sum(A(4), A(2**2), 2**62+1)")
              + _raises("m.reduce_max(A(0), A(4), 2**62)")
              + _raises("m.qconv2d_nhwc(A(1, 'uint8'), m.qpack_weights(A(1, 'int8'), 1, 1), "
                        "A(1, 'uint8'), 2**50, 1, 1, 1, 1, 1, 1, 1, 2**20, 0, A(1, 'int32'), "
                        "A(1, 'int32'), A(1, 'int32'), A(1, 'int32'), 0, False)"))
    assert out.count("refused") == 5


@needs_cpu
def test_tiled_matmul_sizes_that_wrap_and_absurd_thread_counts_are_refused():
    # m * n of 2^61 * 8 wrapped to 0 and let a 0-element buffer through to the tile copies;
    # 10^6 OpenMP threads crashed inside libgomp at the next parallel loop; an infinite
    # measuring budget never returned
    out = _py("""
        import needle as n
        m = n.cpu().mod
        A = m.Array
    """ + _raises("m.matmul_tiled(A(0), A(64), A(0), 2**61, 8, 8)", match="2^60")
              + _raises("m.matmul_tiled(A(0), A(0), A(64), 8, 2**61, 8)", match="2^60")
              + _raises("m.matmul_tiled(A(64), A(0), A(0), 8, 8, 2**61)", match="2^60")
              + _raises("m.set_num_threads(10**6)", match="1 <= n <= 1024")
              + _raises("m.set_num_threads(2**31 - 1)", match="1 <= n <= 1024")
              + _raises("m._f32_peak_gflops(float('inf'))", match="[0, 60]")
              + _raises("m._f32_peak_gflops(float('nan'))", match="[0, 60]") + """
        m.set_num_threads(2)
        a = A(1 << 21); m.fill(a, 1.0); o = A(1 << 21)
        m.ewise_add(a, a, o)
        print("threads", m.get_num_threads())
    """)
    assert out.count("refused") == 7 and "threads 2" in out


def test_int4_weight_checks_values_before_casting_and_keeps_read_only_copies():
    from needle.quant.int4 import Int4Weight
    dev = needle.cpu_numpy()
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    good = Int4Weight.from_float(w, 32, "asymmetric", device=dev)
    parts = dict(codes=good.codes, scales=good.scales, zeros=good.zeros)
    for name, bad, match in (("codes", good.codes.astype(np.int64) + 1000, "value 1"),
                             ("codes", good.codes.astype(np.float32), "must be integers"),
                             ("zeros", np.full((4, 2), 200), "zero point 200"),
                             ("zeros", np.full((4, 2), -1), "value -1"),
                             ("scales", np.full((4, 2), np.inf, np.float32), "not finite")):
        with pytest.raises(ValueError, match=match):
            Int4Weight(**dict(parts, **{name: bad}), shape=(4, 64), group=32,
                       scheme="asymmetric", device=dev)
    mine = good.zeros.copy()
    w4 = Int4Weight(good.codes, good.scales, mine, (4, 64), 32, "asymmetric", device=dev)
    mine[0, 0] = 3                       # the caller's array stays the caller's ...
    assert w4.zeros[0, 0] == good.zeros[0, 0]
    with pytest.raises(ValueError, match="read-only"):
        w4.codes[0, 0] = 1               # ... and the weight's cannot change under its copies


@measures_memory
def test_int4_group_longer_than_the_row_needs_no_padding_memory():
    # group = 2^25 for a 64-value row padded every row to 2^25 floats (3.7 GB for 1 KB)
    out = _py(PEAK + """
        import numpy as np
        from needle.quant.int4 import Int4Weight
        from needle.quant import reference as R
        import needle
        w = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
        big = Int4Weight.from_float(w, 2**25, "asymmetric", device=needle.cpu_numpy())
        one = Int4Weight.from_float(w, 64, "asymmetric", device=needle.cpu_numpy())
        assert np.array_equal(big.codes, one.codes) and np.array_equal(big.scales, one.scales)
        assert np.array_equal(big.dequantize(), one.dequantize())
        x = np.ones((2, 64), np.float32)
        assert np.array_equal(big.matmul(x), one.matmul(x))
        print("peak_mib", peak_mib())
    """)
    assert int(out.split("peak_mib")[1]) < 400, out


def test_quantized_modules_refuse_values_their_buffers_would_wrap():
    from needle.quant.modules import QTensor, QuantizedAdd, QuantizedConv2d, QuantizedLinear, QuantStub
    lin = QuantizedLinear(4, 3, device=needle.cpu_numpy())
    ok = (np.ones((3, 4), np.int8), np.zeros(3, np.int32), np.ones(3), (1.0, 0), (1.0, 0))
    lin.set_qparams(*ok)
    for i, bad, match in ((1, np.full(3, 2 ** 40), "bias value 1099511627776"),
                          (0, np.full((3, 4), 200), "weight value 200"),
                          (0, np.full((3, 4), 0.5), "whole numbers"),
                          (2, np.full(3, np.nan), "weight_scale must be finite"),
                          (3, (1.0, 2 ** 40), "input_zero_point value")):
        args = list(ok)
        args[i] = bad
        with pytest.raises(ValueError, match=match):
            lin.set_qparams(*args)
    for kw, match in (({"padding": -2}, "padding must be an integer >= 0"),
                      ({"kernel_size": 0}, "kernel_size must be an integer >= 1"),
                      ({"stride": 0}, "stride must be an integer >= 1"),
                      ({"kernel_size": 2.5}, "kernel_size must be an integer")):
        with pytest.raises(ValueError, match=match):
            QuantizedConv2d(**dict({"in_channels": 3, "out_channels": 2, "kernel_size": 3}, **kw))
    with pytest.raises(ValueError, match="'uint8' or 'int8', got 'float32'"):
        QuantStub("float32")
    with pytest.raises(ValueError, match="'uint8' or 'int8'"):
        QuantizedAdd(out_dtype="int16")
    add = QuantizedAdd(device=needle.cpu_numpy())
    codes = NDArray(np.zeros((2, 2), np.uint8), device=needle.cpu_numpy(), dtype="uint8")
    floats = NDArray(np.zeros((2, 2), np.float32), device=needle.cpu_numpy())
    with pytest.raises(TypeError, match="integer codes"):
        add(QTensor(floats, np.float32(1.0), 0), QTensor(codes, np.float32(1.0), 0))
    add.set_qparams((1.0, 1000), (1.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match="zero point 1000 is outside its uint8 range"):
        add(QTensor(codes, np.float32(1.0), 1000), QTensor(codes, np.float32(1.0), 0))
    add.set_qparams((1.0, 0), (1.0, 0), (1.0, 300))
    with pytest.raises(ValueError, match="output zero point 300"):
        add(QTensor(codes, np.float32(1.0), 0), QTensor(codes, np.float32(1.0), 0))


def test_safetensors_shape_whose_nonzero_dimensions_overflow_is_a_serialization_error(tmp_path):
    import json
    header = json.dumps({"a": {"dtype": "F32", "shape": [0, 2 ** 59, 2 ** 59],
                               "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    from needle.serialization import load_numpy
    with pytest.raises(SerializationError, match="nonzero dimensions"):
        load_numpy(path)


@needs_cpu
def test_qgemm_uses_each_calls_bias_multiplier_and_shift():
    from needle.quant import kernels as K
    from needle.quant import reference as R
    a_np = np.ones((1, 4), np.uint8)
    a = NDArray(a_np, dtype="uint8")
    w = K.PackedWeights(NDArray(np.ones((2, 4), np.int8), dtype="int8"))
    f = lambda b: K.qgemm(a, w, 0, np.array(b, np.int32), None, None, 0, False,  # noqa: E731
                          "int32").numpy().tolist()
    assert f([0, 0]) == [[4, 4]]
    assert f([100, 100]) == [[104, 104]]
    assert f([0, -3]) == [[4, 1]]
    for shift in ([-1, -1], [-2, 0]):
        mult = np.array([2**30, 2**30 + 7], np.int32)
        got = K.qgemm(a, w, 0, np.zeros(2, np.int32), mult, np.array(shift, np.int32), 0,
                      False, "uint8").numpy()
        want = R.qgemm_reference(a_np, np.ones((2, 4), np.int8), 0, np.zeros(2, np.int32),
                                 mult, np.array(shift, np.int32), 0, False, "uint8")
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="outside the int32 range"):
        K.qgemm(a, w, 0, np.array([2**40, 0]), None, None, 0, False, "int32")
    with pytest.raises(ValueError, match="expected n = 2"):
        K.qgemm(a, w, 0, np.zeros(3, np.int32), None, None, 0, False, "int32")


@pytest.fixture(scope="module")
def small_qmodel(tmp_path_factory):
    from needle.quant import QConfig, quantize_model
    from needle.nn import nn_basic as nnb
    from needle.nn import nn_conv
    np.random.seed(0)
    model = nnb.Sequential(nn_conv.Conv(1, 4, 3), nnb.ReLU(), nnb.Flatten(),
                           nnb.Linear(4 * 6 * 6, 5))
    batches = [np.random.rand(2, 1, 6, 6).astype(np.float32) for _ in range(2)]
    q = quantize_model(model, batches, QConfig(), progress=False)
    path = tmp_path_factory.mktemp("q") / "q.safetensors"
    needle.save(q, path)
    return q, path, batches[0]


def _rewrite_spec(src, dst, edit):
    import json
    from needle.quant.convert import SPEC_KEY
    tensors, meta = needle.serialization.load_numpy(src)
    spec = json.loads(meta[SPEC_KEY])
    edit(spec)
    meta = {k: v for k, v in meta.items() if not k.startswith("needle.") or k.startswith(
        "needle.quant")}
    meta[SPEC_KEY] = json.dumps(spec)
    needle.save(tensors, dst, metadata=meta)


def _layers(spec, kind):
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == kind:
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(spec)
    return found


@measures_memory
def test_load_quantized_validates_metadata_before_allocating(small_qmodel, tmp_path):
    from needle.quant import load_quantized
    q, path, x = small_qmodel
    want = q(needle.Tensor(x)).numpy()
    assert np.array_equal(load_quantized(path)(needle.Tensor(x)).numpy(), want)

    def huge(spec):
        _layers(spec, "QuantizedLinear")[0].update(in_features=12000, out_features=12000)

    def huge_conv(spec):
        _layers(spec, "QuantizedConv2d")[0].update(in_channels=30000, kernel_size=64)

    cases = [(huge, "does not match the model description"),
             (huge_conv, "does not match the model description"),
             (lambda s: _layers(s, "QuantizedConv2d")[0].update(in_channels=70000), "in_chann"),
             (lambda s: _layers(s, "QuantizedConv2d")[0].update(padding=-1), "padding"),
             (lambda s: _layers(s, "QuantizedConv2d")[0].update(stride=0), "stride"),
             (lambda s: _layers(s, "QuantizedConv2d")[0].update(relu="yes"), "relu"),
             (lambda s: _layers(s, "QuantizedLinear")[0].update(out_features=True), "out_feat"),
             (lambda s: s.update(body={"Sequential": [s["body"]] * 5000}), "modules")]
    files = []
    for i, (edit, match) in enumerate(cases):
        bad = tmp_path / f"bad{i}.safetensors"
        _rewrite_spec(path, bad, edit)
        files.append((str(bad), match))
    out = _py(PEAK + f"""
        import time
        from needle.quant import load_quantized
        base = peak_mib()
        for path, match in {files!r}:
            t = time.time()
            try:
                load_quantized(path)
            except ValueError as e:
                assert match in str(e), str(e)
            else:
                raise SystemExit("accepted " + path)
            print(time.time() - t, peak_mib() - base)
    """)
    for line in out.splitlines():  # fast, and nothing allocated from the metadata
        seconds, mib = line.split()
        assert int(mib) < 100, out  # memory is the assertion; time is only printed
    assert len(out.splitlines()) == len(cases)
    deep = tmp_path / "deep.safetensors"
    _rewrite_spec(path, deep, lambda s: None)
    tensors, meta = needle.serialization.load_numpy(deep)
    meta = {k: v for k, v in meta.items() if k.startswith("needle.quant")}
    meta["needle.quant.model"] = "[" * 100000 + "]" * 100000
    needle.save(tensors, deep, metadata=meta)
    with pytest.raises(ValueError, match="corrupt quantized-model metadata"):
        load_quantized(deep)


@measures_memory
@needs_cpu
def test_int8_arrays_are_built_without_wide_temporaries():
    out = _py(PEAK + """
        import numpy as np
        from needle.backend_ndarray import NDArray
        src = np.ones(2**28, np.int8)
        before = peak_mib()
        a = NDArray(src, dtype="int8")
        print(peak_mib() - before)
        assert a.numpy()[:3].tolist() == [1, 1, 1]
    """)
    assert int(out.split()[0]) <= 300, f"{out} MiB for a 256 MiB int8 array"


@needs_cpu
def test_integer_inputs_saturate_and_unsupported_kinds_raise():
    big = np.array([2**64 - 1, 0, 2**63], np.uint64)
    assert NDArray(big, dtype="int8").numpy().tolist() == [127, 0, 127]
    assert NDArray(big, dtype="int32").numpy().tolist() == [2**31 - 1, 0, 2**31 - 1]
    assert NDArray(np.array([-2**63, 5], np.int64), dtype="uint8").numpy().tolist() == [0, 5]
    assert NDArray(np.array([1, 300], ">i4"), dtype="int32").numpy().tolist() == [1, 300]
    assert NDArray(np.array([True, False]), dtype="uint8").numpy().tolist() == [1, 0]
    for bad in (np.array([1 + 2j]), np.array(["a"]), np.array([object()])):
        with pytest.raises(TypeError, match="cannot store"):
            NDArray(bad)
    m = cpu().mod
    with pytest.raises(TypeError, match="byte order"):
        m.from_numpy(np.array([1], ">i4"), m.Array(1, "int32"))


@measures_memory
@needs_cpu
def test_loading_a_256_mib_int8_tensor_peaks_below_twice_its_size(tmp_path):
    path = tmp_path / "big.safetensors"
    needle.save({"w": np.full(2**28, 3, np.int8)}, path)
    out = _py(PEAK + f"""
        import needle
        before = peak_mib()
        t = needle.load({str(path)!r})["w"]
        peak = peak_mib() - before
        assert t.shape == (2**28,) and t.dtype == "int8"
        x = t.realize_cached_data()
        assert x[:2].numpy().tolist() == [3, 3] and x[2**28 - 2:].numpy().tolist() == [3, 3]
        print(peak)
    """)
    assert int(out.split()[0]) <= 512, f"peak {out} MiB loading 256 MiB"


def test_checkpoint_headers_raise_serialization_errors(tmp_path):
    def write(header, data=b""):
        p = tmp_path / "h.safetensors"
        raw = header.encode()
        p.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return p

    cases = {"[" * 100000: "corrupt header",
             '{"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}': "dtype",
             '{"t": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}':
                 "corrupt header",
             '{"t": {"dtype": "F32", "shape": [2, 2147483648, 2147483648], '
             '"data_offsets": [0, 4]}}': "limit",
             '{"t": {"dtype": "U8", "shape": [' + ",".join(["1"] * 65) + '], '
             '"data_offsets": [0, 1]}}': "invalid shape",
             '{"__metadata__": [], "t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}':
                 "__metadata__"}
    for header, match in cases.items():
        p = write(header, b"\0" * 4)
        with pytest.raises(SerializationError, match=match) as e:
            needle.load(p)
        assert str(p) in str(e.value)


def test_load_refuses_fifos_and_devices_without_blocking(tmp_path):
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    out = _py(f"""
        import needle
        from needle.serialization import SerializationError
        for p in ({str(fifo)!r}, {str(link)!r}, {str(tmp_path)!r}):
            try:
                needle.load(p)
            except SerializationError as e:
                assert "not a regular file" in str(e), e
                print("refused")
    """, timeout=30)
    assert out.count("refused") == 3


@measures_memory
def test_gzip_bomb_is_refused_before_it_is_decompressed(tmp_path):
    from needle.data import download as D
    bomb = tmp_path / "bomb.gz"
    member = gzip.compress(bytes(8 << 20), compresslevel=9)
    bomb.write_bytes(member * 40)  # 320 MiB of zeros in about 320 KB
    assert bomb.stat().st_size < 1 << 20
    out = _py(PEAK + f"""
        from needle.data.download import read_verified_gz, DataIntegrityError
        base = peak_mib()
        try:
            read_verified_gz({str(bomb)!r}, raw_sha256="0" * 64)
        except DataIntegrityError as e:
            assert "more than" in str(e), e
        else:
            raise SystemExit("accepted")
        print(peak_mib() - base)
    """)
    assert int(out.split()[0]) < 400  # the 256 MiB limit, never the 320 MiB of the bomb
    with pytest.raises(D.DataIntegrityError, match="checksum mismatch"):
        D.read_verified_gz(bomb, gz_sha256="0" * 64)  # compressed checksum first: no inflate
    small = tmp_path / "s.gz"
    small.write_bytes(gzip.compress(b"abc") + gzip.compress(b"def"))
    assert D.read_verified_gz(small) == b"abcdef"
    small.write_bytes(gzip.compress(b"abcdef" * 100)[:-5])
    with pytest.raises(D.DataIntegrityError, match="truncated|not a valid"):
        D.read_verified_gz(small)


class _Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server name
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_download_has_an_overall_deadline(tmp_path):
    from needle.data.download import download_url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/f"
        t = time.time()
        with pytest.raises(ConnectionError, match="deadline"):
            download_url(url, tmp_path / "f.bin", "0" * 64, retries=3, timeout=5, deadline=1.0,
                         progress=False, backoff=0.1)
        assert time.time() - t < 4
        assert not any(tmp_path.iterdir())  # no partial file left
    finally:
        server.shutdown()


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    from needle._atomic import atomic_write
    target = tmp_path / "m.safetensors"
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from needle._atomic import atomic_write
        with atomic_write({str(target)!r}) as f:
            f.write(b"x" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)], env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO))
    assert p.returncode == -9
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and not target.exists()
    alive = tmp_path / f".m.safetensors.{os.getppid()}.keep.tmp"  # a live writer's file
    alive.write_bytes(b"busy")
    with atomic_write(target) as f:
        f.write(b"done")
    assert target.read_bytes() == b"done"
    assert sorted(os.listdir(tmp_path)) == sorted(["m.safetensors", alive.name])
