// Host emulation of the CUDA kernels, registered as the submodule `emulate`.
#pragma once
#include <pybind11/pybind11.h>

namespace needle {
namespace cuda {

// Adds ndarray_backend_cuda.emulate (see emulate.cu).
void register_emulation(pybind11::module_& m);

}  // namespace cuda
}  // namespace needle
