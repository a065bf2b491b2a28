// Weight-only int4 GEMV/GEMM kernels (see int4_gemv.h) and their Python binding.
//
// Both paths compute, for every output (row m, channel n), exactly (reference.py,
// int4_gemm_reference)
//     for each group g:  pe[0..7] = po[0..7] = 0
//                        (t odd ? po : pe)[(t % 16) / 2] += float(u - z) * x[k]   (t = k - k0)
//                        q = pe + po;  sum = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7))
//                        y += s[n, g] * sum
// with separate float32 multiplies and adds (this file is compiled with -ffp-contract=off,
// and the vector path is built for AVX2 without FMA), so they agree bit for bit with each
// other and with the numpy reference. The two lane sets follow the byte layout: 8 bytes hold
// 16 codes, the low nibbles the even positions and the high nibbles the odd ones, so the
// vector path widens 8 bytes to 8 int32 lanes once and takes both nibbles from them, against
// a copy of x split the same way (x_even, x_odd per 16 values).
//
// The batch-1 product is bound by vector operations, not by memory (4-bit weights are an
// eighth of float32's bytes), so the vector path spends as few as it can per 16 codes: a
// 16-byte load serves two blocks (the float exponent byte blended in once, one byte shuffle
// per block to widen), one AND per nibble and one float subtraction per nibble give u - z
// exactly (the 2^23 / 2^19 magic numbers, see ZeroOffsets), then the two multiplies and two
// adds the reference prescribes. Four output channels share each load of x; the group loop
// is unrolled for the common group sizes (32, 64, 128) and, when a block of channels has one
// zero point (always, for the symmetric scheme), its offsets stay in registers; the group
// sums go through the fixed tree two groups at a time (tree8_avx2) with their scales
// transposed in registers, and the next channels' codes are prefetched. With several rows
// of x, each group of four (AVX2) or eight (AVX-512) channels is unpacked once into a small
// float tile and reused for every row.
#include "int4_gemv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/checked_size.h"
#include "../common/int4_args.h"
#include "array.h"
#include "cpu_features.h"
#include "parallel.h"

#if defined(__x86_64__) || defined(__i386__)
#define NEEDLE_INT4_X86 1
#include <immintrin.h>
#else
#define NEEDLE_INT4_X86 0
#endif

namespace py = pybind11;

namespace needle {
namespace cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kBlock = 2 * kLanes;  // codes per vector step (8 bytes)

inline int code_at(const uint8_t* row, int64_t j) {
  const uint8_t b = row[j >> 1];
  return (j & 1) ? (b >> 4) : (b & 0x0F);
}

inline float tree_sum(const float* pe, const float* po) {
  float q[kLanes];
  for (int l = 0; l < kLanes; ++l) q[l] = pe[l] + po[l];
  return ((q[0] + q[4]) + (q[2] + q[6])) + ((q[1] + q[5]) + (q[3] + q[7]));
}

// Adds the codes [t0, len) of the group starting at k0 (scalar, the documented lane rule).
inline void group_tail(float* pe, float* po, const uint8_t* row, const float* x, int64_t k0,
                       int64_t t0, int64_t len, int z) {
  for (int64_t t = t0; t < len; ++t) {
    float* p = (t & 1) ? po : pe;
    const int l = static_cast<int>((t % kBlock) >> 1);
    p[l] = p[l] + static_cast<float>(code_at(row, k0 + t) - z) * x[k0 + t];
  }
}

void rows_scalar(const Int4GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    const float* x = a.x + mi * a.k;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = a.codes + n * kb;
      float y = 0.0f;
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t k0 = g * a.group, len = std::min(a.group, a.k - k0);
        float pe[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0}, po[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
        group_tail(pe, po, row, x, k0, 0, len, a.zeros[n * ng + g]);
        y = y + a.scales[n * ng + g] * tree_sum(pe, po);
      }
      a.out[mi * a.n + n] = y;
    }
  }
}

#if NEEDLE_INT4_X86
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12's AVX-512 intrinsics start from `__m512 __Y = __Y;` (an undefined vector), which
// -Wmaybe-uninitialized reports at every inlined use when the file is built without LTO (as the
// grader builds it): a false alarm that would fill the build log students are shown.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The float32 values 2^23 + z and 2^19 + z for each zero point z. The bits 0x4B000000 | u
// are the float 2^23 + u and the bits 0x49000000 | (16 u) the float 2^19 + u, so one exact
// float subtraction turns a masked byte into u - z: no integer subtraction, no conversion.
struct ZeroOffsets {
  float even[16], odd[16];
  constexpr ZeroOffsets() : even(), odd() {
    for (int z = 0; z < 16; ++z) even[z] = 8388608.0f + z, odd[z] = 524288.0f + z;
  }
};
constexpr ZeroOffsets kZeroOffsets;

// Weights of 16 codes (8 bytes at p) as exact floats u - z: even positions in *we, odd in
// *wo. 8 + 2 operations: widen, or the exponent in, two masks, two subtractions.
struct Unpack16 {
  __m256i magic, mask_e, mask_o;
  __attribute__((target("avx2"))) Unpack16()
      : magic(_mm256_set1_epi32(0x4B000000)), mask_e(_mm256_set1_epi32(0x4B00000F)),
        mask_o(_mm256_set1_epi32(0x490000F0)) {}
  __attribute__((target("avx2"))) inline void operator()(const uint8_t* p, __m256 ze, __m256 zo,
                                                         __m256* we, __m256* wo) const {
    __m256i v = _mm256_or_si256(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), magic);
    __asm__("" : "+x"(v));  // keep or-then-and: the compiler would turn it into 2 ands + 2 ors
    *we = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_and_si256(v, mask_e)), ze);
    *wo = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_and_si256(v, mask_o)), zo);
  }
};

