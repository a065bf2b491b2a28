"""The course module name of ``MNISTDataset``."""
from ..mnist import MNISTDataset  # noqa: F401
