// Int8 GEMM tiles of the CUDA backend (the fused quantized GEMM behind `qgemm`).
//
// Math (docs/ARCHITECTURE.md, "Quantization math"; needle/quant/reference.py is the reference):
//   acc[i, c] = sat32( sum_k a[i, k] * w[c, k] - a_zp * colsum[c] + bias[c] )   (int64 math)
//   out[i, c] = clamp(((acc * mult[c] + 2^(s-1)) >> s) + out_zp, lo, hi),  s = 31 + shift[c]
// with lo raised to out_zp by a fused ReLU, or out = acc for int32 output.
//
// Layout: weights w [n, k] are packed as int8 [n, kp], kp = k rounded up to 4, zero padded, so
// the 4 consecutive k of one output channel form one aligned 32-bit word: the operand of dp4a
// (4 byte products summed into an int32 in one instruction). The inner product accumulates in
// int32, exact for k <= kMaxK; zero point, bias and requantization run once per output.
//
// Tiling mirrors gemm_f32.cuh: a 256-thread block owns a 64x64 output tile, each thread a 4x4
// register block strided by 16; k advances 64 values (16 words) at a time through shared memory.
// The phases are __host__ __device__ so that the host emulation (emulate.cu) runs the kernel's
// own code on machines without a GPU; only dot4 differs (the instruction vs. a byte loop).
#pragma once
#include <cstdint>
#include <type_traits>

namespace needle {
namespace cuda {
namespace qtile {

constexpr int64_t kKGroup = 4;  // k values per 32-bit word
// Largest k for which the int32 inner product cannot overflow (255 * 128 * k < 2^31).
constexpr int64_t kMaxK = 65793;

constexpr int BM = 64, BN = 64;  // output tile per block
constexpr int BKW = 16;          // 32-bit words of k per step (64 k values)
constexpr int TM = 4, TN = 4;    // outputs per thread
constexpr int kThreads = (BM / TM) * (BN / TN);
constexpr int kRowStride = BM / TM, kColStride = BN / TN;
// Shared tiles are [BKW][kLd] words: row/column index fastest. The padding of 8 words makes the
// tensor-core fragment reads (8 rows x 4 k-words per warp) hit 32 distinct banks.
constexpr int kLd = BM + 8;
static_assert(BM == BN, "one leading dimension serves both tiles");

__host__ __device__ inline int64_t padded_k(int64_t k) {
  return (k + kKGroup - 1) / kKGroup * kKGroup;
}

// Element i of the packed buffer of w [n, k] (row c = i / kp, column j = i % kp).
__host__ __device__ inline int8_t packed_value(const int8_t* w, int64_t i, int64_t k, int64_t kp) {
  const int64_t c = i / kp, j = i % kp;
  return j < k ? w[c * k + j] : int8_t(0);
}

// acc + the dot product of 4 activation bytes (uint8 or int8, by AT) and 4 int8 weights.
template <typename AT>
__host__ __device__ inline int dot4(uint32_t a, uint32_t w, int acc) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_signed<AT>::value) {
    return __dp4a(int(a), int(w), acc);
  } else {
    // The intrinsic has no mixed-sign overload; PTX dp4a does (a unsigned, b signed).
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(w), "r"(acc));
    return d;
  }
#else
  // Exact integer arithmetic, then wrap to 32 bits as the instruction does.
  int64_t sum = acc;
  for (int b = 0; b < 4; ++b) {
    const int64_t x = int64_t(AT(uint8_t(a >> (8 * b))));
    const int64_t y = int64_t(int8_t(uint8_t(w >> (8 * b))));
    sum += x * y;
  }
  return int(int32_t(uint32_t(uint64_t(sum))));
#endif
}

struct Epilogue {
  int32_t a_zero_point;
  const int32_t* colsum;
  const int32_t* bias;
  const int32_t* multiplier;
  const int32_t* shift;  // n of M = m * 2^-(31 + n), in [-30, 31] (checked on the host)
  int32_t out_zero_point;
  int32_t lo, hi;        // output range, lo already raised by a fused ReLU
};