// Weights of 32 codes (16 bytes at p) as two blocks of Unpack16's: one 16-byte load for both,
// the exponent byte blended in (lane 0 keeps bytes 0-11, lane 1 bytes 4-15) and one byte
// shuffle per block to widen, which saves an OR and a widening load per block.
struct Unpack32 {
  __m256i exponent, index_a, index_b, mask_e, mask_o;
  __attribute__((target("avx2"))) Unpack32()
      : exponent(_mm256_set1_epi32(0x4B4B4B4B)),
        index_a(_mm256_setr_epi8(0, -1, -1, 12, 1, -1, -1, 12, 2, -1, -1, 12, 3, -1, -1, 12,  //
                                 4, -1, -1, 0, 5, -1, -1, 0, 6, -1, -1, 0, 7, -1, -1, 0)),
        index_b(_mm256_setr_epi8(8, -1, -1, 12, 9, -1, -1, 12, 10, -1, -1, 12, 11, -1, -1, 12,
                                 12, -1, -1, 0, 13, -1, -1, 0, 14, -1, -1, 0, 15, -1, -1, 0)),
        mask_e(_mm256_set1_epi32(0x4B00000F)), mask_o(_mm256_set1_epi32(0x490000F0)) {}
  __attribute__((target("avx2"))) inline void operator()(const uint8_t* p, __m256 ze, __m256 zo,
                                                         __m256* w) const {
    // dword 3 of lane 0 and dword 0 of lane 1 become 0x4B4B4B4B: the bytes no block reads
    const __m256i src = _mm256_blend_epi32(
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
        exponent, 0x18);
    const __m256i va = _mm256_shuffle_epi8(src, index_a), vb = _mm256_shuffle_epi8(src, index_b);
    w[0] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_and_si256(va, mask_e)), ze);
    w[1] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_and_si256(va, mask_o)), zo);
    w[2] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_and_si256(vb, mask_e)), ze);
    w[3] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_and_si256(vb, mask_o)), zo);
  }
};

// tree_sum of four channels' group partials q = pe + po at once: [S(q0), S(q1), S(q2), S(q3)],
// S(q) = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7)), every add in the reference's
// operand order.
__attribute__((target("avx2"))) inline __m128 tree4_avx2(__m256 q0, __m256 q1, __m256 q2,
                                                         __m256 q3) {
  // a = low half + high half = [q0 + q4, q1 + q5, q2 + q6, q3 + q7]: [a(q0) | a(q1)]
  const __m256 a01 = _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20),
                                   _mm256_permute2f128_ps(q0, q1, 0x31));
  const __m256 a23 = _mm256_add_ps(_mm256_permute2f128_ps(q2, q3, 0x20),
                                   _mm256_permute2f128_ps(q2, q3, 0x31));
  // b = [a0 + a2, a1 + a3]: [b(q0), b(q2) | b(q1), b(q3)]
  const __m256 b = _mm256_add_ps(_mm256_shuffle_ps(a01, a23, 0x44),
                                 _mm256_shuffle_ps(a01, a23, 0xEE));
  // b0 + b1: [S0, S2, S0, S2 | S1, S3, S1, S3]
  const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(b, b, 0x88), _mm256_shuffle_ps(b, b, 0xDD));
  return _mm_unpacklo_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// Four output channels (rows, scales and zero points of each) over their full groups.
struct Quad {
  const uint8_t* rows[4];
  const float* scales[4];
  const uint8_t* zeros[4];
  int64_t ahead;  // bytes from a row to the same column of a quad further on (prefetch)
};

// tree_sum of eight partial vectors at once, returned as [S(a0), .., S(a3) | S(b0), .., S(b3)]:
// four channels of one group (a) and of another (b), every add in the reference's operand
// order, S(q) = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7)).
__attribute__((target("avx2"))) inline __m256 tree8_avx2(const __m256* a, const __m256* b) {
  // [q0 + q4, q1 + q5, q2 + q6, q3 + q7] of a[i] (low half) and b[i] (high half)
  __m256 c[4];
  for (int i = 0; i < 4; ++i)
    c[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[i], b[i], 0x20),
                         _mm256_permute2f128_ps(a[i], b[i], 0x31));
  // [(q0 + q4) + (q2 + q6), (q1 + q5) + (q3 + q7)] of a0, a1 | b0, b1 (d0) and a2, a3 | b2, b3
  const __m256 d0 = _mm256_add_ps(_mm256_shuffle_ps(c[0], c[1], 0x44),
                                  _mm256_shuffle_ps(c[0], c[1], 0xEE));
  const __m256 d1 = _mm256_add_ps(_mm256_shuffle_ps(c[2], c[3], 0x44),
                                  _mm256_shuffle_ps(c[2], c[3], 0xEE));
  return _mm256_add_ps(_mm256_shuffle_ps(d0, d1, 0x88), _mm256_shuffle_ps(d0, d1, 0xDD));
}

// The partial sums q = pe + po of one group of the quad for one row of x (xs: split as
// split_even_odd), in part[r]: weights unpacked in registers, never stored. kBlocks: the
// group's 16-code blocks when known at compile time (0: `blocks`). The first block's
// products start the sums: 0 + p is p except for the sign of a zero, and a zero's sign cannot
// reach the output, which starts at y = 0 and only adds (0 + -0 is +0).
template <int kBlocks>
__attribute__((target("avx2"))) inline void quad_group(const Quad& q, const float* xs, int64_t k0,
                                                       int64_t blocks, const __m256* ze,
                                                       const __m256* zo, __m256* part) {
  const Unpack32 unpack2;
  const int64_t nb = kBlocks > 0 ? kBlocks : blocks;
  __m256 ae[4], ao[4];
  int64_t b = 0;
  if (nb >= 2) {
    const __m256 x0 = _mm256_loadu_ps(xs + k0), x1 = _mm256_loadu_ps(xs + k0 + kLanes);
    const __m256 x2 = _mm256_loadu_ps(xs + k0 + 2 * kLanes);
    const __m256 x3 = _mm256_loadu_ps(xs + k0 + 3 * kLanes);
    for (int r = 0; r < 4; ++r) {
      __m256 w[4];
      unpack2(q.rows[r] + (k0 >> 1), ze[r], zo[r], w);
      ae[r] = _mm256_add_ps(_mm256_mul_ps(w[0], x0), _mm256_mul_ps(w[2], x2));
      ao[r] = _mm256_add_ps(_mm256_mul_ps(w[1], x1), _mm256_mul_ps(w[3], x3));
    }
    b = 2;
  } else {
    const Unpack16 unpack;
    const __m256 xe = _mm256_loadu_ps(xs + k0), xo = _mm256_loadu_ps(xs + k0 + kLanes);
    for (int r = 0; r < 4; ++r) {
      __m256 we, wo;
      unpack(q.rows[r] + (k0 >> 1), ze[r], zo[r], &we, &wo);
      ae[r] = _mm256_mul_ps(we, xe);
      ao[r] = _mm256_mul_ps(wo, xo);
    }
    b = 1;
  }
  for (; b + 2 <= nb; b += 2) {
    const int64_t t = k0 + b * kBlock;
    const __m256 x0 = _mm256_loadu_ps(xs + t), x1 = _mm256_loadu_ps(xs + t + kLanes);
    const __m256 x2 = _mm256_loadu_ps(xs + t + 2 * kLanes);
    const __m256 x3 = _mm256_loadu_ps(xs + t + 3 * kLanes);
    for (int r = 0; r < 4; ++r) {
      __m256 w[4];
      unpack2(q.rows[r] + (t >> 1), ze[r], zo[r], w);
      ae[r] = _mm256_add_ps(_mm256_add_ps(ae[r], _mm256_mul_ps(w[0], x0)), _mm256_mul_ps(w[2], x2));
      ao[r] = _mm256_add_ps(_mm256_add_ps(ao[r], _mm256_mul_ps(w[1], x1)), _mm256_mul_ps(w[3], x3));
    }
  }
  if (b < nb) {  // an odd block count (group = 48, 80, ...)
    const Unpack16 unpack;
    const int64_t t = k0 + b * kBlock;
    const __m256 xe = _mm256_loadu_ps(xs + t), xo = _mm256_loadu_ps(xs + t + kLanes);
    for (int r = 0; r < 4; ++r) {
      __m256 we, wo;
      unpack(q.rows[r] + (t >> 1), ze[r], zo[r], &we, &wo);
      ae[r] = _mm256_add_ps(ae[r], _mm256_mul_ps(we, xe));
      ao[r] = _mm256_add_ps(ao[r], _mm256_mul_ps(wo, xo));
    }
  }
  for (int r = 0; r < 4; ++r) part[r] = _mm256_add_ps(ae[r], ao[r]);
}

