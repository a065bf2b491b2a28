// The CUDA host emulation as its own module, compiled by the host compiler without nvcc
// (CMake option NEEDLE_EMULATION_HOST). `make sanitize` builds it with AddressSanitizer and
// UndefinedBehaviorSanitizer so the kernels' tile code runs under them on any machine. It is
// named ndarray_backend_cuda and reports no device, so needle sees "no GPU" plus `emulate`.
#include <pybind11/pybind11.h>

#include "cuda_array.cuh"
#include "emulate.cuh"

namespace py = pybind11;

PYBIND11_MODULE(ndarray_backend_cuda, m) {
  m.doc() = "Host-only build of the CUDA backend's emulation submodule (no device code).";
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const needle::cuda::DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
  m.def("device_count", [] { return 0; }, "Always 0: this build has no device code.");
  needle::cuda::register_emulation(m);
}
