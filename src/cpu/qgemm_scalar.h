// The portable int8 GEMM path (`_qgemm_isa("scalar")`), written as two plain functions on raw
// pointers: the tile is the course's C++ exercise (notebook 05), the requantization is given.
// The fast paths (AVX2, AVX-512, VNNI) do not call them, so the rest of the kit runs while the
// tile is still a stub.
#pragma once
#include <cstdint>

namespace needle {
namespace cpu {

// The int32 accumulators of a rows x cols block:
//   acc[r * ldc + j] = sat32( sum_{kk < k} a[r * lda + kk] * w[j * ldw + kk]
//                             - a_zero_point * colsum[j] + bias[j] )
// a: uint8 activation codes (row r = one input row); w: int8 weight codes (row j = one output
// channel, the [N, K] layout); colsum[j] = sum_kk w[j * ldw + kk]; bias: int32 [cols].
// The inner product accumulates in int32 (exact for k <= kQMaxK); the correction and the
// bias are added in 64 bits and the result saturated to the int32 range.
void qgemm_scalar_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t ldw,
                       int64_t rows, int64_t cols, int64_t k, int32_t a_zero_point,
                       const int32_t* colsum, const int32_t* bias, int32_t* acc, int64_t ldc);

// Requantizes one accumulator (64-bit arithmetic, s = 31 + shift, shift in [-30, 31]):
//   y = (acc * multiplier + 2^(s - 1)) >> s            (arithmetic shift: rounds half up)
//   return clamp(y + out_zero_point, relu ? max(lo, out_zero_point) : lo, hi)
// [lo, hi] is the output range: [0, 255] for uint8, [-128, 127] for int8.
int32_t requantize_scalar(int32_t acc, int32_t multiplier, int32_t shift,
                          int32_t out_zero_point, int32_t lo, int32_t hi, bool relu);

}  // namespace cpu
}  // namespace needle