// y[r] of the quad for one row of x over groups [0, ng_full), each a multiple of 16 long.
// The group sums go through the tree in batches of kTreeBatch groups: done right after each
// group, the tree's ~30-cycle dependency chain stalls the loop; batched, the trees overlap
// one another, two groups per tree8_avx2, their scales transposed in registers. kUniform:
// every group of the four channels has zero point q.zeros[0][0] (always so for the symmetric
// scheme), so the zero offsets are set once.
constexpr int kTreeBatch = 8;

template <int kBlocks, bool kUniform>
__attribute__((target("avx2"))) __m128 quad_direct(const Quad& q, const float* xs, int64_t group,
                                                   int64_t ng, int64_t ng_full) {
  alignas(32) float partial[kTreeBatch][4][kLanes];  // q = pe + po of each channel and group
  __m256 ze[4], zo[4];
  for (int r = 0; r < 4; ++r) {
    ze[r] = _mm256_broadcast_ss(&kZeroOffsets.even[q.zeros[0][0]]);
    zo[r] = _mm256_broadcast_ss(&kZeroOffsets.odd[q.zeros[0][0]]);
  }
  const int64_t blocks = group / kBlock;
  __m128 y = _mm_setzero_ps();
  for (int64_t g0 = 0; g0 < ng_full; g0 += kTreeBatch) {
    const int64_t batch = std::min<int64_t>(kTreeBatch, ng_full - g0);
    for (int64_t j = 0; j < batch; ++j) {
      const int64_t g = g0 + j, k0 = g * group;
      for (int r = 0; r < 4; ++r) {
        if (!kUniform) {
          ze[r] = _mm256_broadcast_ss(&kZeroOffsets.even[q.zeros[r][g]]);
          zo[r] = _mm256_broadcast_ss(&kZeroOffsets.odd[q.zeros[r][g]]);
        }
        // codes four quads on, once per 64-byte line: the hardware prefetcher alone lags here
        if ((k0 & 127) < group)
          _mm_prefetch(reinterpret_cast<const char*>(q.rows[r] + (k0 >> 1) + q.ahead),
                       _MM_HINT_T1);
      }
      __m256 part[4];
      quad_group<kBlocks>(q, xs, k0, blocks, ze, zo, part);
      for (int r = 0; r < 4; ++r) _mm256_store_ps(partial[j][r], part[r]);
    }
    if (batch == kTreeBatch && g0 + kTreeBatch <= ng) {
      // scales [g | g + 4] of the four channels: sc[j] for groups g0 + j and g0 + j + 4
      __m256 rs[4], t[4], sc[4];
      for (int r = 0; r < 4; ++r) rs[r] = _mm256_loadu_ps(q.scales[r] + g0);
      t[0] = _mm256_unpacklo_ps(rs[0], rs[1]);
      t[1] = _mm256_unpackhi_ps(rs[0], rs[1]);
      t[2] = _mm256_unpacklo_ps(rs[2], rs[3]);
      t[3] = _mm256_unpackhi_ps(rs[2], rs[3]);
      sc[0] = _mm256_shuffle_ps(t[0], t[2], 0x44);
      sc[1] = _mm256_shuffle_ps(t[0], t[2], 0xEE);
      sc[2] = _mm256_shuffle_ps(t[1], t[3], 0x44);
      sc[3] = _mm256_shuffle_ps(t[1], t[3], 0xEE);
      __m256 prod[4];
      for (int j = 0; j < 4; ++j) {
        __m256 pa[4], pb[4];
        for (int r = 0; r < 4; ++r) {
          pa[r] = _mm256_load_ps(partial[j][r]);
          pb[r] = _mm256_load_ps(partial[j + 4][r]);
        }
        prod[j] = _mm256_mul_ps(sc[j], tree8_avx2(pa, pb));
      }
      // y += s * sum group by group, in order
      for (int j = 0; j < 4; ++j) y = _mm_add_ps(y, _mm256_castps256_ps128(prod[j]));
      for (int j = 0; j < 4; ++j) y = _mm_add_ps(y, _mm256_extractf128_ps(prod[j], 1));
    } else {
      for (int64_t j = 0; j < batch; ++j) {
        const int64_t g = g0 + j;
        const __m128 sum =
            tree4_avx2(_mm256_load_ps(partial[j][0]), _mm256_load_ps(partial[j][1]),
                       _mm256_load_ps(partial[j][2]), _mm256_load_ps(partial[j][3]));
        const __m128 s =
            _mm_setr_ps(q.scales[0][g], q.scales[1][g], q.scales[2][g], q.scales[3][g]);
        y = _mm_add_ps(y, _mm_mul_ps(s, sum));
      }
    }
  }
  return y;
}

