// Placeholder: a straightforward i-k-j loop; replaced by the cache-blocked kernel.
#include "gemm_f32.h"
#include <cstring>

namespace needle {
namespace cpu {

void gemm_f32(const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K) {
  std::memset(C, 0, sizeof(float) * M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const float a = A[i * K + k];
      for (int64_t j = 0; j < N; ++j) C[i * N + j] += a * B[k * N + j];
    }
}

}  // namespace cpu
}  // namespace needle
