"""needle: a small deep-learning framework (10-414/714 hw4 API) with a PTQ toolkit.

Public API: ``Tensor``, ``ops``, ``nn``, ``init``, ``optim``, ``data``, devices ``cpu()``,
``cuda()``, ``cpu_numpy()``, ``default_device()``, and ``save`` / ``load``.
The post-training quantization toolkit is ``needle.quant`` (imported on demand).
"""
import os as _os

# Idle OpenMP threads sleep at once instead of spinning (set before the CPU backend loads
# libgomp, which reads it only then; a value the user set wins). On a busy 2-core machine a
# spinning idle thread took the core the working one needed: 2 threads ran up to 10x slower
# than 1 (bench/bench_threads.py). Passive waiting costs one wake-up (microseconds) per
# parallel loop when idle.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import backend_ndarray  # noqa: E402
from .backend_ndarray import cpu, cuda, cpu_numpy, default_device, all_devices
from .autograd import Tensor
from . import ops
from .ops import *
from . import init
from . import nn
from . import optim
from . import data
from .serialization import save, load
# The names course code reaches at the top level (its needle/__init__.py and backend_selection).
from .autograd import TensorTuple, Value, Op, TensorOp, TensorTupleOp
from .init import ones, zeros, ones_like, zeros_like
from .backend_selection import array_api, NDArray, BackendDevice, Device

__version__ = "0.1.0"
