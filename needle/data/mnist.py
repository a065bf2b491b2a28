"""MNIST: the idx file format, the dataset, and the offline split.

Samples are NCHW-ready: an image is a float32 array of shape (1, 28, 28) with values in
[0, 1] (pixel / 255), a label is an integer class 0..9. ``MNISTDataset.images`` holds all
images as (N, 1, 28, 28) float32 and ``MNISTDataset.labels`` all labels as (N,) uint8.

The offline split. Only the MNIST *test* set (10,000 images) is available offline, so the
kit splits it in two, by position in the official file:

* ``"offline-train"``: indices 0..7999 (8,000 images) for training and calibration;
* ``"offline-heldout"``: indices 8000..9999 (2,000 images) for evaluation only.

``"train"`` (60,000 images) and ``"test"`` (10,000) are the official splits.
"""
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data_basic import ImageLabelDataset
from .download import DataIntegrityError, ensure_file, read_verified_gz, resolve_data_dir

__all__ = [
    "parse_idx",
    "read_idx_gz",
    "load_mnist",
    "MNISTDataset",
    "MNISTOfflineSplit",
    "mnist_offline_split",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "OFFLINE_TRAIN_RANGE",
    "OFFLINE_HELDOUT_RANGE",
]

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# file name -> (sha256 of the official .gz, sha256s of the decompressed content).
# The decompressed digests let a recompressed copy of the same data verify.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", ()),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", ()),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",)),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",)),
}

OFFLINE_TRAIN_RANGE = (0, 8000)      # [start, stop) of the MNIST test set
OFFLINE_HELDOUT_RANGE = (8000, 10000)

_SPLITS = {
    # split -> (file prefix, [start, stop) or None for all)
    "train": ("train", None),
    "test": ("t10k", None),
    "offline-train": ("t10k", OFFLINE_TRAIN_RANGE),
    "offline-heldout": ("t10k", OFFLINE_HELDOUT_RANGE),
}

