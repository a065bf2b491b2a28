"""needle's array backend: NDArray, devices, and the module-level array API.

``from needle.backend_ndarray import array_api`` gives this package, whose functions
(``array``, ``empty``, ``full``, ``broadcast_to``, ``reshape``, ``maximum``, ``log``, ``exp``,
``tanh``, ``sum``, ``max``, ``flip``, ``stack``, ``split``, ...) take and return NDArrays.
"""
import sys

from .ndarray import (
    DTYPES, INT_RANGES, BackendDevice, NDArray, all_devices, array, broadcast_to, cpu, cpu_numpy,
    cuda, default_device, device_by_name, empty, exp, flip, full, log, matmul, max, maximum, negative,
    normalize_dtype, ones, pad, permute, prod, reshape, split, stack, sum, summation, tanh, zeros,
)

Device = BackendDevice
array_api = sys.modules[__name__]

__all__ = [
    "DTYPES", "INT_RANGES", "BackendDevice", "Device", "NDArray", "all_devices", "array",
    "array_api", "broadcast_to", "cpu", "cpu_numpy", "cuda", "default_device", "device_by_name", "empty", "exp",
    "flip", "full", "log", "matmul", "max", "maximum", "negative", "normalize_dtype", "ones",
    "pad", "permute", "prod", "reshape", "split", "stack", "sum", "summation", "tanh", "zeros",
]
