"""The course module name of the transforms (``needle.data.data_transforms``)."""
from .transforms import *  # noqa: F401,F403
from .transforms import __all__  # noqa: F401
