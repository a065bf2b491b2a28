// Float32 matrix multiply used by the CPU backend's matmul and by convolution (im2col).
#pragma once
#include <cstdint>

namespace needle {
namespace cpu {

// C[M, N] = A[M, K] @ B[K, N]; all row-major and contiguous; C is overwritten.
// Safe to call without the GIL.
void gemm_f32(const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K);

}  // namespace cpu
}  // namespace needle
