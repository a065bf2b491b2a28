// Float32 elementwise math, reductions and dtype conversion of the CPU backend.
//
// Plain loops over contiguous arrays that the compiler auto-vectorizes at baseline flags; long
// loops are split over OpenMP threads. Callers validate sizes and dtypes first.
#pragma once
#include <cstdint>

#include "array.h"

namespace needle {
namespace cpu {

enum class BinaryOp { kAdd, kMul, kDiv, kMaximum, kEq, kGe, kPower };
enum class UnaryOp { kLog, kExp, kTanh };

// out[i] = op(a[i], b[i])
void ewise_binary(BinaryOp op, const float* a, const float* b, float* out, int64_t n);
// out[i] = op(a[i], val)
void scalar_binary(BinaryOp op, const float* a, float val, float* out, int64_t n);
// out[i] = op(a[i])
void ewise_unary(UnaryOp op, const float* a, float* out, int64_t n);

// out[i] = max / sum of a[i * r .. i * r + r), for i < outer. max propagates NaN; sum
// accumulates in float64.
void reduce_max(const float* a, float* out, int64_t outer, int64_t r);
void reduce_sum(const float* a, float* out, int64_t outer, int64_t r);

// n elements from src (dtype sd) to dst (dtype dd): float -> int rounds half to even and
// saturates (NaN -> 0); int -> int saturates; int -> float rounds to nearest.
void convert(const void* src, DType sd, void* dst, DType dd, int64_t n);

}  // namespace cpu
}  // namespace needle
