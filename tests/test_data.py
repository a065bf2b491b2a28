"""needle.data: downloads (against a local HTTP server), idx parsing, datasets, the
DataLoader, transforms and the offline MNIST split. Never touches the internet."""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import stat
import tarfile
import threading

import numpy as np
import pytest

import needle.data as ndata
from needle.data import cifar10 as cifar_mod
from needle.data import download as dl_mod
from needle.data import mnist as mnist_mod
from needle.data import DataIntegrityError


# ---------------------------------------------------------------- a local HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {}      # path -> bytes, or ("truncate", bytes)
    requests = []

    def do_GET(self):
        type(self).requests.append(self.path)
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        truncate = isinstance(body, tuple)
        data = body[1] if truncate else body
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # a truncated response announces the full length, sends half and hangs up
        self.wfile.write(data[: len(data) // 2] if truncate else data)
        if truncate:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Serve ``server.routes`` on 127.0.0.1 at an ephemeral port, for one test."""
    _Handler.routes = {}
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.routes = _Handler.routes
    httpd.requests = _Handler.requests
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _sha(b):
    return hashlib.sha256(b).hexdigest()


def _files(d):
    return sorted(os.listdir(d))


# ---------------------------------------------------------------- downloads
def test_download_ok(server, tmp_path):
    payload = os.urandom(200_000)
    server.routes["/a.bin"] = payload
    dest = tmp_path / "sub" / "a.bin"
    out = ndata.download_url(server.base + "/a.bin", dest, _sha(payload), progress=False)
    assert out == dest and dest.read_bytes() == payload
    assert _files(dest.parent) == ["a.bin"]  # no temp file left


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    server.routes["/a.bin"] = b"corrupted bytes"
    dest = tmp_path / "a.bin"
    with pytest.raises(DataIntegrityError, match="checksum mismatch for a.bin"):
        ndata.download_url(server.base + "/a.bin", dest, _sha(b"the real bytes"), progress=False)
    assert _files(tmp_path) == []
    assert len(server.requests) == 1  # a checksum mismatch is not retried


def test_download_truncated_transfer_leaves_nothing(server, tmp_path):
    server.routes["/a.bin"] = ("truncate", os.urandom(50_000))
    with pytest.raises(ConnectionError, match="a.bin"):
        ndata.download_url(server.base + "/a.bin", tmp_path / "a.bin", "0" * 64,
                           retries=2, backoff=0, progress=False, timeout=5)
    assert _files(tmp_path) == []
    assert len(server.requests) == 2  # retried, but a bounded number of times


def test_download_interrupted_leaves_nothing(server, tmp_path, monkeypatch):
    payload = os.urandom(300_000)
    server.routes["/a.bin"] = payload

    class InterruptingBar:
        def __init__(self, *args, **kwargs):
            self.n = 0

        def update(self, k):
            self.n += k
            if self.n > 100_000:
                raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(dl_mod, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        ndata.download_url(server.base + "/a.bin", tmp_path / "a.bin", _sha(payload))
    assert _files(tmp_path) == []


def test_download_falls_back_to_next_mirror(server, tmp_path):
    payload = b"mirror two"
    server.routes["/two/a.bin"] = payload
    urls = [server.base + "/one/a.bin", server.base + "/two/a.bin"]
    ndata.download_url(urls, tmp_path / "a.bin", _sha(payload), backoff=0, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == payload
    assert server.requests == ["/one/a.bin", "/two/a.bin"]  # a 404 is not retried


def test_ensure_file_never_writes_into_read_only_dir(server, tmp_path):
    server.routes["/a.bin"] = b"x"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        with pytest.raises(FileNotFoundError, match="a.bin.*not writable"):
            ndata.ensure_file(ro, "a.bin", server.base + "/a.bin", _sha(b"x"))
        assert _files(ro) == [] and server.requests == []
    finally:
        ro.chmod(0o755)


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NEEDLE_DATA_DIR", str(tmp_path / "env"))
    assert ndata.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert ndata.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("NEEDLE_DATA_DIR")
    assert ndata.resolve_data_dir() == dl_mod.DEFAULT_DATA_DIR
    assert dl_mod.DEFAULT_DATA_DIR.name == "data"


# ---------------------------------------------------------------- idx files
def _idx(arr, code):
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def test_parse_idx_roundtrip():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 4, 3)).astype(np.uint8)
    np.testing.assert_array_equal(ndata.parse_idx(_idx(u8, 0x08)), u8)
    i32 = rng.integers(-2**31, 2**31 - 1, size=(7,)).astype(np.int32)
    out = ndata.parse_idx(_idx(i32, 0x0C))
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, i32)
    f32 = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(ndata.parse_idx(_idx(f32, 0x0D)), f32)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:2], "too short"),
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "type code 0x07"),
    (lambda b: b[:6], "truncated idx header"),
    (lambda b: b[:-1], "truncated or corrupt"),
    (lambda b: b + b"\x00", "truncated or corrupt"),
    # a header claiming 2^32-1 x 2^32-1 x 2^32-1 items must not allocate or overflow
    (lambda b: b[:4] + b"\xff" * 12 + b[16:], "truncated or corrupt"),
])
def test_parse_idx_errors(mutate, message):
    good = _idx(np.zeros((3, 2, 2), np.uint8), 0x08)
    with pytest.raises(DataIntegrityError, match=message):
        ndata.parse_idx(mutate(good), name="x.idx")


def test_read_idx_gz_corrupt_files(tmp_path):
    raw = _idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08)
    gz = gzip.compress(raw)
    (tmp_path / "trunc.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataIntegrityError, match="trunc.gz.*truncated"):
        ndata.read_idx_gz(tmp_path / "trunc.gz")
    (tmp_path / "plain.gz").write_bytes(raw)
    with pytest.raises(DataIntegrityError, match="plain.gz"):
        ndata.read_idx_gz(tmp_path / "plain.gz")
    # a valid gzip whose payload is a truncated idx
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(DataIntegrityError, match="short.gz"):
        ndata.read_idx_gz(tmp_path / "short.gz")


def test_read_verified_gz_accepts_official_or_decompressed_checksum(tmp_path):
    raw = _idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08)
    official = gzip.compress(raw, compresslevel=9, mtime=0)
    recompressed = gzip.compress(raw, compresslevel=1, mtime=1)
    assert official != recompressed
    (tmp_path / "o.gz").write_bytes(official)
    (tmp_path / "r.gz").write_bytes(recompressed)
    assert ndata.read_verified_gz(tmp_path / "o.gz", _sha(official), ()) == raw
    assert ndata.read_verified_gz(tmp_path / "r.gz", _sha(official), _sha(raw)) == raw
    with pytest.raises(DataIntegrityError, match="r.gz: checksum mismatch"):
        ndata.read_verified_gz(tmp_path / "r.gz", _sha(official), ())
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw[:-1] + b"\x01"))
    with pytest.raises(DataIntegrityError, match="x.gz: checksum mismatch"):
        ndata.read_verified_gz(tmp_path / "x.gz", _sha(official), _sha(raw))


# ---------------------------------------------------------------- MNIST end to end, synthetic
def _fake_mnist(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=(n,)).astype(np.uint8)
    return images, labels


def test_mnist_download_and_load(server, tmp_path, monkeypatch):
    images, labels = _fake_mnist(12, 1)
    files = {"t10k-images-idx3-ubyte.gz": gzip.compress(_idx(images, 0x08)),
             "t10k-labels-idx1-ubyte.gz": gzip.compress(_idx(labels, 0x08))}
    for name, blob in files.items():
        server.routes["/mnist/" + name] = blob
    monkeypatch.setattr(mnist_mod, "MNIST_MIRRORS", [server.base + "/nowhere/", server.base + "/mnist/"])
    monkeypatch.setattr(mnist_mod, "MNIST_FILES", {k: (_sha(v), ()) for k, v in files.items()})
    ds = ndata.MNISTDataset("test", data_dir=tmp_path)
    assert _files(tmp_path / "mnist") == sorted(files)
    assert len(ds) == 12 and ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:, 0], images / 255.0, rtol=0, atol=1e-7)
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and y == labels[3]
    xb, yb = ds[np.array([5, 0])]
    np.testing.assert_array_equal(yb, labels[[5, 0]])
    xs, ys = ds[2:5]
    assert xs.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(ys, labels[2:5])
    # second load reads the cached files without the network
    n_requests = len(server.requests)
    ndata.MNISTDataset("test", data_dir=tmp_path)
    assert len(server.requests) == n_requests


def test_mnist_corrupt_local_file_is_rejected(tmp_path, monkeypatch):
    images, labels = _fake_mnist(4, 2)
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 0x08)))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels, 0x08)))
    # the real checksums: these synthetic files must not pass as MNIST
    with pytest.raises(DataIntegrityError, match="t10k-images-idx3-ubyte.gz: checksum mismatch"):
        ndata.load_mnist("test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown MNIST split 'valid'"):
        ndata.load_mnist("valid", data_dir=tmp_path)


def test_mnist_from_files_checks_lengths(tmp_path):
    images, labels = _fake_mnist(4, 3)
    (tmp_path / "i.gz").write_bytes(gzip.compress(_idx(images, 0x08)))
    (tmp_path / "l.gz").write_bytes(gzip.compress(_idx(labels[:3], 0x08)))
    with pytest.raises(DataIntegrityError, match="4 images but labels have shape \\(3,\\)"):
        ndata.MNISTDataset.from_files(tmp_path / "i.gz", tmp_path / "l.gz")


def test_missing_file_in_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    (ro / "mnist").mkdir(parents=True)
    (ro / "mnist").chmod(0o555)
    try:
        with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz.*not writable"):
            ndata.load_mnist("offline-heldout", data_dir=ro)
    finally:
        (ro / "mnist").chmod(0o755)


# ---------------------------------------------------------------- CIFAR-10, synthetic
def _fake_cifar_folder(folder, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    md5 = {}
    content = {}
    for name in cifar_mod.TRAIN_BATCHES + cifar_mod.TEST_BATCHES:
        data = rng.integers(0, 256, size=(n, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        blob = pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels,
                             b"filenames": [b"f"] * n}, protocol=4)
        (folder / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
        content[name] = (data, labels)
    return md5, content


def test_cifar10_reads_verified_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    md5, content = _fake_cifar_folder(folder)
    monkeypatch.setattr(cifar_mod, "CIFAR10_BATCH_MD5", md5)
    train = ndata.CIFAR10Dataset(folder, train=True)
    test = ndata.CIFAR10Dataset(folder, train=False)
    assert len(train) == 30 and len(test) == 6
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == np.float32
    d1, l1 = content["data_batch_2"]
    np.testing.assert_allclose(train.images[6:12], d1.reshape(6, 3, 32, 32) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(train.labels[6:12], l1)
    x, y = test[2]
    assert x.shape == (3, 32, 32) and y == content["test_batch"][1][2]


def test_cifar10_refuses_unofficial_or_malicious_batch(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    md5, _ = _fake_cifar_folder(folder)
    # real digests: the synthetic file is refused before it is unpickled
    with pytest.raises(DataIntegrityError, match="test_batch: md5 .* refusing to unpickle"):
        ndata.CIFAR10Dataset(folder, train=False)

    class Evil:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "canary"),))

    (tmp_path / "canary").write_text("alive")
    blob = pickle.dumps({b"data": Evil(), b"labels": [0]})
    (folder / "test_batch").write_bytes(blob)
    monkeypatch.setattr(cifar_mod, "CIFAR10_BATCH_MD5", {**md5, "test_batch": hashlib.md5(blob).hexdigest()})
    with pytest.raises(DataIntegrityError, match="not allowed"):
        ndata.CIFAR10Dataset(folder, train=False)
    assert (tmp_path / "canary").exists()


def _tarball(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cifar10_download_and_unpack(server, tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-py"
    md5, content = _fake_cifar_folder(src, n=3)
    blob = _tarball({f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in src.iterdir()})
    server.routes["/cifar.tgz"] = blob
    monkeypatch.setattr(cifar_mod, "CIFAR10_URL", server.base + "/cifar.tgz")
    monkeypatch.setattr(cifar_mod, "CIFAR10_SHA256", _sha(blob))
    monkeypatch.setattr(cifar_mod, "CIFAR10_BATCH_MD5", md5)
    root = tmp_path / "data"
    ds = ndata.CIFAR10Dataset(train=False, data_dir=root)
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.labels, content["test_batch"][1])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_cifar10_tarball_with_escaping_path_is_rejected(server, tmp_path, monkeypatch):
    blob = _tarball({"cifar-10-batches-py/../../escaped": b"x"})
    server.routes["/cifar.tgz"] = blob
    monkeypatch.setattr(cifar_mod, "CIFAR10_URL", server.base + "/cifar.tgz")
    monkeypatch.setattr(cifar_mod, "CIFAR10_SHA256", _sha(blob))
    root = tmp_path / "data"
    with pytest.raises(DataIntegrityError, match="unexpected path"):
        ndata.download_cifar10(root, progress=False)
    assert not (tmp_path / "escaped").exists()
    assert not (root / "cifar-10-batches-py").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".cifar10.")]


# ---------------------------------------------------------------- DataLoader
def _toy(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 1, 1, 2)
    y = np.arange(n) % 3
    return ndata.NDArrayDataset(x, y)


def test_dataloader_batches_in_order():
    loader = ndata.DataLoader(_toy(10), batch_size=4, as_numpy=True)
    batches = list(loader)
    assert len(loader) == 3 and [b[0].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(10) % 3)
    loader = ndata.DataLoader(_toy(10), batch_size=4, drop_last=True, as_numpy=True)
    assert len(loader) == 2 and [b[0].shape[0] for b in loader] == [4, 4]


def test_dataloader_shuffle_is_a_seeded_permutation():
    ds = _toy(11)

    def epochs(seed):
        loader = ndata.DataLoader(ds, batch_size=3, shuffle=True, seed=seed, as_numpy=True)
        return [np.concatenate([b[0][:, 0, 0, 0] / 2 for b in loader]).astype(int) for _ in range(2)]

    e1, e2 = epochs(7), epochs(7)
    for a, b in zip(e1, e2):
        np.testing.assert_array_equal(a, b)  # same seed, same order
        assert sorted(a) == list(range(11))  # every sample exactly once
    assert not np.array_equal(e1[0], e1[1])  # a fresh order each epoch
    expected = np.random.default_rng(7).permutation(11)
    np.testing.assert_array_equal(e1[0], expected)


def test_dataloader_yields_tensors():
    from needle.autograd import Tensor
    x = np.random.default_rng(0).standard_normal((5, 1, 2, 2)).astype(np.float32)
    y = np.array([3, 1, 4, 1, 5])
    batch_x, batch_y = next(iter(ndata.DataLoader(ndata.NDArrayDataset(x, y), batch_size=5)))
    assert isinstance(batch_x, Tensor) and isinstance(batch_y, Tensor)
    assert batch_x.shape == (5, 1, 2, 2) and not batch_x.requires_grad
    np.testing.assert_array_equal(batch_x.numpy(), x)
    np.testing.assert_array_equal(batch_y.numpy(), y.astype(np.float32))


def test_dataloader_generic_dataset_and_bad_args():
    class Squares(ndata.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.array([i * i], np.float32), i

    (xb, yb), = list(ndata.DataLoader(Squares(), batch_size=5, as_numpy=True))
    np.testing.assert_array_equal(xb[:, 0], [0, 1, 4, 9, 16])
    np.testing.assert_array_equal(yb, np.arange(5))
    with pytest.raises(ValueError, match="batch_size"):
        ndata.DataLoader(Squares(), batch_size=0)
    with pytest.raises(ValueError, match="array 1 has shape"):
        ndata.NDArrayDataset(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------- transforms
def test_random_crop_matches_numpy_shift():
    # images are (H, W, C), as the course's transforms take them
    img = np.random.default_rng(1).standard_normal((6, 5, 2)).astype(np.float32)
    for seed in range(12):
        dy, dx = np.random.default_rng(seed).integers(-2, 3, size=2)
        expected = np.zeros_like(img)
        for i in range(6):
            for j in range(5):
                if 0 <= i + dy < 6 and 0 <= j + dx < 5:
                    expected[i, j] = img[i + dy, j + dx]
        out = ndata.RandomCrop(padding=2, seed=seed)(img)
        assert out.shape == img.shape and out.dtype == img.dtype
        np.testing.assert_array_equal(out, expected)


def test_random_flip():
    img = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    np.testing.assert_array_equal(ndata.RandomFlipHorizontal(p=1.0)(img), img[:, ::-1, :])
    np.testing.assert_array_equal(ndata.RandomFlipHorizontal(p=0.0)(img), img)
    flip = ndata.RandomFlipHorizontal(p=0.5, seed=3)
    draws = np.random.default_rng(3).random(200) < 0.5
    for d in draws:
        out = flip(img)
        np.testing.assert_array_equal(out, img[:, ::-1] if d else img)
    with pytest.raises(ValueError, match="1.5"):
        ndata.RandomFlipHorizontal(p=1.5)


def test_transforms_without_seed_follow_numpy_global_rng():
    img = np.arange(5 * 4 * 2, dtype=np.float32).reshape(5, 4, 2)
    np.random.seed(7)
    flips = np.random.rand(20) < 0.5
    np.random.seed(7)
    flip = ndata.RandomFlipHorizontal()
    for d in flips:
        np.testing.assert_array_equal(flip(img), img[:, ::-1] if d else img)
    np.random.seed(3)
    shifts = [np.random.randint(low=-2, high=3, size=2) for _ in range(10)]
    np.random.seed(3)
    crop = ndata.RandomCrop(2)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    for dy, dx in shifts:
        np.testing.assert_array_equal(crop(img), padded[2 + dy:2 + dy + 5, 2 + dx:2 + dx + 4])


def test_normalize_and_transforms_in_dataset():
    x = np.random.default_rng(2).random((4, 2, 2, 3)).astype(np.float32)  # (N, H, W, C)
    norm = ndata.Normalize(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    ref = (x[0].astype(np.float64) - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(norm(x[0]), ref, rtol=1e-6)
    ds = ndata.NDArrayDataset(x, np.zeros(4), transforms=[ndata.RandomFlipHorizontal(p=1.0), norm])
    xb, _ = ds.get_batch([1, 2])
    np.testing.assert_allclose(xb[1], norm(x[2][:, ::-1]), rtol=1e-6)
    with pytest.raises(ValueError, match="numpy image"):
        ndata.RandomCrop(1)(np.zeros(3))
    with pytest.raises(ValueError, match="3 mean values"):
        norm(np.zeros((3, 2, 2), np.float32))  # channel-first image: refused, not misread


def test_channel_first_datasets_hand_transforms_hwc():
    images = np.random.default_rng(5).random((3, 2, 4, 5)).astype(np.float32)  # (N, C, H, W)

    class Images(ndata.ImageLabelDataset):
        def __init__(self, transforms):
            super().__init__(transforms)
            self.images, self.labels = images, np.arange(3)

    seen = []
    ds = Images([lambda im: seen.append(im.shape) or im[:, ::-1]])
    x, _ = ds[1]
    assert seen == [(4, 5, 2)]
    np.testing.assert_array_equal(x, images[1][:, :, ::-1])  # W flipped, back to (C, H, W)


def test_dataloader_shuffle_follows_np_random_seed():
    ds = ndata.NDArrayDataset(np.arange(50, dtype=np.float32))
    np.random.seed(11)
    expected = np.random.permutation(50)
    np.random.seed(11)
    got = np.concatenate([b[0].numpy() for b in ndata.DataLoader(ds, 8, shuffle=True)])
    np.testing.assert_array_equal(got, expected)
    seeded = [np.concatenate([b[0].numpy() for b in ndata.DataLoader(ds, 8, shuffle=True, seed=4)])
              for _ in range(2)]
    np.testing.assert_array_equal(seeded[0], seeded[1])


# ---------------------------------------------------------------- the real offline split
def _have_offline_mnist():
    d = ndata.resolve_data_dir() / "mnist"
    return all((d / f).is_file() for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.skipif(not _have_offline_mnist(), reason="MNIST test set not in the data directory")
def test_offline_split():
    split = ndata.mnist_offline_split()
    train, heldout = split
    assert isinstance(split, ndata.MNISTOfflineSplit)
    assert (len(train), len(heldout)) == (8000, 2000)
    assert train.images.shape == (8000, 1, 28, 28) and train.images.dtype == np.float32
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(heldout.labels, minlength=10),
                                  [207, 230, 198, 207, 194, 169, 202, 215, 187, 191])
    total = np.bincount(train.labels, minlength=10) + np.bincount(heldout.labels, minlength=10)
    np.testing.assert_array_equal(total, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    # the split is positional: the same images as slicing the full test set
    full = ndata.MNISTDataset("test")
    np.testing.assert_array_equal(full.images[8000:], heldout.images)
    assert train.labels[0] == 7 and full.labels[8000] == heldout.labels[0]
