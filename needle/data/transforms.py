"""Per-sample image transforms (the 10-414/714 ones, for channel-first images).

Every transform takes one image as a numpy array whose last two axes are (H, W): a
(C, H, W) sample from ``MNISTDataset`` / ``CIFAR10Dataset`` or a plain (H, W) array, and
returns an array of the same shape and dtype. Random transforms draw from their own
``np.random.Generator`` (``seed``: int, Generator or None), so a seed makes them repeatable.
"""
import numpy as np

__all__ = ["Transform", "RandomFlipHorizontal", "RandomCrop", "Normalize"]


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class Transform:
    def __call__(self, img):
        raise NotImplementedError


def _check_image(img, who):
    if not isinstance(img, np.ndarray) or img.ndim < 2:
        raise ValueError(f"{who} needs a numpy image with axes (..., H, W), got "
                         f"{type(img).__name__} of shape {getattr(img, 'shape', None)}")


class RandomFlipHorizontal(Transform):
    """Mirror the image left-right (along W) with probability ``p``."""

    def __init__(self, p=0.5, seed=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.rng = _rng(seed)

    def __call__(self, img):
        _check_image(img, "RandomFlipHorizontal")
        if self.rng.random() < self.p:
            return np.ascontiguousarray(img[..., ::-1])
        return img


class RandomCrop(Transform):
    """Zero-pad H and W by ``padding`` on each side, then crop back to the original size at
    a random offset: the image moves by (dy, dx) with dy, dx uniform in
    [-padding, padding], i.e. ``out[..., i, j] = img[..., i + dy, j + dx]`` (0 outside)."""

    def __init__(self, padding=3, seed=None):
        if int(padding) != padding or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        self.rng = _rng(seed)

    def __call__(self, img):
        _check_image(img, "RandomCrop")
        p = self.padding
        dy, dx = self.rng.integers(-p, p + 1, size=2)
        h, w = img.shape[-2:]
        pad = [(0, 0)] * (img.ndim - 2) + [(p, p), (p, p)]
        padded = np.pad(img, pad)
        return padded[..., p + dy:p + dy + h, p + dx:p + dx + w]


class Normalize(Transform):
    """``(img - mean) / std`` per channel; ``mean`` and ``std`` are scalars or sequences with
    one value per channel (axis -3 of a (C, H, W) image)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if np.any(self.std == 0):
            raise ValueError(f"Normalize std must be non-zero, got {std}")

    def __call__(self, img):
        _check_image(img, "Normalize")
        mean, std = self.mean, self.std
        if mean.ndim == 1:
            mean = mean[:, None, None]
        if std.ndim == 1:
            std = std[:, None, None]
        return ((img - mean) / std).astype(np.float32)
