// Integer (int8) kernels of the CUDA backend, registered into the ndarray_backend_cuda module.
#pragma once
#include <pybind11/pybind11.h>

namespace needle {
namespace cuda {

// Adds qpack_weights / qgemm (see docs/ARCHITECTURE.md, "Integer GEMM backend call").
void register_quant_ops(pybind11::module_& m);

}  // namespace cuda
}  // namespace needle
