"""The course's module path for the datasets (``needle.data.datasets``): the same classes as
``needle.data``."""
from ..data_basic import NDArrayDataset
from ..mnist import MNISTDataset
from ..cifar10 import CIFAR10Dataset
