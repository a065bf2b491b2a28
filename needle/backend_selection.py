"""The array backend that needle's autograd and ops use (the 10-414/714 layout).

needle always runs on NDArray: ``array_api`` is ``needle.backend_ndarray`` and its devices are
``cpu()`` (C++), ``cuda()`` and ``cpu_numpy()`` (numpy reference).
"""
from . import backend_ndarray as array_api
from .backend_ndarray import (
    BackendDevice, NDArray, all_devices, cpu, cpu_numpy, cuda, default_device,
)

Device = BackendDevice

__all__ = ["array_api", "NDArray", "BackendDevice", "Device", "all_devices", "cpu", "cpu_numpy",
           "cuda", "default_device"]
