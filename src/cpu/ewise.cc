// Float32 elementwise math, reductions and dtype conversion (see ewise.h).
#include "ewise.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "parallel.h"

namespace needle {
namespace cpu {

namespace {

// The loops below are written so GCC/Clang vectorize them at -O3 (no calls, no branches that
// cannot become blends); the `if` clause keeps short loops on one thread.
template <typename F>
void map2(const float* a, const float* b, float* out, int64_t n, F f) {
#pragma omp parallel for if (n >= kParallelMinElements) num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
}

template <typename F>
void map1(const float* a, float* out, int64_t n, F f) {
#pragma omp parallel for if (n >= kParallelMinElements) num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = f(a[i]);
}

// max that propagates NaN from either side, as numpy.maximum does.
inline float nan_max(float x, float y) { return ((x > y) | (x != x)) ? x : y; }  // bitwise: vectorizes

template <typename F>
void apply_binary(BinaryOp op, F&& run) {
  switch (op) {
    case BinaryOp::kAdd: return run([](float x, float y) { return x + y; });
    case BinaryOp::kMul: return run([](float x, float y) { return x * y; });
    case BinaryOp::kDiv: return run([](float x, float y) { return x / y; });
    case BinaryOp::kMaximum: return run([](float x, float y) { return nan_max(x, y); });
    case BinaryOp::kEq: return run([](float x, float y) { return x == y ? 1.0f : 0.0f; });
    case BinaryOp::kGe: return run([](float x, float y) { return x >= y ? 1.0f : 0.0f; });
    case BinaryOp::kPower: return run([](float x, float y) { return std::pow(x, y); });
  }
}

// Saturating conversions. Comparisons are done in double, where every int32 bound is exact.
template <typename D>
inline D to_int_saturated(double x) {
  constexpr double lo = static_cast<double>(std::numeric_limits<D>::min());
  constexpr double hi = static_cast<double>(std::numeric_limits<D>::max());
  if (x != x) return D(0);
  if (x <= lo) return std::numeric_limits<D>::min();
  if (x >= hi) return std::numeric_limits<D>::max();
  return static_cast<D>(x);
}

#if defined(__SSE2__)
// Four floats -> D, equal to to_int_saturated<D>(nearbyint(x)) for every float x (the scalar
// nearbyint is a library call, ~1 ns an element). cvtps2dq rounds half to even (the default
// MXCSR mode, as nearbyint) and gives INT32_MIN for NaN and out-of-range inputs; NaN -> 0 and
// x >= 2^31 -> INT32_MAX are patched in. For int8/uint8, clamping to [lo, hi] before
// rounding equals clamping after it, since the bounds are integers.
template <typename D>
inline void float_to_int4(const float* src, D* dst) {
  const __m128 x = _mm_loadu_ps(src);
  const __m128 nan = _mm_cmpunord_ps(x, x);
  if constexpr (std::is_same<D, int32_t>::value) {
    const __m128 big = _mm_cmpge_ps(x, _mm_set1_ps(2147483648.0f));
    __m128i v = _mm_cvtps_epi32(x);
    v = _mm_or_si128(_mm_andnot_si128(_mm_castps_si128(big), v),
                     _mm_and_si128(_mm_castps_si128(big), _mm_set1_epi32(INT32_MAX)));
    v = _mm_andnot_si128(_mm_castps_si128(nan), v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), v);
  } else {
    const __m128 lo = _mm_set1_ps(static_cast<float>(std::numeric_limits<D>::min()));
    const __m128 hi = _mm_set1_ps(static_cast<float>(std::numeric_limits<D>::max()));
    const __m128 c = _mm_min_ps(_mm_max_ps(x, lo), hi);  // NaN becomes lo, masked below
    __m128i v = _mm_andnot_si128(_mm_castps_si128(nan), _mm_cvtps_epi32(c));
    v = _mm_packs_epi32(v, v);  // values are in range: the packs do not saturate
    v = std::is_same<D, int8_t>::value ? _mm_packs_epi16(v, v) : _mm_packus_epi16(v, v);
    const int32_t four = _mm_cvtsi128_si32(v);
    std::memcpy(dst, &four, 4);
  }
}
#endif

// Elements per OpenMP chunk of the float -> integer conversion (a multiple of 4).
constexpr int64_t kConvertBlock = 4096;

template <typename S, typename D>
void convert_typed(const S* src, D* dst, int64_t n) {
  if constexpr (std::is_same<S, D>::value) {
    std::memcpy(dst, src, sizeof(S) * n);
  } else if constexpr (std::is_same<D, float>::value) {
#pragma omp parallel for if (n >= kParallelMinElements) num_threads(num_threads()) schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<D>(src[i]);
  } else if constexpr (std::is_same<S, float>::value) {
#pragma omp parallel for if (n >= kParallelMinElements) num_threads(num_threads()) schedule(static)
    for (int64_t b = 0; b < n; b += kConvertBlock) {
      const int64_t e = b + kConvertBlock < n ? b + kConvertBlock : n;
      int64_t i = b;
#if defined(__SSE2__)
      for (; i + 4 <= e; i += 4) float_to_int4(src + i, dst + i);
#endif
      // std::nearbyint rounds half to even in the default rounding mode.
      for (; i < e; ++i) dst[i] = to_int_saturated<D>(std::nearbyint(static_cast<double>(src[i])));
    }
  } else {
#pragma omp parallel for if (n >= kParallelMinElements) num_threads(num_threads()) schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = to_int_saturated<D>(static_cast<double>(src[i]));
  }
}

template <typename S>
void convert_from(const S* src, void* dst, DType dd, int64_t n) {
  switch (dd) {
    case DType::kFloat32: return convert_typed(src, static_cast<float*>(dst), n);
    case DType::kInt8: return convert_typed(src, static_cast<int8_t*>(dst), n);
    case DType::kUint8: return convert_typed(src, static_cast<uint8_t*>(dst), n);
    case DType::kInt32: return convert_typed(src, static_cast<int32_t*>(dst), n);
  }
}

// max of row[0 .. r), NaN when any element is NaN (as numpy). GCC does not vectorize a float
// max reduction without -ffast-math, so the SSE2 path (x86-64 baseline) is written by hand.
float row_max(const float* row, int64_t r) {
  int64_t j = 0;
  float best = row[0];
  bool nan = false;
#if defined(__SSE2__)
  if (r >= 8) {
    __m128 m0 = _mm_set1_ps(row[0]), m1 = m0, bad = _mm_setzero_ps();
    for (; j + 8 <= r; j += 8) {
      const __m128 x0 = _mm_loadu_ps(row + j), x1 = _mm_loadu_ps(row + j + 4);
      m0 = _mm_max_ps(x0, m0);  // a NaN x leaves m unchanged; it is caught by `bad`
      m1 = _mm_max_ps(x1, m1);
      bad = _mm_or_ps(bad, _mm_or_ps(_mm_cmpunord_ps(x0, x0), _mm_cmpunord_ps(x1, x1)));
    }
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, _mm_max_ps(m0, m1));
    for (float v : lanes) best = v > best ? v : best;
    nan = _mm_movemask_ps(bad) != 0;
  }
#endif
  for (; j < r; ++j) {
    best = row[j] > best ? row[j] : best;
    nan |= row[j] != row[j];
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : best;
}

}  // namespace

void ewise_binary(BinaryOp op, const float* a, const float* b, float* out, int64_t n) {
  apply_binary(op, [&](auto f) { map2(a, b, out, n, f); });
}

void scalar_binary(BinaryOp op, const float* a, float val, float* out, int64_t n) {
  if (op == BinaryOp::kPower && val == 2.0f)  // x ** 2 (variances): exact, and it vectorizes
    return map1(a, out, n, [](float x) { return x * x; });
  if (op == BinaryOp::kPower && val == 0.5f)  // x ** 0.5 as numpy does it: correctly rounded sqrt
    return map1(a, out, n, [](float x) { return std::sqrt(x); });
  apply_binary(op, [&](auto f) { map1(a, out, n, [f, val](float x) { return f(x, val); }); });
}

void ewise_unary(UnaryOp op, const float* a, float* out, int64_t n) {
  switch (op) {
    case UnaryOp::kLog: return map1(a, out, n, [](float x) { return std::log(x); });
    case UnaryOp::kExp: return map1(a, out, n, [](float x) { return std::exp(x); });
    case UnaryOp::kTanh: return map1(a, out, n, [](float x) { return std::tanh(x); });
  }
}

void reduce_max(const float* a, float* out, int64_t outer, int64_t r) {
#pragma omp parallel for if (outer * r >= kParallelMinElements && outer > 1) num_threads(num_threads())
  for (int64_t i = 0; i < outer; ++i) {
    out[i] = row_max(a + i * r, r);
  }
}

void reduce_sum(const float* a, float* out, int64_t outer, int64_t r) {
#pragma omp parallel for if (outer * r >= kParallelMinElements && outer > 1) num_threads(num_threads())
  for (int64_t i = 0; i < outer; ++i) {
    const float* row = a + i * r;
    // Eight independent float64 partial sums: exact enough, and the loop vectorizes.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= r; j += 8)
      for (int l = 0; l < 8; ++l) acc[l] += row[j + l];
    double s = 0;
    for (; j < r; ++j) s += row[j];
    for (int l = 0; l < 8; ++l) s += acc[l];
    out[i] = static_cast<float>(s);
  }
}

void convert(const void* src, DType sd, void* dst, DType dd, int64_t n) {
  switch (sd) {
    case DType::kFloat32: return convert_from(static_cast<const float*>(src), dst, dd, n);
    case DType::kInt8: return convert_from(static_cast<const int8_t*>(src), dst, dd, n);
    case DType::kUint8: return convert_from(static_cast<const uint8_t*>(src), dst, dd, n);
    case DType::kInt32: return convert_from(static_cast<const int32_t*>(src), dst, dd, n);
  }
}

}  // namespace cpu
}  // namespace needle
