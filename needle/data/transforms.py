"""Per-sample image transforms with the 10-414/714 semantics.

Every transform takes one image as a numpy array of shape (H, W, C) (channels last, as the
course's transforms do) or (H, W), and returns an array of the same shape and dtype. The
channel-first image datasets (``MNISTDataset``, ``CIFAR10Dataset``) hand their (C, H, W)
samples to transforms as (H, W, C) and transpose the result back.

Randomness: with ``seed=None`` (the default) a transform draws from numpy's global RNG exactly
as the course's do (``np.random.rand()`` per flip, ``np.random.randint(-p, p + 1, size=2)``
per crop), so ``np.random.seed`` makes course code repeatable; an int or
``np.random.Generator`` ``seed`` gives the transform its own stream instead.
"""
import numpy as np

__all__ = ["Transform", "RandomFlipHorizontal", "RandomCrop", "Normalize"]


class _GlobalRandom:
    """numpy's global RNG behind the two calls the transforms make."""

    @staticmethod
    def random():
        return np.random.rand()

    @staticmethod
    def integers(low, high, size):
        return np.random.randint(low=low, high=high, size=size)


def _rng(seed):
    if seed is None:
        return _GlobalRandom()
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class Transform:
    def __call__(self, img):
        raise NotImplementedError


def _check_image(img, who):
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f"{who} needs a numpy image of shape (H, W, C) or (H, W), got "
                         f"{type(img).__name__} of shape {getattr(img, 'shape', None)}")


class RandomFlipHorizontal(Transform):
    """Mirror the image left-right (along W, axis 1) with probability ``p``."""

    def __init__(self, p=0.5, seed=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.rng = _rng(seed)

    def __call__(self, img):
        _check_image(img, "RandomFlipHorizontal")
        if self.rng.random() < self.p:
            return np.ascontiguousarray(img[:, ::-1])
        return img


class RandomCrop(Transform):
    """Zero-pad H and W by ``padding`` on each side, then crop back to the original size at
    a random offset: the image moves by (dy, dx) with dy, dx uniform in
    [-padding, padding], i.e. ``out[i, j] = img[i + dy, j + dx]`` (0 outside)."""

    def __init__(self, padding=3, seed=None):
        if int(padding) != padding or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        self.rng = _rng(seed)

    def __call__(self, img):
        _check_image(img, "RandomCrop")
        p = self.padding
        dy, dx = self.rng.integers(-p, p + 1, size=2)
        h, w = img.shape[:2]
        pad = [(p, p), (p, p)] + [(0, 0)] * (img.ndim - 2)
        padded = np.pad(img, pad)
        return padded[p + dy:p + dy + h, p + dx:p + dx + w]


class Normalize(Transform):
    """``(img - mean) / std`` per channel; ``mean`` and ``std`` are scalars or sequences with
    one value per channel (the last axis of an (H, W, C) image)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if np.any(self.std == 0):
            raise ValueError(f"Normalize std must be non-zero, got {std}")

    def __call__(self, img):
        _check_image(img, "Normalize")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v.ndim == 1 and (img.ndim != 3 or img.shape[-1] != v.shape[0]):
                raise ValueError(f"Normalize: {v.shape[0]} {name} values but the image has shape "
                                 f"{img.shape} (need (H, W, {v.shape[0]}))")
        return ((img - self.mean) / self.std).astype(np.float32)
