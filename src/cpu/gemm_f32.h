// Float32 matrix multiply used by the CPU backend's matmul and by convolution (im2col).
#pragma once
#include <cstdint>

namespace needle {
namespace cpu {

// C[M, N] = A[M, K] @ B[K, N]; all row-major and contiguous; C is overwritten.
// Safe to call without the GIL.
void gemm_f32(const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K);

// Name of the micro-kernel gemm_f32 would use now: "avx512", "avx2" or "scalar" (depends on
// the CPU and on NEEDLE_ISA, see cpu_features.h). Throws std::invalid_argument on a bad
// NEEDLE_ISA, like gemm_f32 itself.
const char* gemm_f32_isa();

}  // namespace cpu
}  // namespace needle