// Output range of an 8-bit output (uint8 [0, 255] or int8 [-128, 127]); a fused ReLU raises
// the lower bound to the output zero point.
__host__ __device__ inline void set_output_range(Epilogue& ep, bool out_unsigned, bool relu) {
  ep.lo = out_unsigned ? 0 : -128;
  ep.hi = out_unsigned ? 255 : 127;
  if (relu && ep.out_zero_point > ep.lo) ep.lo = ep.out_zero_point;
}

// Zero point, bias, saturation and (for 8-bit outputs) requantization of one accumulator.
template <typename OutT>
__host__ __device__ inline OutT finish(int dot, int64_t c, const Epilogue& ep) {
  int64_t v = int64_t(dot) - int64_t(ep.a_zero_point) * ep.colsum[c] + ep.bias[c];
  v = v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v);
  if constexpr (sizeof(OutT) == 4) {
    return OutT(v);
  } else {
    const int s = 31 + ep.shift[c];  // in [1, 62]: no 64-bit overflow below
    int64_t y = (v * int64_t(ep.multiplier[c]) + (int64_t(1) << (s - 1))) >> s;
    y += ep.out_zero_point;
    y = y < ep.lo ? ep.lo : (y > ep.hi ? ep.hi : y);
    return OutT(y);
  }
}

// Phase 1: stage words [kw0, kw0 + BKW) of the block's activation rows and weight rows.
// kAligned (k % 4 == 0): activation rows are word aligned and load as 32-bit words.
template <bool kAligned>
__host__ __device__ inline void load_tile(int tid, const uint8_t* a8, const uint32_t* wp32,
                                          int64_t M, int64_t N, int64_t K, int64_t row0,
                                          int64_t col0, int64_t kw0, uint32_t (*As)[kLd],
                                          uint32_t (*Bs)[kLd]) {
  const int64_t kw_total = (K + kKGroup - 1) / kKGroup;
  for (int l = tid; l < BM * BKW; l += kThreads) {
    const int r = l / BKW, c = l % BKW;  // consecutive threads read consecutive words of a row
    const int64_t gr = row0 + r, gkw = kw0 + c;
    uint32_t word = 0;
    if (gr < M && gkw < kw_total) {
      if constexpr (kAligned) {
        word = reinterpret_cast<const uint32_t*>(a8)[gr * kw_total + gkw];
      } else {
        // Bytes past k meet zero weight padding; they are zeroed anyway to stay defined.
        const uint8_t* row = a8 + gr * K;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int64_t kk = gkw * 4 + b;
          if (kk < K) word |= uint32_t(row[kk]) << (8 * b);
        }
      }
    }
    As[c][r] = word;
  }
  for (int l = tid; l < BN * BKW; l += kThreads) {
    const int r = l / BKW, c = l % BKW;
    const int64_t gn = col0 + r, gkw = kw0 + c;
    Bs[c][r] = (gn < N && gkw < kw_total) ? wp32[gn * kw_total + gkw] : 0u;
  }
}

// Phase 2: one thread's 4x4 block of dot products over the staged words.
//
// ---- Exercise (notebook 06_cuda_int8) ---------------------------------------------------------
// Thread tid = ty * kColStride + tx owns the outputs (rows ty + i * kRowStride, columns
// tx + j * kColStride) of the block tile, i, j < 4 (strided, so that neighbouring threads read
// neighbouring shared-memory words). For every staged k word kw < BKW, add to acc[i][j] the dp4a
// of activation word As[kw][row] and weight word Bs[kw][col] with dot4<AT>: AT (uint8_t or
// int8_t) is the signedness of the activation bytes, the weight bytes are always int8.
// Keep the 8 words a thread needs per kw in registers (load them once, use each 4 times).
// The same code runs on the GPU (dot4 is the dp4a instruction) and, through
// ndarray_backend_cuda.emulate.qgemm, on the CPU (dot4 is a byte loop); rebuild with
// `make build`. Until it is written the host build throws "not implemented: compute_tile".
template <typename AT>
__host__ __device__ inline void compute_tile(int tid, const uint32_t (*As)[kLd],
                                             const uint32_t (*Bs)[kLd], int (&acc)[TM][TN]) {
  // BEGIN SOLUTION
  const int tx = tid % kColStride, ty = tid / kColStride;
#pragma unroll
  for (int kw = 0; kw < BKW; ++kw) {
    uint32_t av[TM], bv[TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) av[i] = As[kw][ty + i * kRowStride];
#pragma unroll
    for (int j = 0; j < TN; ++j) bv[j] = Bs[kw][tx + j * kColStride];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = dot4<AT>(av[i], bv[j], acc[i][j]);
  }
  // END SOLUTION
}