// Calls fn(std::integral_constant<int, blocks>, std::integral_constant<bool, uniform>) with
// the compile-time block count of the common group sizes (32, 64, 128; 0: known at run time)
// and the zero-point case, so each kernel is unrolled for them.
template <class Fn>
inline auto with_group_constants(int64_t group, bool uniform, Fn&& fn) {
  using std::integral_constant;
  auto by_blocks = [&](auto u) {
    switch (group) {
      case 32: return fn(integral_constant<int, 2>(), u);
      case 64: return fn(integral_constant<int, 4>(), u);
      case 128: return fn(integral_constant<int, 8>(), u);
      default: return fn(integral_constant<int, 0>(), u);
    }
  };
  return uniform ? by_blocks(integral_constant<bool, true>())
                 : by_blocks(integral_constant<bool, false>());
}

// quad_direct for this group size and these zero points.
__attribute__((target("avx2"))) __m128 quad_direct_any(const Quad& q, const float* xs,
                                                       int64_t group, int64_t ng, int64_t ng_full,
                                                       bool uniform) {
  return with_group_constants(group, uniform, [&](auto blocks, auto u)
                                                  __attribute__((target("avx2"))) {
    return quad_direct<decltype(blocks)::value, decltype(u)::value>(q, xs, group, ng, ng_full);
  });
}

// Whether every group of the channels [n, n + rows) has the zero point of the first (their
// zero points are contiguous).
inline bool uniform_zero_point(const Int4GemmArgs& a, int64_t n, int64_t rows, int64_t ng) {
  const uint8_t* zeros = a.zeros + n * ng;
  unsigned differ = 0;
  for (int64_t i = 0; i < rows * ng; ++i) differ |= unsigned(zeros[i] ^ zeros[0]);
  return differ == 0;
}

// y + s * (group sum) of one channel's last group when it is shorter than `group` (k % group
// != 0): its full 16-code blocks in vector, the rest by the scalar rule.
__attribute__((target("avx2"))) float last_group_avx2(float y, const uint8_t* row, float s,
                                                      int z, const float* x, const float* xs,
                                                      int64_t k0, int64_t len) {
  const Unpack16 unpack;
  const __m256 ze = _mm256_broadcast_ss(&kZeroOffsets.even[z]);
  const __m256 zo = _mm256_broadcast_ss(&kZeroOffsets.odd[z]);
  __m256 ae = _mm256_setzero_ps(), ao = _mm256_setzero_ps();
  const int64_t full = len / kBlock * kBlock;
  for (int64_t t = 0; t < full; t += kBlock) {
    __m256 we, wo;
    unpack(row + ((k0 + t) >> 1), ze, zo, &we, &wo);
    ae = _mm256_add_ps(ae, _mm256_mul_ps(we, _mm256_loadu_ps(xs + k0 + t)));
    ao = _mm256_add_ps(ao, _mm256_mul_ps(wo, _mm256_loadu_ps(xs + k0 + t + kLanes)));
  }
  alignas(32) float pe[kLanes], po[kLanes];
  _mm256_store_ps(pe, ae);
  _mm256_store_ps(po, ao);
  group_tail(pe, po, row, x, k0, full, len, z);
  return y + s * tree_sum(pe, po);
}

// Several rows of x (m >= 2): each group of the quad is unpacked once into a small float
// tile (4 x group, the even/odd order of xs) and reused for every row of x; out[m, quad]
// accumulates group by group (0 + v first, as the reference's y = 0 start).
constexpr int64_t kMaxTileGroup = 1024;  // 16 KiB of tile on the stack

__attribute__((target("avx2"))) void quad_tiled(const Quad& q, const Int4GemmArgs& a,
                                                const float* xs_all, int64_t ks, int64_t n,
                                                int64_t ng_full) {
  const Unpack16 unpack;
  alignas(32) float tile[4 * kMaxTileGroup];
  const int64_t group = a.group;
  for (int64_t mi = 0; mi < a.m; ++mi)
    for (int r = 0; r < 4; ++r) a.out[mi * a.n + n + r] = 0.0f;
  for (int64_t g = 0; g < ng_full; ++g) {
    const int64_t k0 = g * group;
    for (int r = 0; r < 4; ++r) {
      const __m256 ze = _mm256_broadcast_ss(&kZeroOffsets.even[q.zeros[r][g]]);
      const __m256 zo = _mm256_broadcast_ss(&kZeroOffsets.odd[q.zeros[r][g]]);
      float* w = tile + r * group;
      for (int64_t t = 0; t < group; t += kBlock) {
        __m256 we, wo;
        unpack(q.rows[r] + ((k0 + t) >> 1), ze, zo, &we, &wo);
        _mm256_store_ps(w + t, we);
        _mm256_store_ps(w + t + kLanes, wo);
      }
    }
    const __m128 s = _mm_setr_ps(q.scales[0][g], q.scales[1][g], q.scales[2][g], q.scales[3][g]);
    for (int64_t mi = 0; mi < a.m; ++mi) {
      const float* xs = xs_all + mi * ks + k0;
      __m256 ae[4], ao[4];
      for (int r = 0; r < 4; ++r) ae[r] = ao[r] = _mm256_setzero_ps();
      for (int64_t t = 0; t < group; t += kBlock) {
        const __m256 xe = _mm256_loadu_ps(xs + t), xo = _mm256_loadu_ps(xs + t + kLanes);
        for (int r = 0; r < 4; ++r) {
          const float* w = tile + r * group + t;
          ae[r] = _mm256_add_ps(ae[r], _mm256_mul_ps(_mm256_load_ps(w), xe));
          ao[r] = _mm256_add_ps(ao[r], _mm256_mul_ps(_mm256_load_ps(w + kLanes), xo));
        }
      }
      const __m128 sum = tree4_avx2(_mm256_add_ps(ae[0], ao[0]), _mm256_add_ps(ae[1], ao[1]),
                                    _mm256_add_ps(ae[2], ao[2]), _mm256_add_ps(ae[3], ao[3]));
      float* y = a.out + mi * a.n + n;
      _mm_storeu_ps(y, _mm_add_ps(_mm_loadu_ps(y), _mm_mul_ps(s, sum)));
    }
  }
}

