"""The course module name of ``CIFAR10Dataset``."""
from ..cifar10 import CIFAR10Dataset  # noqa: F401