# idx type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data, name="<idx>"):
    """Parse the bytes of an (uncompressed) idx file into a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions d, then d big-endian
    uint32 sizes, then the data. Raises ``DataIntegrityError`` naming ``name`` when the
    header is malformed or the payload is shorter or longer than the header says.
    """
    data = bytes(data)
    if len(data) < 4:
        raise DataIntegrityError(f"{name}: idx file too short for a header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataIntegrityError(f"{name}: bad idx magic number {data[:4].hex()}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataIntegrityError(f"{name}: unknown idx data type code 0x{code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataIntegrityError(
            f"{name}: truncated idx header ({len(data)} bytes, need {header_len} for {ndim} dims)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header_len + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(data) != expected:
        raise DataIntegrityError(
            f"{name}: idx payload has {len(data) - header_len} bytes but shape {shape} of "
            f"{dtype.name} needs {expected - header_len} (file truncated or corrupt)")
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def read_idx_gz(path, gz_sha256=(), raw_sha256=()):
    """Read and parse a gzip-compressed idx file, optionally verifying its checksum
    (see ``read_verified_gz``)."""
    return parse_idx(read_verified_gz(path, gz_sha256, raw_sha256), name=str(path))


def _mnist_file(directory, filename, download):
    gz_sha, _ = MNIST_FILES[filename]
    return ensure_file(directory, filename, [m + filename for m in MNIST_MIRRORS], gz_sha,
                       download=download)


def load_mnist(split="test", data_dir=None, download=True):
    """Load an MNIST split as raw arrays.

    Args:
        split: ``"train"``, ``"test"``, ``"offline-train"`` or ``"offline-heldout"``.
        data_dir: the data directory (see ``resolve_data_dir``); files are in ``<dir>/mnist``.
        download: fetch missing files from the official mirrors.

    Returns ``(images, labels)``: uint8 arrays of shapes (N, 28, 28) and (N,).
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected one of {sorted(_SPLITS)}")
    prefix, rng = _SPLITS[split]
    directory = resolve_data_dir(data_dir) / "mnist"
    img_name = f"{prefix}-images-idx3-ubyte.gz"
    lbl_name = f"{prefix}-labels-idx1-ubyte.gz"
    images = read_idx_gz(_mnist_file(directory, img_name, download), *MNIST_FILES[img_name])
    labels = read_idx_gz(_mnist_file(directory, lbl_name, download), *MNIST_FILES[lbl_name])
    _check_pair(images, labels, directory / img_name)
    if rng is not None:
        if len(labels) < rng[1]:
            raise DataIntegrityError(
                f"{directory / img_name}: split {split!r} needs {rng[1]} images, file has {len(labels)}")
        images, labels = images[rng[0]:rng[1]], labels[rng[0]:rng[1]]
    return images, labels


def _check_pair(images, labels, name):
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataIntegrityError(
            f"{name}: expected uint8 images of shape (N, rows, cols), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataIntegrityError(
            f"{name}: {images.shape[0]} images but labels have shape {labels.shape}")
    if labels.size and labels.max() > 9:
        raise DataIntegrityError(f"{name}: label {int(labels.max())} out of range 0..9")


class MNISTDataset(ImageLabelDataset):
    """MNIST digits as (image, label) pairs, in one of two forms.

    ``MNISTDataset(split="offline-train", data_dir=None, transforms=None, download=True)``:
        split ``"train"``, ``"test"``, ``"offline-train"`` (test images 0..7999) or
        ``"offline-heldout"`` (test images 8000..9999), read from the data directory
        (argument, else ``$NEEDLE_DATA_DIR``, else ``<repo>/data``) with checksums, downloaded
        when missing (never into a read-only dir). ``ds[i]`` is ``(image float32 (1, 28, 28)
        in [0, 1], label int)``; an index array gives ``(images (B, 1, 28, 28), labels (B,)
        uint8)``.

    ``MNISTDataset(image_filename, label_filename, transforms=None)``: the course's form,
        two idx .gz files read as they are. Images are flat like the course's: ``ds[i]`` is
        ``(float32 (784,) in [0, 1], label int)``, a slice or index array gives ``((B, 784),
        (B,) uint8)``; transforms see each image as (28, 28, 1).
    """

    def __init__(self, split="offline-train", data_dir=None, transforms=None, download=True):
        super().__init__(transforms)
        if split not in _SPLITS and data_dir is not None and _looks_like_file(split):
            self.split = None
            self._read_files(split, data_dir)
            return
        if split not in _SPLITS:
            raise ValueError(f"unknown MNIST split {split!r}; expected one of {sorted(_SPLITS)}, or "
                             "the course's form MNISTDataset(image_filename, label_filename)")
        self.split = split
        images, labels = load_mnist(split, data_dir, download)
        self._set_arrays(images, labels)

    @classmethod
    def from_files(cls, image_filename, label_filename, transforms=None):
        """The course's constructor (same as ``MNISTDataset(image_filename, label_filename)``)."""
        return cls(image_filename, label_filename, transforms)

    def _read_files(self, image_filename, label_filename):
        images = read_idx_gz(image_filename)
        labels = read_idx_gz(label_filename)
        _check_pair(images, labels, Path(image_filename))
        self.images = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
        self.image_shape = images.shape[1:] + (1,)
        self.labels = labels.astype(np.uint8)

    def _set_arrays(self, images, labels):
        self.images = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
        self.labels = labels.astype(np.uint8)

    def apply_transforms(self, x):
        if self.images.ndim != 2 or not self.transforms:
            return super().apply_transforms(x)
        # the course's flat images: transforms see (28, 28, 1), the sample stays (784,)
        img = x.reshape(self.image_shape)
        for tform in self.transforms:
            img = tform(img)
        return np.ascontiguousarray(img).reshape(-1)


def _looks_like_file(name):
    """True for a path-like first argument (the course's image filename)."""
    return isinstance(name, Path) or (isinstance(name, str) and ("/" in name or name.endswith(".gz")
                                                                  or Path(name).exists()))


class MNISTOfflineSplit(NamedTuple):
    """The offline split of the MNIST test set: ``train`` = images 0..7999 (training and
    calibration), ``heldout`` = images 8000..9999 (evaluation only)."""
    train: MNISTDataset
    heldout: MNISTDataset


def mnist_offline_split(data_dir=None, train_transforms=None, download=True):
    """Return ``MNISTOfflineSplit(train, heldout)``: two ``MNISTDataset`` over the MNIST test
    set, 8,000 and 2,000 images. ``train_transforms`` (e.g. ``[RandomCrop(2)]``) apply to the
    training part only."""
    return MNISTOfflineSplit(
        MNISTDataset("offline-train", data_dir, train_transforms, download),
        MNISTDataset("offline-heldout", data_dir, None, download),
    )
