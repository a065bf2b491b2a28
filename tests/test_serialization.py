"""needle.save / needle.load: the safetensors format, round trips, validation, atomic writes."""
import json
import os

import numpy as np
import pytest

import needle as ndl
from needle import nn, serialization
from needle.serialization import SerializationError

DEV = ndl.cpu_numpy()


def _arrays():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 4)).astype(np.float32)
    f[0, :4] = [np.inf, -np.inf, -0.0, np.float32(1e-45)]  # inf, signed zero, subnormal
    return {
        "f32": f,
        "i8": np.array([-128, -1, 0, 127], np.int8),
        "u8": rng.integers(0, 256, (2, 3, 4)).astype(np.uint8),
        "i32": np.array([-(2 ** 31), 2 ** 31 - 1, 0], np.int32),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 5), np.int32),
    }


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_round_trip_bit_exact(tmp_path):
    arrays = _arrays()
    tensors = {k: ndl.Tensor(v, device=DEV, dtype=v.dtype.name, requires_grad=False)
               for k, v in arrays.items() if v.ndim > 0}
    tensors["scalar"] = arrays["scalar"]  # numpy values are accepted as they are
    path = tmp_path / "t.safetensors"
    ndl.save(tensors, path, metadata={"note": "hello"})
    out, meta = ndl.load(path, device=DEV, return_metadata=True)
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert isinstance(out[k], ndl.Tensor) and out[k].device == DEV
        assert not out[k].requires_grad
        _same_bits(out[k].numpy(), v)
    assert meta == {"note": "hello", "needle.format_version": "1", "needle.kind": "state_dict"}
    assert serialization.load_metadata(path) == meta


def test_nan_payload_preserved(tmp_path):
    bits = np.array([0x7FC00001, 0xFFC12345], np.uint32).view(np.float32)
    ndl.save({"nan": bits}, tmp_path / "n.safetensors")
    arrays, _ = serialization.load_numpy(tmp_path / "n.safetensors")
    _same_bits(arrays["nan"], bits)


def test_file_layout(tmp_path):
    path = tmp_path / "l.safetensors"
    ndl.save({"b": np.arange(3, dtype=np.int32), "a": np.ones(2, np.float32)}, path)
    # the whole file: its 184-byte header (0xb8, padded with 4 spaces), then a's and b's bytes
    want = (b"\xb8" + b"\0" * 7
            + b'{"__metadata__":{"needle.format_version":"1","needle.kind":"state_dict"},'
              b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
              b'"b":{"dtype":"I32","shape":[3],"data_offsets":[8,20]}}    '
            + b"\0\0\x80?" * 2 + b"\0\0\0\0" b"\x01\0\0\0" b"\x02\0\0\0")
    assert path.read_bytes() == want


def test_safetensors_package_reads_our_files_and_we_read_its(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    arrays = _arrays()
    ours = tmp_path / "ours.safetensors"
    ndl.save(arrays, ours, metadata={"k": "v"})
    theirs = st.load_file(str(ours))
    for k, v in arrays.items():
        _same_bits(theirs[k], v)
    with safe_open(str(ours), framework="numpy") as f:
        assert f.metadata()["needle.format_version"] == "1"
        assert f.metadata()["k"] == "v"
    path = tmp_path / "theirs.safetensors"
    st.save_file(arrays, str(path), metadata={"source": "safetensors"})
    out, meta = ndl.load(path, device=DEV, return_metadata=True)
    for k, v in arrays.items():
        _same_bits(out[k].numpy(), v)
    assert meta == {"source": "safetensors"}


def test_save_module_state_dict_and_load_into_model(tmp_path):
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 3, device=DEV), nn.BatchNorm1d(3, device=DEV))
    model.modules[1].running_mean.data = ndl.Tensor(np.float32([1, 2, 3]), device=DEV)
    path = tmp_path / "m.safetensors"
    ndl.save(model, path)
    assert serialization.load_metadata(path)["needle.kind"] == "model"
    state = ndl.load(path, device=DEV)
    ref = model.state_dict()
    assert set(state) == set(ref)
    for k in ref:
        _same_bits(state[k].numpy(), ref[k].numpy())
    np.random.seed(1)
    other = nn.Sequential(nn.Linear(4, 3, device=DEV), nn.BatchNorm1d(3, device=DEV))
    other.load_state_dict(state)
    x = ndl.Tensor(np.random.randn(5, 4).astype(np.float32), device=DEV)
    model.eval()
    other.eval()
    _same_bits(model(x).numpy(), other(x).numpy())


