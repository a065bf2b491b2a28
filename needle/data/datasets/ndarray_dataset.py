"""The course module name of ``NDArrayDataset``."""
from ..data_basic import NDArrayDataset  # noqa: F401
