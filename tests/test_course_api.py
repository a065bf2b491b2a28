"""The 10-414/714 API the kit keeps for course code: NDArray.process_slice / flat / __array__,
device dunders, the CPU tiled matmul, top-level names, NEEDLE_BACKEND, the course's
MNISTDataset form and module paths, and the course-facing numerics of logsumexp, LayerNorm1d
and the hw2 MLP ResNet."""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd

ROOT = Path(__file__).resolve().parents[1]
needs_cpu = pytest.mark.skipif(not nd.cpu().enabled(), reason="C++ backend not built")


# ---------------------------------------------------------------- NDArray
@pytest.mark.parametrize("sl", [slice(None), slice(1, None), slice(None, -1), slice(-3, None, 2),
                                slice(2, 100), slice(-100, 2), slice(4, 1), slice(None, None, 3)])
def test_process_slice_matches_numpy(device, sl):
    a = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    A = nd.array(a, device=device)
    s = A.process_slice(sl, 0)
    assert isinstance(s.start, int) and isinstance(s.stop, int) and s.step >= 1
    assert 0 <= s.start <= s.stop <= 7
    np.testing.assert_array_equal(A[s, :].numpy(), a[sl, :])
    with pytest.raises(ValueError, match="positive"):
        A.process_slice(slice(None, None, -1), 1)
    with pytest.raises(IndexError, match="axis 2"):
        A.process_slice(slice(None), 2)


def test_flat_is_a_writable_view(device):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    A = nd.array(a, device=device)
    A.flat[5] += 0.5          # the course's finite-difference idiom
    a.flat[5] += 0.5
    np.testing.assert_array_equal(A.numpy(), a)
    assert A.flat.shape == (24,) and A.flat._handle is A._handle
    sub = A[1]                # row-major view at an offset: still a view
    sub.flat[0] = -1.0
    a[1].flat[0] = -1.0
    np.testing.assert_array_equal(A.numpy(), a)
    with pytest.raises(ValueError, match="compact"):
        A.permute((2, 1, 0)).flat


def test_numpy_accepts_ndarrays(device):
    a = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    A = nd.array(a, device=device)
    np.testing.assert_array_equal(np.asarray(A), a)
    assert np.asarray(A, dtype=np.float64).dtype == np.float64
    np.testing.assert_allclose(A, a)                           # course tests compare this way
    parts = np.array_split(A, 2)
    np.testing.assert_array_equal(np.concatenate(parts), a)
    assert isinstance(np.float32(2) * A, nd.NDArray)            # reflected ops still win


def test_device_dunder_attributes():
    assert nd.cpu_numpy().__device_name__ == "cpu_numpy"
    if nd.cpu().enabled():
        assert nd.cpu().__device_name__ == "cpu"
        assert nd.cpu().__tile_size__ == 8
    for dev in (nd.cpu(), nd.cpu_numpy()):
        for name in ("__array__", "__len__", "__name__", "__file__", "__not_there__"):
            assert not hasattr(dev, name), name
    with pytest.raises(AttributeError, match="__tile_size__"):
        nd.cpu_numpy().__tile_size__


def _tiled(x, t):
    r, c = x.shape
    return x.reshape(r // t, t, c // t, t).transpose(0, 2, 1, 3).copy()


@needs_cpu
@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (2, 3, 1), (3, 2, 4), (5, 7, 3)])
def test_matmul_tiled_matches_float64(m, n, p):
    dev, t = nd.cpu(), nd.cpu().__tile_size__
    rng = np.random.default_rng(m * 100 + n * 10 + p)
    a = rng.standard_normal((m * t, n * t))
    b = rng.standard_normal((n * t, p * t))
    A = nd.array(_tiled(a, t), device=dev)
    B = nd.array(_tiled(b, t), device=dev)
    C = nd.NDArray.make((m, p, t, t), device=dev)
    dev.matmul_tiled(A._handle, B._handle, C._handle, m * t, n * t, p * t)
    np.testing.assert_allclose(C.numpy(), _tiled(a @ b, t), rtol=1e-4, atol=1e-4)