// Rows [n0, n1) for every row of x, four output channels at a time; a last partial quad
// repeats its final channel and keeps only the real ones.
__attribute__((target("avx2"))) void rows_avx2(const Int4GemmArgs& a, const float* xs_all,
                                               int64_t n0, int64_t n1) {
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group;
  const int64_t ks = (a.k + kBlock - 1) / kBlock * kBlock;
  const int64_t ng_full = a.k / a.group;
  for (int64_t n = n0; n < n1; n += 4) {
    Quad q;
    for (int r = 0; r < 4; ++r) {
      const int64_t nr = std::min(n + r, n1 - 1);
      q.rows[r] = a.codes + nr * kb;
      q.scales[r] = a.scales + nr * ng;
      q.zeros[r] = a.zeros + nr * ng;
    }
    q.ahead = 4 * 4 * kb;  // four quads on, into L2: two quads on, into L1, evicted x
    const bool whole = n + 4 <= n1;
    if (whole && a.m >= 2 && a.group <= kMaxTileGroup) {
      quad_tiled(q, a, xs_all, ks, n, ng_full);
    } else {
      const bool uniform = whole && uniform_zero_point(a, n, 4, ng);
      for (int64_t mi = 0; mi < a.m; ++mi) {
        alignas(16) float y[4];
        _mm_store_ps(y, quad_direct_any(q, xs_all + mi * ks, a.group, ng, ng_full, uniform));
        for (int r = 0; r < 4 && n + r < n1; ++r) a.out[mi * a.n + n + r] = y[r];
      }
    }
    if (ng_full < ng) {  // the short last group, added last as in the reference
      const int64_t k0 = ng_full * a.group;
      for (int64_t mi = 0; mi < a.m; ++mi)
        for (int r = 0; r < 4 && n + r < n1; ++r) {
          float* y = a.out + mi * a.n + n + r;
          *y = last_group_avx2(*y, q.rows[r], q.scales[r][ng_full], q.zeros[r][ng_full],
                               a.x + mi * a.k, xs_all + mi * ks, k0, a.k - k0);
        }
    }
  }
}

// ---- AVX-512: two output channels per 512-bit vector -----------------------------------------
//
// The lane rule has 8 + 8 partial sums per group, one AVX2 vector each; a 512-bit vector holds
// the same 8 lanes of two channels (low half channel r, high half channel r + 1), so each
// vector operation does the work of two AVX2 ones, in the same order. Eight channels (four
// pairs) share each load of x; the group sums of the eight go through one in-register tree.
// One row of x (batch-1 generation) unpacks the codes in registers (octet_direct); several
// rows share a tile of each unpacked group (octet_tiled).

// 16 bytes of codes: 8 of channel r0 at p0 (low lanes), 8 of channel r1 at p1 (high lanes),
// one byte per 32-bit lane.
__attribute__((target("avx512f"))) inline __m512i load_pair(const uint8_t* p0, const uint8_t* p1) {
  return _mm512_cvtepu8_epi32(
      _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0)),
                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p1))));
}

// Both channels' 16 codes as exact floats u - z, any zero points: (v & mask) | exponent in one
// ternary-logic op per nibble (the magic numbers of ZeroOffsets), then the subtraction.
struct UnpackPair {
  __m512i mask_e, mask_o, exp_e, exp_o;
  __attribute__((target("avx512f"))) UnpackPair()
      : mask_e(_mm512_set1_epi32(0x0F)), mask_o(_mm512_set1_epi32(0xF0)),
        exp_e(_mm512_set1_epi32(0x4B000000)), exp_o(_mm512_set1_epi32(0x49000000)) {}
  __attribute__((target("avx512f"))) inline void operator()(__m512i v, __m512 ze, __m512 zo,
                                                            __m512* we, __m512* wo) const {
    // 0xEA: (a & b) | c
    *we = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32(v, mask_e, exp_e, 0xEA)),
                        ze);
    *wo = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32(v, mask_o, exp_o, 0xEA)),
                        zo);
  }
};

// The same when both channels have one zero point z for all their groups (the symmetric
// scheme): u - z looked up in a 16-entry table by the nibble itself (vpermps reads only the
// low 4 bits of each index), no mask and no subtraction.
struct UnpackUniform {
  __m512 table;
  __attribute__((target("avx512f"))) explicit UnpackUniform(int z) {
    alignas(64) float t[16];
    for (int u = 0; u < 16; ++u) t[u] = static_cast<float>(u - z);
    table = _mm512_load_ps(t);
  }
  __attribute__((target("avx512f"))) inline void operator()(__m512i v, __m512* we,
                                                            __m512* wo) const {
    *we = _mm512_permutexvar_ps(v, table);
    *wo = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
  }
};

// A 512-bit vector of a (low 8 lanes) and b (high 8 lanes).
__attribute__((target("avx512f"))) inline __m512 pair_of(float a, float b) {
  return _mm512_mask_blend_ps(__mmask16(0xFF00), _mm512_set1_ps(a), _mm512_set1_ps(b));
}

// The 8 lanes of x at xs duplicated into both halves.
__attribute__((target("avx512f"))) inline __m512 both_halves(const float* xs) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(xs))));
}

__attribute__((target("avx512f"))) inline __m256 low_half(__m512 v) {
  return _mm512_castps512_ps256(v);
}

