// Internal to the float32 GEMM: the few-rows (matrix-vector) loop, written once and compiled
// by each instruction-set variant (gemm_f32.cc, gemm_f32_x86.cc) under its own target.
#pragma once
#include <algorithm>
#include <cstdint>

namespace needle {
namespace cpu {
namespace gemm_detail {

// c_r[j] += a[r][0] * b0[j], then += a[r][1] * b1[j], ... for T rows of B at once: C is loaded
// and stored once per T rows of B (and T streams of B are in flight), in the order of k.
template <int R, int T>
__attribute__((always_inline)) inline void axpy_rows(
    int64_t n, const float* __restrict b0, const float* __restrict b1,
    const float* __restrict b2, const float* __restrict b3, const float (*a)[4],
    float* __restrict c0, float* __restrict c1, float* __restrict c2, float* __restrict c3) {
  for (int64_t j = 0; j < n; ++j) {
    const float x0 = b0[j];
    const float x1 = T > 1 ? b1[j] : 0.0f, x2 = T > 2 ? b2[j] : 0.0f, x3 = T > 3 ? b3[j] : 0.0f;
    float* const c[4] = {c0, c1, c2, c3};
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      float v = c[r][j] + a[r][0] * x0;
      if (T > 1) v = v + a[r][1] * x1;
      if (T > 2) v = v + a[r][2] * x2;
      if (T > 3) v = v + a[r][3] * x3;
      c[r][j] = v;
    }
  }
}

template <int R>
__attribute__((always_inline)) inline void gemv_rows_body(const float* A, const float* B,
                                                          float* C, int64_t N, int64_t K,
                                                          int64_t j0, int64_t j1) {
  float* c[4];
  for (int r = 0; r < 4; ++r) c[r] = C + (r < R ? r : 0) * N + j0;  // unused rows: never touched
  for (int r = 0; r < R; ++r) std::fill(c[r], c[r] + (j1 - j0), 0.0f);
  float a[4][4] = {};
  const int64_t n = j1 - j0;
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < 4; ++t) a[r][t] = A[r * K + k + t];
    const float* b = B + k * N + j0;
    axpy_rows<R, 4>(n, b, b + N, b + 2 * N, b + 3 * N, a, c[0], c[1], c[2], c[3]);
  }
  for (; k < K; ++k) {
    for (int r = 0; r < R; ++r) a[r][0] = A[r * K + k];
    const float* b = B + k * N + j0;
    axpy_rows<R, 1>(n, b, b, b, b, a, c[0], c[1], c[2], c[3]);
  }
}

// Rows in groups of up to 4; each group streams the chunk's columns of B again (from the L3
// cache when the chunk is narrow enough to stay there).
__attribute__((always_inline)) inline void gemv_chunk_body(const float* A, const float* B,
                                                           float* C, int64_t M, int64_t N,
                                                           int64_t K, int64_t j0, int64_t j1) {
  for (int64_t r0 = 0; r0 < M; r0 += 4) {
    const float* a = A + r0 * K;
    float* c = C + r0 * N;
    switch (std::min<int64_t>(4, M - r0)) {
      case 1: gemv_rows_body<1>(a, B, c, N, K, j0, j1); break;
      case 2: gemv_rows_body<2>(a, B, c, N, K, j0, j1); break;
      case 3: gemv_rows_body<3>(a, B, c, N, K, j0, j1); break;
      default: gemv_rows_body<4>(a, B, c, N, K, j0, j1); break;
    }
  }
}

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace needle
