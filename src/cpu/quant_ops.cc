// Placeholder until the int8 kernels land: registers nothing.
#include "quant_ops.h"

namespace needle {
namespace cpu {

void register_quant_ops(pybind11::module_& m) { (void)m; }

}  // namespace cpu
}  // namespace needle
