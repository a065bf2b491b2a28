"""needle's operators (re-exported as ``needle.ops`` and at the top level of ``needle``)."""
from .ops_mathematic import *
from .ops_logarithmic import *
from .ops_tuple import *
from .ops_mathematic import __all__ as _math_all
from .ops_logarithmic import __all__ as _log_all
from .ops_tuple import __all__ as _tuple_all

__all__ = list(_math_all) + list(_log_all) + list(_tuple_all)
from .ops_sequence import *
from .ops_sequence import __all__ as _sequence_all

__all__ += list(_sequence_all)