@needs_cpu
def test_matmul_tiled_rejects_bad_sizes():
    dev, t = nd.cpu(), nd.cpu().__tile_size__
    A = nd.NDArray.make((1, 1, t, t), device=dev)
    C = nd.NDArray.make((1, 1, t, t), device=dev)
    with pytest.raises(ValueError, match="multiples of the tile size"):
        dev.matmul_tiled(A._handle, A._handle, C._handle, t - 1, t, t)
    with pytest.raises(ValueError, match="do not fit"):
        dev.matmul_tiled(A._handle, A._handle, C._handle, 2 * t, t, t)
    I = nd.NDArray.make((1, 1, t, t), device=dev, dtype="int8")
    with pytest.raises(TypeError, match="float32"):
        dev.matmul_tiled(I._handle, A._handle, C._handle, t, t, t)


# ---------------------------------------------------------------- top-level names
def test_top_level_names(device):
    assert ndl.NDArray is nd.NDArray and ndl.array_api is nd and ndl.Device is nd.BackendDevice
    x = ndl.ones(2, 3, device=device)
    np.testing.assert_array_equal(x.numpy(), np.ones((2, 3)))
    np.testing.assert_array_equal(ndl.zeros((2, 3), device=device).numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(ndl.zeros_like(x).numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(ndl.ones_like(x * 0).numpy(), np.ones((2, 3)))
    assert ndl.ones_like(x).device == device
    t = ndl.make_tuple(x, x * 2)
    assert isinstance(t, ndl.TensorTuple) and len(t) == 2
    np.testing.assert_array_equal(t[1].numpy(), 2 * np.ones((2, 3)))
    assert issubclass(ndl.TensorOp, ndl.Op) and isinstance(x, ndl.Value)


def _default_device_with(value):
    env = dict(os.environ, NEEDLE_BACKEND=value, PYTHONPATH=str(ROOT))
    code = "import needle; print(needle.default_device())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_needle_backend_env():
    res = _default_device_with("np")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "cpu_numpy()"
    bad = _default_device_with("tpu")
    assert bad.returncode != 0 and "NEEDLE_BACKEND='tpu'" in bad.stderr


# ---------------------------------------------------------------- data, the course's forms
def _write_idx(path, arr):
    dims = arr.shape
    code = 0x08  # uint8
    header = bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    img, lbl = tmp_path / "img-idx3-ubyte.gz", tmp_path / "lbl-idx1-ubyte.gz"
    _write_idx(img, images)
    _write_idx(lbl, labels)
    return str(img), str(lbl), images, labels


def test_mnist_dataset_course_form(tiny_mnist):
    img, lbl, images, labels = tiny_mnist
    ds = ndl.data.MNISTDataset(img, lbl)
    assert len(ds) == 7
    x, y = ds[3]
    assert x.shape == (784,) and x.dtype == np.float32 and y == labels[3]
    np.testing.assert_allclose(x, images[3].reshape(-1) / 255.0, rtol=1e-6)
    xb, yb = ds[2:5]
    assert xb.shape == (3, 784)
    np.testing.assert_array_equal(yb, labels[2:5])
    seen = []
    flipped = ndl.data.MNISTDataset(img, lbl, [lambda im: seen.append(im.shape) or im[:, ::-1]])
    np.testing.assert_allclose(flipped[1][0], (images[1][:, ::-1] / 255.0).reshape(-1), rtol=1e-6)
    assert seen == [(28, 28, 1)]
    batches = list(ndl.data.DataLoader(ds, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 784), (3, 784)]
    with pytest.raises(ValueError, match="unknown MNIST split 'nope'"):
        ndl.data.MNISTDataset("nope")


def test_course_module_paths():
    from needle.data.datasets import MNISTDataset, NDArrayDataset, CIFAR10Dataset
    from needle.data.datasets.mnist_dataset import MNISTDataset as M2
    from needle.data.data_transforms import RandomCrop, RandomFlipHorizontal
    assert MNISTDataset is M2 is ndl.data.MNISTDataset
    assert NDArrayDataset is ndl.data.NDArrayDataset and CIFAR10Dataset is ndl.data.CIFAR10Dataset
    assert RandomCrop is ndl.data.RandomCrop and RandomFlipHorizontal is ndl.data.RandomFlipHorizontal


# ---------------------------------------------------------------- numerics the course checks
def test_logsumexp_gradient_is_softmax_for_large_inputs(device):
    z = np.array([[1e10, 1e9, 1e8, -10.0], [1e-10, 1e9, 1e8, -10.0]])
    x = ndl.Tensor(z, device=device)
    (ndl.ops.logsumexp(x, (0,)) ** 2).sum().backward()
    z32 = z.astype(np.float32).astype(np.float64)
    m = z32.max(axis=0)
    soft = np.exp(z32 - m) / np.exp(z32 - m).sum(axis=0)
    lse = m + np.log(np.exp(z32 - m).sum(axis=0))
    np.testing.assert_allclose(x.grad.numpy(), 2 * lse * soft, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axes", [None, (1,), (0, 2)])
def test_logsumexp_gradient_finite_differences(axes):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 4, 2))
    c = rng.standard_normal(np.sum(z, axis=axes).shape)

    def f(v):
        m = v.max(axis=axes, keepdims=True)
        return float((np.squeeze(m + np.log(np.exp(v - m).sum(axis=axes, keepdims=True)), axis=axes
                                 if axes is not None else None) * c).sum())

    num = np.zeros_like(z)
    for i in range(z.size):
        d = np.zeros(z.size)
        d[i] = 1e-6
        d = d.reshape(z.shape)
        num.flat[i] = (f(z + d) - f(z - d)) / 2e-6
    x = ndl.Tensor(z, device=nd.cpu_numpy())
    (ndl.ops.logsumexp(x, axes) * ndl.Tensor(c, device=nd.cpu_numpy())).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), num, rtol=1e-3, atol=1e-4)


