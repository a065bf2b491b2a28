// Float32 GEMM tiles of the CUDA backend: out[M, P] = A[M, K] @ B[K, P], all row-major.
//
// Each 256-thread block computes a 64x64 tile of out; each thread owns a 4x4 register block
// strided by 16 rows/columns, so shared-memory reads are conflict free (consecutive threads read
// consecutive columns of Bs, and one row of As is a broadcast) and global stores coalesce.
// K advances 16 at a time through shared memory; edges are zero padded.
//
// The three phases are __host__ __device__ so that the host emulation (emulate.cu) runs exactly
// the code of the kernel, thread by thread, on machines without a GPU.
#pragma once
#include <cstdint>

namespace needle {
namespace cuda {
namespace sgemm {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
constexpr int kThreads = (BM / TM) * (BN / TN);
constexpr int kRowStride = BM / TM, kColStride = BN / TN;

// Phase 1: the block's threads stage A[row0:row0+BM, k0:k0+BK] (transposed) and
// B[k0:k0+BK, col0:col0+BN] into shared memory.
__host__ __device__ inline void load_tile(int tid, const float* A, const float* B, int64_t M,
                                          int64_t K, int64_t P, int64_t row0, int64_t col0,
                                          int64_t k0, float (*As)[BM + 1], float (*Bs)[BN]) {
  for (int l = tid; l < BM * BK; l += kThreads) {
    const int r = l / BK, c = l % BK;  // consecutive threads read consecutive k of one row
    const int64_t gr = row0 + r, gc = k0 + c;
    As[c][r] = (gr < M && gc < K) ? A[gr * K + gc] : 0.0f;
  }
  for (int l = tid; l < BK * BN; l += kThreads) {
    const int r = l / BN, c = l % BN;
    const int64_t gr = k0 + r, gc = col0 + c;
    Bs[r][c] = (gr < K && gc < P) ? B[gr * P + gc] : 0.0f;
  }
}

// Phase 2: one thread's 4x4 outer products over the staged BK values of k.
__host__ __device__ inline void compute_tile(int tid, const float (*As)[BM + 1],
                                             const float (*Bs)[BN], float (&acc)[TM][TN]) {
  const int tx = tid % kColStride, ty = tid / kColStride;
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    float av[TM], bv[TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) av[i] = As[kk][ty + i * kRowStride];
#pragma unroll
    for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx + j * kColStride];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// Phase 3: one thread writes its in-range outputs.
__host__ __device__ inline void store_tile(int tid, float* C, int64_t M, int64_t P, int64_t row0,
                                           int64_t col0, const float (&acc)[TM][TN]) {
  const int tx = tid % kColStride, ty = tid / kColStride;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = row0 + ty + i * kRowStride;
    if (r >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t c = col0 + tx + j * kColStride;
      if (c < P) C[r * P + c] = acc[i][j];
    }
  }
}

}  // namespace sgemm
}  // namespace cuda
}  // namespace needle
