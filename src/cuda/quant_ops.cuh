// Integer (int8) kernels of the CUDA backend, registered into the ndarray_backend_cuda module.
#pragma once
#include <pybind11/pybind11.h>

namespace needle {
namespace cuda {

// Adds qpack_weights / qgemm (see docs/ARCHITECTURE.md, "Integer GEMM backend call").
void register_quant_ops(pybind11::module_& m);

// Adds int4_gemm, the weight-only int4 product (int4_ops.cu, int4_gemv.cuh).
void register_int4_ops(pybind11::module_& m);

}  // namespace cuda
}  // namespace needle