def test_layernorm_gradient_matches_torch(device):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).random((5, 6)) * 5
    t = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.layer_norm(t, (6,), eps=1e-5)
    (ref ** 4).sum().backward()
    xt = ndl.Tensor(x, device=device)
    out = ndl.nn.LayerNorm1d(6, device=device)(xt)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    (out ** 4).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), t.grad.numpy(), rtol=1e-3, atol=1e-3)


def test_mlp_resnet_shape_and_parameter_count():
    # the course's signature has no device: the model lives on the default device
    from needle.nn.zoo import MLPResNet, ResidualBlock
    block = ResidualBlock(10, 4, norm=ndl.nn.LayerNorm1d)
    # two Linear (10*4+4, 4*10+10) and two norms (2*4, 2*10)
    assert sum(p.numpy().size for p in block.parameters()) == 44 + 50 + 8 + 20
    model = MLPResNet(12, hidden_dim=8, num_blocks=2, num_classes=3)
    n_block = (8 * 4 + 4) + (4 * 8 + 8) + 2 * 4 + 2 * 8
    assert sum(p.numpy().size for p in model.parameters()) == (12 * 8 + 8) + 2 * n_block + (8 * 3 + 3)
    model.eval()
    x = np.random.default_rng(4).standard_normal((5, 12)).astype(np.float32)
    out = model(ndl.Tensor(x))
    assert out.shape == (5, 3)
    # eval mode: dropout is the identity, BatchNorm uses running stats (0 mean, unit var)
    p = [q.numpy() for q in model.parameters()]
    eps = 1e-5

    def lin(h, w, b):
        return h @ w + b.reshape(1, -1)

    h = np.maximum(lin(x.astype(np.float64), p[0], p[1]), 0)
    k = 2
    for _ in range(2):
        w1, b1, g1, be1, w2, b2, g2, be2 = p[k:k + 8]
        k += 8
        r = np.maximum(lin(h, w1, b1) / np.sqrt(1 + eps) * g1 + be1, 0)
        r = lin(r, w2, b2) / np.sqrt(1 + eps) * g2 + be2
        h = np.maximum(h + r, 0)
    np.testing.assert_allclose(out.numpy(), lin(h, p[k], p[k + 1]), rtol=1e-4, atol=1e-4)
