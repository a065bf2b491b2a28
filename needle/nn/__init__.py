"""Neural-network modules."""
from .nn_basic import *
from .nn_conv import *
from .zoo import *
from .nn_sequence import *
from .nn_transformer import *