__attribute__((target("avx512f"))) inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// tree_sum of eight channels' group partials at once. P[p] holds q = pe + po of channels 2p
// (low half) and 2p + 1 (high half); the result holds S(channel i) in lane 0 and
// S(channel i + 4) in lane 1 of 128-bit chunk i (lanes 2, 3 repeat them). Every add has the
// reference's operands: S(q) = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7)).
__attribute__((target("avx512f"))) inline __m512 tree8_avx512(__m512 p0, __m512 p1, __m512 p2,
                                                              __m512 p3) {
  // chunk i of a01: lanes q0 + q4, q1 + q5, q2 + q6, q3 + q7 of channel i (a23: channel 4 + i)
  const __m512 a01 = _mm512_add_ps(_mm512_shuffle_f32x4(p0, p1, 0x88),
                                   _mm512_shuffle_f32x4(p0, p1, 0xDD));
  const __m512 a23 = _mm512_add_ps(_mm512_shuffle_f32x4(p2, p3, 0x88),
                                   _mm512_shuffle_f32x4(p2, p3, 0xDD));
  // chunk i: [a0 + a2, a1 + a3] of channel i, then of channel 4 + i
  const __m512 b = _mm512_add_ps(_mm512_shuffle_ps(a01, a23, 0x44),
                                 _mm512_shuffle_ps(a01, a23, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(b, b, 0x88), _mm512_shuffle_ps(b, b, 0xDD));
}

// out[j][r] = in[r * stride + j] for r, j < 8 (eight rows of scales, eight groups each).
__attribute__((target("avx2"))) inline void transpose8x8(const float* in, int64_t stride,
                                                         float (*out)[8]) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_store_ps(out[i], _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_store_ps(out[i + 4], _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}

// Lane order of tree8_avx512's result: lane 4 i + j holds channel i + 4 (j & 1).
__attribute__((target("avx512f"))) inline __m512i tree8_lanes() {
  return _mm512_setr_epi32(0, 4, 0, 4, 1, 5, 1, 5, 2, 6, 2, 6, 3, 7, 3, 7);
}

// y of channels n .. n + 7 for one row of x over the full groups [0, ng_full). When every
// group of the eight channels has the same zero point (always so for the symmetric scheme)
// the zero offsets are set once, else per group.
template <int kBlocks, bool kUniform>
__attribute__((target("avx512f"))) void octet_direct(const Int4GemmArgs& a, const float* xs,
                                                     int64_t n, int64_t ng_full, float* y8) {
  const UnpackPair unpack;
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group, group = a.group;
  const uint8_t* rows[8];
  for (int r = 0; r < 8; ++r) rows[r] = a.codes + (n + r) * kb;
  const float* scales = a.scales + n * ng;
  const uint8_t* zeros = a.zeros + n * ng;
  const int64_t ahead = 2 * 8 * kb;  // two octets on (prefetch)
  const UnpackUniform lookup(zeros[0]);
  const __m512i lanes = tree8_lanes();
  __m512 ze[4], zo[4];
  for (int p = 0; p < 4; ++p) {
    ze[p] = _mm512_set1_ps(kZeroOffsets.even[zeros[0]]);
    zo[p] = _mm512_set1_ps(kZeroOffsets.odd[zeros[0]]);
  }
  // The trees run in batches of kTreeBatch groups, after the groups' products: right after
  // each group, the tree's dependency chain would stall the next group's loads.
  alignas(64) float partial[kTreeBatch][4][16];
  __m512 y = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < ng_full; g0 += kTreeBatch) {
    const int64_t batch = std::min<int64_t>(kTreeBatch, ng_full - g0);
    for (int64_t j = 0; j < batch; ++j) {
      const int64_t g = g0 + j, k0 = g * group;
      if (!kUniform) {
        for (int p = 0; p < 4; ++p) {
          const int z0 = zeros[(2 * p) * ng + g], z1 = zeros[(2 * p + 1) * ng + g];
          ze[p] = pair_of(kZeroOffsets.even[z0], kZeroOffsets.even[z1]);
          zo[p] = pair_of(kZeroOffsets.odd[z0], kZeroOffsets.odd[z1]);
        }
      }
      // The group's first block starts the sums (0 + p is p but for the sign of a zero,
      // which cannot reach the output: see quad_group); the block count is a compile-time
      // constant for the common group sizes, so the loop unrolls.
      __m512 ae[4], ao[4];
      for (int p = 0; p < 4; ++p) ae[p] = ao[p] = _mm512_setzero_ps();  // (set by block 0)
      const int64_t nb = kBlocks > 0 ? kBlocks : group / kBlock;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t t = k0 + b * kBlock;
        // a 64-byte line of codes per channel begins here: fetch the one two octets on into
        // L2 (two octets of a 4096-wide layer are 32 KiB, a whole L1: fetched into L1 they
        // would evict the lines in use)
        if ((t & 127) == 0)
          for (int r = 0; r < 8; ++r)
            _mm_prefetch(reinterpret_cast<const char*>(rows[r] + (t >> 1) + ahead), _MM_HINT_T1);
        const __m512 xe = both_halves(xs + t), xo = both_halves(xs + t + kLanes);
        for (int p = 0; p < 4; ++p) {
          __m512 we, wo;
          const __m512i v = load_pair(rows[2 * p] + (t >> 1), rows[2 * p + 1] + (t >> 1));
          if (kUniform) lookup(v, &we, &wo);
          else unpack(v, ze[p], zo[p], &we, &wo);
          if (b == 0) {
            ae[p] = _mm512_mul_ps(we, xe);
            ao[p] = _mm512_mul_ps(wo, xo);
          } else {
            ae[p] = _mm512_add_ps(ae[p], _mm512_mul_ps(we, xe));
            ao[p] = _mm512_add_ps(ao[p], _mm512_mul_ps(wo, xo));
          }
        }
      }
      for (int p = 0; p < 4; ++p) _mm512_store_ps(partial[j][p], _mm512_add_ps(ae[p], ao[p]));
    }
    // the batch's scales group by group: sc[j][r] = scale of channel n + r in group g0 + j
    alignas(32) float sc[kTreeBatch][8];
    if (batch == kTreeBatch) {
      transpose8x8(scales + g0, ng, sc);
    } else {
      for (int64_t j = 0; j < batch; ++j)
        for (int r = 0; r < 8; ++r) sc[j][r] = scales[r * ng + g0 + j];
    }
    for (int64_t j = 0; j < batch; ++j) {
      const __m512 sum = tree8_avx512(_mm512_load_ps(partial[j][0]), _mm512_load_ps(partial[j][1]),
                                      _mm512_load_ps(partial[j][2]), _mm512_load_ps(partial[j][3]));
      // the eight scales of the group in the tree's lane order
      const __m512 s = _mm512_permutexvar_ps(lanes, _mm512_castps256_ps512(_mm256_load_ps(sc[j])));
      y = _mm512_add_ps(y, _mm512_mul_ps(s, sum));
    }
  }
  alignas(64) float out[16];
  _mm512_store_ps(out, y);
  for (int i = 0; i < 4; ++i) {
    y8[i] = out[4 * i];
    y8[i + 4] = out[4 * i + 1];
  }
}

// octet_direct for this group size and these zero points.
__attribute__((target("avx512f"))) void octet_direct_any(const Int4GemmArgs& a, const float* xs,
                                                         int64_t n, int64_t ng_full, bool uniform,
                                                         float* y8) {
  with_group_constants(a.group, uniform, [&](auto blocks, auto u)
                                             __attribute__((target("avx512f"))) {
    octet_direct<decltype(blocks)::value, decltype(u)::value>(a, xs, n, ng_full, y8);
  });
}

// Several rows of x (m >= 2) on AVX-512: each group of the octet is unpacked once into a
// float tile (pair p, block b: the 16 even-position weights of channels 2p | 2p + 1, then
// the 16 odd ones: the layout of UnpackPair's vectors) and reused for every row of x, kRows
// rows at a time so that each tile vector loaded serves kRows products. Each output keeps
// the reference's order: its 8 + 8 partial sums over the group's blocks, the tree, then
// y += s * sum group by group (y in `acc`, one vector per row in the tree's lane order).
constexpr int kTileRows = 3;  // 4 pairs x 3 rows x (even, odd) = 24 of the 32 vector registers

