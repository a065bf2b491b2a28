// The `int4_gemm` binding of the CUDA backend: weight-only int4 matrix product, one warp per
// output (the warp phases and the exact summation order are in int4_gemv.cuh). Same call as
// the CPU backend's int4_gemm, so needle.quant.int4.Int4Weight runs on either device.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../common/int4_args.h"
#include "cuda_array.cuh"
#include "int4_gemv.cuh"
#include "quant_ops.cuh"

namespace py = pybind11;

namespace needle {
namespace cuda {

using int4k::Int4Args;
using int4k::kPartials;
using int4k::kWarp;
using int4k::kWarpsPerBlock;

__global__ void __launch_bounds__(kWarp * kWarpsPerBlock) int4_gemm_kernel(Int4Args a) {
  __shared__ float partials[kWarpsPerBlock][kWarp];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t out = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (out >= a.m * a.n) return;  // whole warps only: the warp's lanes stay together
  const int64_t mi = out / a.n, n = out % a.n;
  const int64_t steps = int4k::warp_steps(a);
  float y = 0.0f;
  for (int64_t step = 0; step < steps; ++step) {
    partials[warp][lane] = int4k::lane_partial(a, mi, n, step, lane);
    __syncwarp();
    if (lane == 0) y = int4k::fold_step(a, n, step, partials[warp], y);
    __syncwarp();
  }
  if (lane == 0) a.out[out] = y;
}

namespace {

void int4_gemm(const CudaArray& x, const CudaArray& codes, const CudaArray& scales,
               const CudaArray& zeros, CudaArray& out, int64_t m, int64_t n, int64_t k,
               int64_t group, bool zeros_checked) {
  const char* op = "int4_gemm";
  const Int4Dims d = int4_dims(op, m, n, k, group);
  const int64_t kb = d.kb, ng = d.ng;
  require_dtype(x, DType::kFloat32, op, "x");
  require_dtype(codes, DType::kUInt8, op, "codes");
  require_dtype(scales, DType::kFloat32, op, "scales");
  require_dtype(zeros, DType::kUInt8, op, "zeros");
  require_dtype(out, DType::kFloat32, op, "out");
  require_size(x, size_t(checked_mul(m, k, op)), op, "x");
  require_size(codes, size_t(checked_mul(n, kb, op)), op, "codes");
  require_size(scales, size_t(checked_mul(n, ng, op)), op, "scales");
  require_size(zeros, size_t(checked_mul(n, ng, op)), op, "zeros");
  require_size(out, size_t(checked_mul(m, n, op)), op, "out");
  // Zero points outside [0, 15] are refused as on the CPU: a copy to the host and a wait for
  // the device, so a caller that checked them once (Int4Weight, when it copied its arrays
  // here) skips it. The kernel computes u - z without tables: a wrong z gives wrong sums,
  // never a read outside the arrays.
  if (!zeros_checked) {
    std::vector<uint8_t> zp(zeros.size);
    if (!zp.empty()) {
      check_cuda(cudaMemcpy(zp.data(), zeros.ptr, zp.size(), cudaMemcpyDeviceToHost),
                 "int4_gemm: reading the zero points");
    }
    int4_check_zero_points(op, zp.data(), int64_t(zp.size()));
  }
  const int64_t outputs = m * n;
  if (outputs == 0) return;
  const int64_t blocks = (outputs + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > int64_t(0x7FFFFFFF)) {
    throw std::invalid_argument("int4_gemm: " + std::to_string(outputs) +
                                " outputs exceed one launch");
  }
  Int4Args args{x.data<float>(), codes.data<uint8_t>(), scales.data<float>(),
                zeros.data<uint8_t>(), out.data<float>(), m, n, k, group};
  int4_gemm_kernel<<<unsigned(blocks), kWarp * kWarpsPerBlock>>>(args);
  check_launch("int4_gemm_kernel");
}

}  // namespace

void register_int4_ops(py::module_& m) {
  m.def("int4_gemm", &int4_gemm, py::arg("x"), py::arg("codes"), py::arg("scales"),
        py::arg("zeros"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("group"), py::kw_only(), py::arg("zeros_checked") = false,
        "out[m, n] = x[m, k] @ W^T for group-wise int4 weights W [n, k]: codes uint8\n"
        "[n, ceil(k/2)] (two per byte, even k in the low nibble), scales float32 and zeros\n"
        "uint8 [n, ceil(k/group)]. Bit-exact with reference.int4_gemm_reference.\n"
        "zeros_checked=True: the caller has checked every zero point is in [0, 15], so the\n"
        "per-call check (a copy of the zero points to the host) is skipped.");
}

}  // namespace cuda
}  // namespace needle
