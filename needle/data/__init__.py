"""Datasets, data loaders and transforms.

``resolve_data_dir(data_dir)``: the argument, else ``$NEEDLE_DATA_DIR``, else ``<repo>/data``.
The offline split of the MNIST test set: images 0..7999 train/calibrate, 8000..9999 are
held out for evaluation (``mnist_offline_split``). See datasets/README.md.
"""
from .data_basic import Dataset, NDArrayDataset, ImageLabelDataset, DataLoader
from .transforms import Transform, RandomFlipHorizontal, RandomCrop, Normalize
from .download import (
    DataIntegrityError,
    resolve_data_dir,
    sha256_bytes,
    sha256_file,
    download_url,
    ensure_file,
    read_verified_gz,
)
from .mnist import (
    parse_idx,
    read_idx_gz,
    load_mnist,
    MNISTDataset,
    MNISTOfflineSplit,
    mnist_offline_split,
    OFFLINE_TRAIN_RANGE,
    OFFLINE_HELDOUT_RANGE,
)
from .cifar10 import CIFAR10Dataset, load_cifar10, download_cifar10, CIFAR10_CLASSES
from . import datasets, data_transforms
from .ptb import Dictionary, Corpus, batchify, get_batch, download_ptb
from .offline_text import license_corpus, license_splits, LicenseCorpus