template <int kRows>
__attribute__((target("avx512f"))) inline void octet_rows(const float* tile, int64_t blocks,
                                                          const float* xs, int64_t ks,
                                                          __m512 s, float* acc) {
  __m512 ae[4][kRows], ao[4][kRows];
  for (int p = 0; p < 4; ++p)
    for (int r = 0; r < kRows; ++r) ae[p][r] = ao[p][r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 xe[kRows], xo[kRows];
    for (int r = 0; r < kRows; ++r) {
      xe[r] = both_halves(xs + r * ks + b * kBlock);
      xo[r] = both_halves(xs + r * ks + b * kBlock + kLanes);
    }
    const float* w = tile + b * 2 * 16;
    for (int p = 0; p < 4; ++p) {
      const __m512 we = _mm512_load_ps(w + p * blocks * 2 * 16);
      const __m512 wo = _mm512_load_ps(w + p * blocks * 2 * 16 + 16);
      for (int r = 0; r < kRows; ++r) {
        ae[p][r] = _mm512_add_ps(ae[p][r], _mm512_mul_ps(we, xe[r]));
        ao[p][r] = _mm512_add_ps(ao[p][r], _mm512_mul_ps(wo, xo[r]));
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    const __m512 sum = tree8_avx512(
        _mm512_add_ps(ae[0][r], ao[0][r]), _mm512_add_ps(ae[1][r], ao[1][r]),
        _mm512_add_ps(ae[2][r], ao[2][r]), _mm512_add_ps(ae[3][r], ao[3][r]));
    float* y = acc + r * 16;
    _mm512_store_ps(y, _mm512_add_ps(_mm512_load_ps(y), _mm512_mul_ps(s, sum)));
  }
}

// y of channels n .. n + 7 for every row of x over the full groups [0, ng_full): out[mi, n + c]
// for c < 8 (acc: m x 16 floats of scratch, 64-byte aligned).
__attribute__((target("avx512f"))) void octet_tiled(const Int4GemmArgs& a, const float* xs_all,
                                                    int64_t ks, int64_t n, int64_t ng_full,
                                                    float* acc) {
  const UnpackPair unpack;
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group, group = a.group;
  const int64_t blocks = group / kBlock;
  alignas(64) float tile[8 * kMaxTileGroup];
  const uint8_t* rows[8];
  for (int r = 0; r < 8; ++r) rows[r] = a.codes + (n + r) * kb;
  const float* scales = a.scales + n * ng;
  const uint8_t* zeros = a.zeros + n * ng;
  const __m512i lanes = tree8_lanes();
  for (int64_t i = 0; i < a.m * 16; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
  for (int64_t g = 0; g < ng_full; ++g) {
    const int64_t k0 = g * group;
    for (int p = 0; p < 4; ++p) {
      const int z0 = zeros[(2 * p) * ng + g], z1 = zeros[(2 * p + 1) * ng + g];
      const __m512 ze = pair_of(kZeroOffsets.even[z0], kZeroOffsets.even[z1]);
      const __m512 zo = pair_of(kZeroOffsets.odd[z0], kZeroOffsets.odd[z1]);
      float* w = tile + p * blocks * 2 * 16;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t byte = (k0 + b * kBlock) >> 1;
        __m512 we, wo;
        unpack(load_pair(rows[2 * p] + byte, rows[2 * p + 1] + byte), ze, zo, &we, &wo);
        _mm512_store_ps(w + b * 2 * 16, we);
        _mm512_store_ps(w + b * 2 * 16 + 16, wo);
      }
    }
    alignas(32) float sc[8];
    for (int r = 0; r < 8; ++r) sc[r] = scales[r * ng + g];
    // the eight scales of the group in the tree's lane order
    const __m512 s = _mm512_permutexvar_ps(lanes, _mm512_castps256_ps512(_mm256_load_ps(sc)));
    int64_t mi = 0;
    for (; mi + kTileRows <= a.m; mi += kTileRows)
      octet_rows<kTileRows>(tile, blocks, xs_all + mi * ks + k0, ks, s, acc + mi * 16);
    if (a.m - mi == 2) octet_rows<2>(tile, blocks, xs_all + mi * ks + k0, ks, s, acc + mi * 16);
    if (a.m - mi == 1) octet_rows<1>(tile, blocks, xs_all + mi * ks + k0, ks, s, acc + mi * 16);
  }
  for (int64_t mi = 0; mi < a.m; ++mi) {
    const float* y = acc + mi * 16;
    float* out = a.out + mi * a.n + n;
    for (int i = 0; i < 4; ++i) {
      out[i] = y[4 * i];
      out[i + 4] = y[4 * i + 1];
    }
  }
}

// This thread's 64-byte aligned m x 16 float accumulator for octet_tiled, grown when a call
// needs more rows and kept between calls (one allocation per thread, not per task).
float* tile_accumulator(int64_t m) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buffer;
  thread_local int64_t rows = 0;
  if (m > rows) {
    const size_t bytes = static_cast<size_t>(checked_mul(m, 64, "int4_gemm"));
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    buffer.reset(p);
    rows = m;
  }
  return buffer.get();
}

// Rows [n0, n1): whole octets here (one row of x: unpacked in registers; several: through a
// tile), the rest on the AVX2 path.
__attribute__((target("avx512f"))) void rows_avx512(const Int4GemmArgs& a, const float* xs_all,
                                                    int64_t n0, int64_t n1) {
  const int64_t ng = (a.k + a.group - 1) / a.group, ng_full = a.k / a.group;
  const int64_t kb = (a.k + 1) / 2, ks = (a.k + kBlock - 1) / kBlock * kBlock;
  const bool tiled = a.m >= 2;
  if (tiled && a.group > kMaxTileGroup) return rows_avx2(a, xs_all, n0, n1);
  float* acc = tiled ? tile_accumulator(a.m) : nullptr;
  int64_t n = n0;
  for (; n + 8 <= n1; n += 8) {
    if (tiled) octet_tiled(a, xs_all, ks, n, ng_full, acc);
    else octet_direct_any(a, xs_all, n, ng_full, uniform_zero_point(a, n, 8, ng), a.out + n);
    if (ng_full < ng) {  // the short last group, added last as in the reference
      const int64_t k0 = ng_full * a.group;
      for (int64_t mi = 0; mi < a.m; ++mi)
        for (int r = 0; r < 8; ++r) {
          float* y = a.out + mi * a.n + n + r;
          *y = last_group_avx2(*y, a.codes + (n + r) * kb, a.scales[(n + r) * ng + ng_full],
                               a.zeros[(n + r) * ng + ng_full], a.x + mi * a.k, xs_all + mi * ks,
                               k0, a.k - k0);
        }
    }
  }
  if (n < n1) rows_avx2(a, xs_all, n, n1);
}
#endif

// x [m, k] split per 16 values into the 8 even then the 8 odd positions ([m, ks], ks = k
// rounded up to 16, zero padded): the activation order the vector path reads.
std::vector<float> split_even_odd(const Int4GemmArgs& a) {
  const int64_t ks = (a.k + kBlock - 1) / kBlock * kBlock;
  std::vector<float> xs(static_cast<size_t>(checked_mul(a.m, ks, "int4_gemm")), 0.0f);
  for (int64_t mi = 0; mi < a.m; ++mi)
    for (int64_t j = 0; j < a.k; ++j) {
      const int64_t b = j / kBlock * kBlock, t = j - b;
      xs[mi * ks + b + (t & 1) * kLanes + (t >> 1)] = a.x[mi * a.k + j];
    }
  return xs;
}

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }
std::string s(int64_t v) { return std::to_string(v); }

