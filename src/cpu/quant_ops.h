// Integer (int8) kernels of the CPU backend, registered into the ndarray_backend_cpu module.
#pragma once
#include <pybind11/pybind11.h>

namespace needle {
namespace cpu {

// Adds qpack_weights / qgemm (see docs/ARCHITECTURE.md, "Integer GEMM backend call").
void register_quant_ops(pybind11::module_& m);

}  // namespace cpu
}  // namespace needle
