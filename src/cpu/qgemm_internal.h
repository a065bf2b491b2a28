// Pieces shared by the int8 GEMM driver (qgemm.cc) and its per-instruction-set kernels
// (qgemm_<isa>.cc). Not part of the backend interface.
#pragma once
#include <cstdint>
#include <cstring>

#include "qgemm.h"

// The x86-64 kernels (qgemm_<isa>.cc) are compiled only where the compiler understands
// per-function target attributes; elsewhere the scalar path (and the AMX emulation) remain.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NEEDLE_QGEMM_X86 1
#else
#define NEEDLE_QGEMM_X86 0
#endif

// NEEDLE_TARGET_PUSH("avx2,fma") ... NEEDLE_TARGET_POP: everything between is compiled for
// that instruction set (the dispatcher calls it only when the CPU supports it).
#define NEEDLE_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define NEEDLE_TARGET_PUSH(t) \
  NEEDLE_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define NEEDLE_TARGET_POP _Pragma("clang attribute pop")
#else
#define NEEDLE_TARGET_PUSH(t) _Pragma("GCC push_options") NEEDLE_PRAGMA(GCC target(t))
#define NEEDLE_TARGET_POP _Pragma("GCC pop_options")
#endif

namespace needle {
namespace cpu {
namespace qgemm_detail {

// Cache blocking (bytes of k; rows; columns). A micro-panel of B (kKC x 64 bytes = 32 KB)
// stays in L1
// while the micro-kernel sweeps the kMC rows of A; the int32 tile kMC x kNC lives in L2.
// kMC is a multiple of every micro-kernel's row count (4, 6 and the tile kernel's 32).
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

// Packs rows [m0, m0 + mc) and k range [k0, k0 + kc) of the activations (or of the
// convolution's im2col tile, row stride round_up(k, 4)) row-major as uint8: dst[r * ld + j]
// for j < ld, zero for k >= K; ld >= kc. The layout of the tile kernels (one row per tile row).
void pack_a_rows(const QgemmArgs& g, const uint8_t* conv_rows, int64_t m0, int64_t mc,
                 int64_t k0, int64_t kc, int64_t ld, uint8_t* dst);

// One work item: rows [m0, m0 + mc) x columns [n0, n0 + nc) of the output, all of k, written
// to out through the epilogue. Per-thread scratch: apack kMC * kKC bytes, cbuf kMC * kNC
// int32, tile kMC * round_up(k, 4) bytes (convolutions only).
using BlockFn = void (*)(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc,
                         int64_t n0, int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile);
using EpilogueFn = void (*)(const QEpilogue& ep, const int32_t* cbuf, int64_t m0, int64_t mc,
                            int64_t n0, int64_t nc);

// One instruction-set path: its work item and (fast paths) its register-only throughput loop,
// which runs `iters` iterations and returns the operations performed (2 per multiply-add).
struct QgemmKernel {
  BlockFn block = nullptr;
  double (*peak_loop)(int64_t iters) = nullptr;
};

// Each defined by its own file (qgemm_scalar.cc, qgemm_<isa>.cc); the x86 ones only on x86-64.
extern const QgemmKernel kQgemmScalar, kQgemmAmxEmulated;
extern const QgemmKernel kQgemmAvx2, kQgemmAvxVnni, kQgemmAvx512, kQgemmVnni512, kQgemmAmx;

// Base of the vector traits types of qgemm_kernel.h (tile traits set kTiles = true).
struct VectorTraits {
  static constexpr bool kTiles = false;
};

// float32 FMA throughput loops (same contract as peak_loop), 256-bit and 512-bit.
double fma_loop_avx2(int64_t iters);
double fma_loop_avx512(int64_t iters);

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