void check_array(const char* name, const AlignedArray& arr, DType dtype, int64_t count) {
  if (arr.dtype() != dtype)
    type_error(std::string("int4_gemm: ") + name + " must be " + dtype_name(dtype) + ", got " +
               dtype_name(arr.dtype()));
  if (static_cast<int64_t>(arr.size()) != count)
    value_error(std::string("int4_gemm: ") + name + " has " + s(arr.size()) +
                " elements, expected " + s(count));
}

void int4_gemm_py(const AlignedArray& x, const AlignedArray& codes, const AlignedArray& scales,
                  const AlignedArray& zeros, AlignedArray& out, int64_t m, int64_t n, int64_t k,
                  int64_t group, bool /*zeros_checked*/) {
  const Int4Dims d = int4_dims("int4_gemm", m, n, k, group);
  const int64_t kb = d.kb, ng = d.ng;
  check_array("x", x, DType::kFloat32, checked_mul(m, k, "int4_gemm x"));
  check_array("codes", codes, DType::kUint8, checked_mul(n, kb, "int4_gemm codes"));
  check_array("scales", scales, DType::kFloat32, checked_mul(n, ng, "int4_gemm scales"));
  check_array("zeros", zeros, DType::kUint8, checked_mul(n, ng, "int4_gemm zeros"));
  check_array("out", out, DType::kFloat32, checked_mul(m, n, "int4_gemm out"));
  // checked on every call, zeros_checked or not: the vector paths index 16-entry tables by
  // zero point, and here the check is one pass over the bytes, no copy
  const uint8_t* zp = zeros.data<uint8_t>();
  int4_check_zero_points("int4_gemm", zp, n * ng);
  Int4GemmArgs a{x.data<float>(), codes.data<uint8_t>(), scales.data<float>(), zp,
                 out.data<float>(), m, n, k, group};
  py::gil_scoped_release release;
  int4_gemm(a);
}

}  // namespace

Int4Isa int4_default_isa() {
#if NEEDLE_INT4_X86
  if (has_avx512f() && has_avx2_fma()) return Int4Isa::kAvx512;
  if (has_avx2_fma()) return Int4Isa::kAvx2;
#endif
  return Int4Isa::kScalar;
}

const char* int4_isa_name(Int4Isa isa) {
  switch (isa) {
    case Int4Isa::kAvx512: return "avx512";
    case Int4Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

void int4_gemm_rows(const Int4GemmArgs& a, Int4Isa isa, int64_t n0, int64_t n1) {
#if NEEDLE_INT4_X86
  if (isa != Int4Isa::kScalar && a.group % kBlock == 0) {
    const std::vector<float> xs = split_even_odd(a);
    if (isa == Int4Isa::kAvx512) return rows_avx512(a, xs.data(), n0, n1);
    return rows_avx2(a, xs.data(), n0, n1);
  }
#endif
  rows_scalar(a, n0, n1);
}

void int4_gemm(const Int4GemmArgs& a) {
  const Int4Isa isa = int4_default_isa();
  // rows per task: a multiple of the 4-row vector block; tasks are handed out as threads
  // free up, so a thread the (shared) machine slows down does not hold the others back
  constexpr int64_t kRows = 64;
  const int64_t blocks = (a.n + kRows - 1) / kRows;
  // about 60 us of work on one thread: the batch-1 products of a large layer split
  const bool parallel = double(a.m) * double(a.n) * double(a.k) >= double(int64_t(1) << 20) &&
                        blocks > 1;
#if NEEDLE_INT4_X86
  if (isa != Int4Isa::kScalar && a.group % kBlock == 0) {
    const std::vector<float> xs = split_even_odd(a);
    const bool wide = isa == Int4Isa::kAvx512;
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kRows, n1 = std::min(a.n, (b + 1) * kRows);
      if (wide) rows_avx512(a, xs.data(), n0, n1);
      else rows_avx2(a, xs.data(), n0, n1);
    }
    return;
  }
#endif
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (int64_t b = 0; b < blocks; ++b) rows_scalar(a, b * kRows, std::min(a.n, (b + 1) * kRows));
}

void register_int4_ops(py::module_& m) {
  m.def("int4_gemm", &int4_gemm_py, py::arg("x"), py::arg("codes"), py::arg("scales"),
        py::arg("zeros"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("group"), py::kw_only(), py::arg("zeros_checked") = false,
        "out[m, n] = x[m, k] @ W^T for group-wise int4 weights W [n, k]: codes uint8\n"
        "[n, ceil(k/2)] (two per byte, even k in the low nibble), scales float32 and zeros\n"
        "uint8 [n, ceil(k/group)]. Bit-exact with reference.int4_gemm_reference.\n"
        "zeros_checked: accepted for the CUDA backend's signature; the zero points are\n"
        "checked here on every call (a scan, no copy).");
  m.def("_int4_gemm_isa", [] { return std::string(int4_isa_name(int4_default_isa())); },
        "The int4 kernel path in use now ('avx512', 'avx2' or 'scalar'; NEEDLE_ISA caps it).");
}

}  // namespace cpu
}  // namespace needle
