// Internal to the float32 GEMM: the register-blocked micro-kernels and how the driver sees them.
#pragma once
#include <cstdint>

namespace needle {
namespace cpu {
namespace gemm_detail {

// Computes an MR x NR tile: C[i, j] (+)= sum_p a[p * MR + i] * b[p * NR + j] for p < kc, where
// `a` is a packed MR-row panel of A (column by column) and `b` a packed NR-column panel of B
// (row by row), both zero-padded. Stores when accumulate is false, adds otherwise. C has row
// stride ldc. The panels are 64-byte aligned.
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             bool accumulate);

// C[:M, j0:j1] = A[M, K] @ B[K, j0:j1] for a few rows (row-major, C's row stride N, B's N):
// B streamed once per group of up to 4 rows, no packing (gemm_f32_gemv.h).
using GemvChunk = void (*)(const float* A, const float* B, float* C, int64_t M, int64_t N,
                           int64_t K, int64_t j0, int64_t j1);

struct KernelSpec {
  const char* name;   // "scalar", "avx2", "avx512"
  int mr, nr;         // register tile
  int kc, mc, nc;     // cache blocks: kc deep (B micro-panel in L1), mc rows (A block in L2),
                      // nc columns (B panel in L3); mc % mr == 0, nc % nr == 0
  MicroKernel kernel;
  GemvChunk gemv;     // the same instruction set's few-rows loop
};

KernelSpec scalar_kernel();
// Only meaningful when the CPU supports the instruction set (checked by the caller).
bool avx2_kernel(KernelSpec* out);    // false when not compiled for this target
bool avx512_kernel(KernelSpec* out);  // false when not compiled for this target

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace needle
