"""CIFAR-10 (the "python version" batches), as in 10-414/714 hw4.

Images are float32 arrays of shape (3, 32, 32) with values in [0, 1]; labels are 0..9.
The data live in ``<data dir>/cifar-10-batches-py/``; if that folder is missing the official
tarball is downloaded, checked against its SHA-256, and unpacked.

About pickle: the official CIFAR-10 python batches are pickled dicts, so reading them means
unpickling. Unpickling an untrusted file can run arbitrary code, so (1) each batch file must
match the MD5 digest published for the official file before it is opened, and (2) the
unpickler only resolves the few numpy names a batch contains and refuses everything else.
"""
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .data_basic import ImageLabelDataset
from .download import DataIntegrityError, _check_writable, download_url, resolve_data_dir

__all__ = ["CIFAR10Dataset", "load_cifar10", "CIFAR10_CLASSES"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_FOLDER = "cifar-10-batches-py"
# MD5 digests of the official batch files (as published with the dataset)
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
TEST_BATCHES = ["test_batch"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

# the only globals an official batch pickle refers to (numpy array reconstruction)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which is not allowed")


def _md5_file(path):
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_batch(path):
    """Verify and unpickle one official batch; return (data uint8 (N, 3, 32, 32), labels (N,))."""
    path = Path(path)
    expected = CIFAR10_BATCH_MD5.get(path.name)
    if expected is None:
        raise DataIntegrityError(f"{path}: not an official CIFAR-10 batch file name")
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path} is missing")
    digest = _md5_file(path)
    if digest != expected:
        raise DataIntegrityError(
            f"{path}: md5 {digest} does not match the official file ({expected}); refusing to unpickle it")
    with open(path, "rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataIntegrityError(f"{path}: cannot read CIFAR-10 batch ({e})") from None
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError) as e:
        raise DataIntegrityError(f"{path}: unexpected CIFAR-10 batch contents ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataIntegrityError(f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR-10 shaped")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataIntegrityError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)


def _safe_extract(tar, dest):
    """Extract only regular files below ``cifar-10-batches-py/`` (no links, no '..')."""
    for member in tar.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or name.parts[:1] != (CIFAR10_FOLDER,):
            raise DataIntegrityError(f"unexpected path {member.name!r} in the CIFAR-10 tarball")
        if member.isdir():
            continue
        if not member.isfile():
            raise DataIntegrityError(f"unexpected non-file entry {member.name!r} in the CIFAR-10 tarball")
        target = Path(dest, *name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(member) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def download_cifar10(data_dir=None, progress=True):
    """Make sure ``<data dir>/cifar-10-batches-py`` exists: download the official tarball
    (SHA-256 checked), unpack it into a temporary folder and rename that into place.
    Returns the folder path."""
    root = resolve_data_dir(data_dir)
    folder = root / CIFAR10_FOLDER
    if folder.is_dir():
        return folder
    _check_writable(root, CIFAR10_FOLDER)
    tarball = root / CIFAR10_TARBALL
    if not tarball.is_file():
        download_url(CIFAR10_URL, tarball, CIFAR10_SHA256, progress=progress)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar10."))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            _safe_extract(tar, tmp)
        os.replace(tmp / CIFAR10_FOLDER, folder)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataIntegrityError(f"{tarball}: cannot unpack ({e}); delete it to download again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_cifar10(base_folder=None, train=True, data_dir=None, download=True):
    """Return ``(images uint8 (N, 3, 32, 32), labels uint8 (N,))`` for the 50,000 training
    or 10,000 test images."""
    if base_folder is None:
        folder = resolve_data_dir(data_dir) / CIFAR10_FOLDER
        if not folder.is_dir():
            if not download:
                raise FileNotFoundError(f"{folder} does not exist (download=False)")
            folder = download_cifar10(data_dir)
    else:
        folder = Path(base_folder)
    parts = [_read_batch(folder / name) for name in (TRAIN_BATCHES if train else TEST_BATCHES)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CIFAR10Dataset(ImageLabelDataset):
    """CIFAR-10 as (image, label) pairs.

    Args:
        base_folder: the ``cifar-10-batches-py`` folder (course signature); ``None`` uses
            ``<data dir>/cifar-10-batches-py``, downloading it when missing.
        train: the 50,000 training images, else the 10,000 test images.
        transforms: per-sample transforms on the (3, 32, 32) image.

    ``ds[i]`` is ``(image float32 (3, 32, 32) in [0, 1], label int)``.
    """

    def __init__(self, base_folder=None, train=True, transforms=None, data_dir=None, download=True):
        super().__init__(transforms)
        images, labels = load_cifar10(base_folder, train, data_dir, download)
        self.images = images.astype(np.float32) / np.float32(255.0)
        self.labels = labels

