// Pieces shared by the int8 GEMM driver (qgemm.cc) and its per-instruction-set kernels
// (qgemm_<isa>.cc). Not part of the backend interface.
#pragma once
#include <cstdint>
#include <cstring>

#include "qgemm.h"

namespace needle {
namespace cpu {
namespace qgemm_detail {

// Cache blocking (bytes of k; rows; columns). A micro-panel of B (kKC x 64 bytes = 32 KB)
// stays in L1
// while the micro-kernel sweeps the kMC rows of A; the int32 tile kMC x kNC lives in L2.
// kMC is a multiple of every micro-kernel's row count (4 and 6).
constexpr int64_t kMC = 96;
constexpr int64_t kKC = 512;
constexpr int64_t kNC = 256;

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Everything the epilogue needs, precomputed once per call from QgemmArgs.
struct QEpilogue {
  const int64_t* offset = nullptr;  // [n]: bias[c] - a_zp_eff * colsum[c]
  const int32_t* mult = nullptr;    // [n]
  const int32_t* total_shift = nullptr;  // [n]: 31 + shift[c], in [1, 62]
  const int64_t* round = nullptr;        // [n]: 2^(total_shift - 1)
  int32_t lo = 0, hi = 0, zp = 0;
  QType out_type = QType::kUint8;
  void* out = nullptr;
  int64_t n = 0;  // row stride of out
};

// Portable epilogue: rows [m0, m0 + mc) and columns [n0, n0 + nc) of out from the int32 dot
// products in cbuf (row stride kNC, cbuf[0] is element (m0, n0)).
void epilogue_scalar(const QEpilogue& ep, const int32_t* cbuf, int64_t m0, int64_t mc,
                     int64_t n0, int64_t nc);

// Packs rows [m0, m0 + mc) and k range [k0, k0 + kc) of the activations into micro-panels of
// `mr` rows: dst[panel][q][r][4] (uint8; int8 input is shifted by +128; rows >= m and k >= K
// are zero). kc is a multiple of 4.
void pack_a(const QgemmArgs& g, int64_t m0, int64_t mc, int64_t k0, int64_t kc, int mr,
            uint8_t* dst);

// The im2col rows [m0, m0 + mc) of the convolution g.conv as uint8 (int8 input shifted by
// +128), row stride round_up(k, 4), k padding zero: tile holds mc * round_up(k, 4) bytes.
void conv_tile(const QgemmArgs& g, int64_t m0, int64_t mc, uint8_t* tile);

// One work item: rows [m0, m0 + mc) x columns [n0, n0 + nc) of the output, all of k, written
// to out through the epilogue. Per-thread scratch: apack kMC * kKC bytes, cbuf kMC * kNC
// int32, tile kMC * round_up(k, 4) bytes (convolutions only).
using BlockFn = void (*)(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc,
                         int64_t n0, int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile);

void block_scalar(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                  uint8_t*, int32_t*, uint8_t*);
void block_avx2(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                uint8_t*, int32_t*, uint8_t*);
void block_avxvnni(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                   uint8_t*, int32_t*, uint8_t*);
void block_avx512(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                  uint8_t*, int32_t*, uint8_t*);
void block_vnni512(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                   uint8_t*, int32_t*, uint8_t*);

// Register-only throughput loops for the peak measurement: run `iters` iterations and return
// the number of operations performed (2 per multiply-add).
double peak_loop_avx2(int64_t iters);      // int8 via vpmaddwd widening
double peak_loop_avxvnni(int64_t iters);
double peak_loop_avx512(int64_t iters);
double peak_loop_vnni512(int64_t iters);
double fma_loop_avx2(int64_t iters);       // float32 FMA, 256-bit
double fma_loop_avx512(int64_t iters);     // float32 FMA, 512-bit

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
