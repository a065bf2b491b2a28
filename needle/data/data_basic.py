"""Dataset and DataLoader (the 10-414/714 hw2 interface, made deterministic).

A ``Dataset`` maps an integer index to a sample, a tuple of numpy arrays / numbers. The
``DataLoader`` groups samples into mini-batches and yields tuples of needle ``Tensor``s. All
shuffling draws from numpy's global RNG (``np.random.seed`` fixes the order, as in the course)
or from the loader's own ``np.random.Generator`` when it is given a ``seed``.
"""
import numpy as np

__all__ = ["Dataset", "NDArrayDataset", "ImageLabelDataset", "DataLoader"]


class Dataset:
    """An abstract dataset. Subclasses implement ``__getitem__(int)`` and ``__len__``.

    ``transforms`` is a list of callables applied in order to the first field of a sample
    (the image) by ``apply_transforms``. A subclass may implement ``get_batch(indices)``
    returning stacked arrays; the default stacks ``self[i]`` for each index.
    """

    def __init__(self, transforms=None):
        self.transforms = list(transforms) if transforms else []

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def apply_transforms(self, x):
        for tform in self.transforms:
            x = tform(x)
        return x

    def get_batch(self, indices):
        """Return a tuple of arrays, each with a leading batch axis of ``len(indices)``."""
        samples = [self[int(i)] for i in indices]
        if not samples:
            raise ValueError("get_batch needs at least one index")
        if not isinstance(samples[0], tuple):
            return (np.stack([np.asarray(s) for s in samples]),)
        return tuple(np.stack([np.asarray(s[k]) for s in samples]) for k in range(len(samples[0])))


class NDArrayDataset(Dataset):
    """A dataset over numpy arrays that share their first dimension: ``ds[i]`` is
    ``(arrays[0][i], arrays[1][i], ...)``."""

    def __init__(self, *arrays, transforms=None):
        super().__init__(transforms)
        if not arrays:
            raise ValueError("NDArrayDataset needs at least one array")
        self.arrays = [np.asarray(a) for a in arrays]
        n = self.arrays[0].shape[0]
        for k, a in enumerate(self.arrays):
            if a.ndim == 0 or a.shape[0] != n:
                raise ValueError(f"array {k} has shape {a.shape}; all arrays need length {n}")

    def __len__(self):
        return self.arrays[0].shape[0]

    def __getitem__(self, index):
        items = tuple(a[index] for a in self.arrays)
        return (self.apply_transforms(items[0]),) + items[1:]

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        items = [a[indices] for a in self.arrays]
        if self.transforms:
            items[0] = np.stack([self.apply_transforms(x) for x in items[0]])
        return tuple(items)


class ImageLabelDataset(Dataset):
    """Base of the image datasets held in memory: subclasses set ``self.images`` (float32,
    (N, C, H, W)) and ``self.labels`` ((N,)). ``ds[i]`` is ``(transformed image, int label)``;
    ``get_batch`` returns the stacked ``(images, labels)`` arrays."""

    def __len__(self):
        return self.labels.shape[0]

    def apply_transforms(self, x):
        # Transforms take (H, W, C) images (the course's layout); samples here are (C, H, W).
        if not self.transforms:
            return x
        return np.ascontiguousarray(super().apply_transforms(x.transpose(1, 2, 0)).transpose(2, 0, 1))

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.apply_transforms(self.images[index]), int(self.labels[index])
        return self.get_batch(index)

    def get_batch(self, indices):
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        indices = np.asarray(indices, dtype=np.int64)
        x = self.images[indices]
        if self.transforms:
            x = np.stack([self.apply_transforms(img) for img in x])
        return x, self.labels[indices]


class DataLoader:
    """Iterate over a dataset in mini-batches.

    Args:
        dataset: a ``Dataset`` (anything with ``__len__`` and ``__getitem__``).
        batch_size: samples per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: draw a fresh permutation at the start of every epoch.
        drop_last: skip a final incomplete batch.
        seed: ``None`` (the default): shuffle with numpy's global RNG, one
            ``np.random.permutation`` per epoch drawn when iteration starts, as the course's
            DataLoader does (so ``np.random.seed`` fixes the order); an int or a
            ``np.random.Generator``: a private stream, the same seed gives the same epochs.
        device: device of the yielded Tensors (``None``: ``needle.default_device()``).
        as_numpy: yield numpy arrays instead of Tensors (e.g. for calibration code).

    Each batch is a tuple with one entry per sample field: images float32 of shape
    (B, C, H, W) for the image datasets, labels of shape (B,). Tensors are float32 (labels
    are small integers, exact in float32) and do not require gradients.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 device=None, as_numpy=False):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if seed is None:
            self.rng = np.random  # the global RNG: np.random.permutation, as in the course
        else:
            self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.device = device
        self.as_numpy = bool(as_numpy)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self):
        """The list of index arrays for one epoch (draws a permutation when shuffling)."""
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _get_batch(self, indices):
        if hasattr(self.dataset, "get_batch"):
            fields = self.dataset.get_batch(indices)
        else:
            fields = Dataset.get_batch(self.dataset, indices)
        if not isinstance(fields, tuple):
            fields = (fields,)
        return fields

    def __iter__(self):
        # The epoch's order is drawn when iteration starts (iter(loader)), as in the course.
        return self._iterate(self.batch_indices())

    def _iterate(self, batches):
        for indices in batches:
            fields = self._get_batch(indices)
            if self.as_numpy:
                yield fields
            else:
                yield tuple(self._to_tensor(f) for f in fields)

    def _to_tensor(self, array):
        from ..autograd import Tensor  # deferred: needle.data does not need autograd to load
        return Tensor(np.ascontiguousarray(array, dtype=np.float32), device=self.device,
                      requires_grad=False)