def test_load_to_default_device(tmp_path):
    ndl.save({"a": np.ones(3, np.float32)}, tmp_path / "d.safetensors")
    assert ndl.load(tmp_path / "d.safetensors")["a"].device == ndl.default_device()


# ------------------------------------------------------------------------------ save errors

@pytest.mark.parametrize("obj, meta, exc, match", [
    ({"a": np.zeros(2, np.float64)}, None, TypeError, "'a'.*float64"),
    ({"a": [1, 2]}, None, TypeError, "'a'.*list"),
    ({1: np.zeros(2, np.float32)}, None, ValueError, "key 1"),
    ({"__metadata__": np.zeros(2, np.float32)}, None, ValueError, "__metadata__"),
    ({"a": np.zeros(2, np.float32)}, {"n": 3}, TypeError, "str"),
    ({"a": np.zeros(2, np.float32)}, {"needle.kind": "x"}, ValueError, "reserved"),
    (42, None, TypeError, "int"),
])
def test_save_rejects_bad_input(tmp_path, obj, meta, exc, match):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(exc, match=match):
        ndl.save(obj, path, metadata=meta)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_save_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ndl.save({"a": np.zeros(1, np.float32)}, tmp_path / "nope" / "x.safetensors")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    ndl.save({"a": np.ones(4, np.float32)}, path)
    before = path.read_bytes()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))

    def broken_replace(src, dst):
        assert os.path.dirname(src) == os.path.dirname(os.fspath(dst))  # same directory
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        ndl.save({"a": np.zeros(4, np.float32)}, path)
    assert synced, "the temporary file must be fsync'ed before the rename"
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temporary file left behind


def test_saved_file_has_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        ndl.save({"a": np.ones(1, np.float32)}, tmp_path / "p.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------ load errors

def _write(path, header, data=b"", length=None, raw_header=None):
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(hb) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + hb + data)
    return path


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("kwargs, match", [
    (dict(header=GOOD, data=b"\0" * 4), r"truncated data.*8 bytes.*holds 4"),
    (dict(header=GOOD, data=b"\0" * 12), "4 unexpected trailing bytes"),
    (dict(header=GOOD, length=10 ** 6), "truncated header"),
    (dict(header=GOOD, length=2 ** 40), "exceeds the limit"),
    (dict(header=None, raw_header=b"{not json"), "corrupt header"),
    (dict(header=None, raw_header=b"\xff\xfe{}"), "corrupt header"),
    (dict(header=[1, 2]), "JSON object"),
    (dict(header={"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, data=b"\0" * 4),
     r"'w'.*unsupported dtype 'F16'"),
    (dict(header={"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, data=b"\0" * 8),
     r"'w'.*invalid shape \[-2\]"),
    (dict(header={"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, data=b"\0" * 8),
     r"'w'.*invalid data_offsets \[8, 0\]"),
    (dict(header={"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, data=b"\0" * 8),
     r"'w'.*shape \[3\] needs 12 bytes.*span 8"),
    (dict(header={"w": {"dtype": "F32", "shape": [2]}}, data=b"\0" * 8),
     r"'w' must have exactly dtype, shape and data_offsets"),
    (dict(header={"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                  "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, data=b"\0" * 3),
     r"'b'.*overlaps"),
    (dict(header={"a": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, data=b"\0" * 3),
     r"'a'.*leaves a gap"),
    (dict(header={"__metadata__": {"needle.format_version": "2"}}),
     r"unsupported needle.format_version '2'.*reads '1'"),
    (dict(header={"__metadata__": {"k": 3}}), "__metadata__ must map strings to strings"),
    (dict(header=None, raw_header=b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},'
                                  b' "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}'),
     "duplicate key 'a'"),
])
def test_load_rejects_corrupt_files(tmp_path, kwargs, match):
    path = _write(tmp_path / "bad.safetensors", **kwargs)
    with pytest.raises(SerializationError, match=match) as info:
        ndl.load(path, device=DEV)
    assert "bad.safetensors" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_rejects_tiny_and_truncated_files(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(SerializationError, match="truncated file"):
        ndl.load(path)
    good = tmp_path / "good.safetensors"
    ndl.save(_arrays(), good)
    raw = good.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 20):
        path.write_bytes(raw[:cut])
        with pytest.raises(SerializationError, match="truncated"):
            ndl.load(path)
    with pytest.raises(FileNotFoundError):
        ndl.load(tmp_path / "missing.safetensors")