// Phase 3: the fused epilogue and the store of one thread's in-range outputs.
template <typename OutT>
__host__ __device__ inline void store_tile(int tid, OutT* out, int64_t M, int64_t N,
                                           int64_t row0, int64_t col0, const int (&acc)[TM][TN],
                                           const Epilogue& ep) {
  const int tx = tid % kColStride, ty = tid / kColStride;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = row0 + ty + i * kRowStride;
    if (r >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t c = col0 + tx + j * kColStride;
      if (c < N) out[r * N + c] = finish<OutT>(acc[i][j], c, ep);
    }
  }
}

// ---- tensor-core path (sm_80+): mma.sync m16n8k32 on int8 -------------------------------------
//
// Same block tile and shared tiles as above; the 8 warps of a block each own a 16 x 32 piece
// (warp w: rows 16 * (w % 4), columns 32 * (w / 4)), i.e. four 16x8 mma tiles, and step through
// k 32 values (8 words) per mma. Fragment layout of mma.m16n8k32 with 8-bit inputs (PTX ISA),
// with g = lane / 4, t = lane % 4 and one 32-bit register holding 4 consecutive k:
//   A (16 x 32, row major): reg r = row g + 8 * (r & 1), k word t + 4 * (r >> 1)
//   B (32 x 8, column major): reg r = column g, k word t + 4 * r
//   C/D (16 x 8, int32): reg i = row g + 8 * (i >> 1), column 2 * t + (i & 1)
namespace mma {

constexpr int kWarps = kThreads / 32;
constexpr int WM = 16, WN = 32;   // warp tile
constexpr int NT = WN / 8;        // n8 mma tiles per warp
constexpr int KW = 8;             // k words per mma (32 k values)
static_assert((BM / WM) * (BN / WN) == kWarps, "the warps cover the block tile");

struct Fragments {
  uint32_t a[4];
  uint32_t b[NT][2];
};

__host__ __device__ inline void warp_origin(int warp, int* r0, int* c0) {
  *r0 = (warp % (BM / WM)) * WM;
  *c0 = (warp / (BM / WM)) * WN;
}

// Registers of one lane for the mma step over k words [kw, kw + 8) of the shared tiles.
__host__ __device__ inline void load_fragments(int warp, int lane, int kw,
                                               const uint32_t (*As)[kLd],
                                               const uint32_t (*Bs)[kLd], Fragments& f) {
  int r0, c0;
  warp_origin(warp, &r0, &c0);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int r = 0; r < 4; ++r) f.a[r] = As[kw + t + 4 * (r >> 1)][r0 + g + 8 * (r & 1)];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r) f.b[j][r] = Bs[kw + t + 4 * r][c0 + 8 * j + g];
}

// Output coordinates (within the block tile) of accumulator register i of n8 tile j of a lane.
__host__ __device__ inline void acc_coords(int warp, int lane, int j, int i, int* row, int* col) {
  int r0, c0;
  warp_origin(warp, &r0, &c0);
  *row = r0 + lane / 4 + 8 * (i >> 1);
  *col = c0 + 8 * j + 2 * (lane % 4) + (i & 1);
}

// The fused epilogue and store of one lane's accumulators.
template <typename OutT>
__host__ __device__ inline void store_fragments(int warp, int lane, OutT* out, int64_t M,
                                                int64_t N, int64_t row0, int64_t col0,
                                                const int (&acc)[NT][4], const Epilogue& ep) {
#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int row, col;
      acc_coords(warp, lane, j, i, &row, &col);
      const int64_t r = row0 + row, c = col0 + col;
      if (r < M && c < N) out[r * N + c] = finish<OutT>(acc[j][i], c, ep);
    }
  }
}

}  // namespace mma

}  // namespace qtile
}  // namespace cuda
}  // namespace needle
