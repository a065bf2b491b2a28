// AVX2+FMA and AVX-512 micro-kernels of the float32 GEMM (see gemm_f32_kernels.h).
// Compiled with baseline flags; each kernel carries its own target attribute and is only
// called after run-time CPU detection.
#include "gemm_f32_gemv.h"
#include "gemm_f32_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NEEDLE_GEMM_X86 1
#endif

namespace needle {
namespace cpu {
namespace gemm_detail {

#ifdef NEEDLE_GEMM_X86

// Cache blocks (tuned on a Zen 5 core: 48 KiB L1d, 1 MiB L2): a kc x nr micro-panel of B
// (32 KiB for AVX-512) stays in L1, an mc x kc block of A (192 KiB) in L2.
constexpr int kKc512 = 256, kMc512 = 192, kNc512 = 4096;
constexpr int kKc256 = 256, kMc256 = 120, kNc256 = 4096;

// AVX-512: 12 x 32 tile = 24 zmm accumulators, 2 zmm of B per step, A broadcast from memory.
constexpr int kMr512 = 12, kNr512 = 32;

__attribute__((target("avx512f"))) static void kernel_avx512_12x32(
    int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  __m512 acc[kMr512][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMr512; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMr512; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr512;
    b += kNr512;
  }
#pragma GCC unroll 12
  for (int i = 0; i < kMr512; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_loadu_ps(ci));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_loadu_ps(ci + 16));
    }
    _mm512_storeu_ps(ci, acc[i][0]);
    _mm512_storeu_ps(ci + 16, acc[i][1]);
  }
}

// AVX2+FMA: 6 x 16 tile = 12 ymm accumulators, 2 ymm of B, 1 broadcast.
constexpr int kMr256 = 6, kNr256 = 16;

__attribute__((target("avx2,fma"))) static void kernel_avx2_6x16(
    int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  __m256 acc[kMr256][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMr256; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMr256; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr256;
    b += kNr256;
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMr256; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(ci));
      acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(ci + 8));
    }
    _mm256_storeu_ps(ci, acc[i][0]);
    _mm256_storeu_ps(ci + 8, acc[i][1]);
  }
}

__attribute__((target("avx512f,avx2,fma"))) static void gemv_chunk_avx512(
    const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K, int64_t j0,
    int64_t j1) {
  gemv_chunk_body(A, B, C, M, N, K, j0, j1);
}

__attribute__((target("avx2,fma"))) static void gemv_chunk_avx2(
    const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K, int64_t j0,
    int64_t j1) {
  gemv_chunk_body(A, B, C, M, N, K, j0, j1);
}

bool avx512_kernel(KernelSpec* out) {
  *out = KernelSpec{"avx512", kMr512, kNr512, kKc512, kMc512, kNc512, kernel_avx512_12x32,
                    gemv_chunk_avx512};
  return true;
}

bool avx2_kernel(KernelSpec* out) {
  *out = KernelSpec{"avx2", kMr256, kNr256, kKc256, kMc256, kNc256, kernel_avx2_6x16,
                    gemv_chunk_avx2};
  return true;
}

#else

bool avx512_kernel(KernelSpec*) { return false; }
bool avx2_kernel(KernelSpec*) { return false; }

#endif

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace needle
