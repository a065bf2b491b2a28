// Int8 GEMM kernel for AVX2: the exact 16-bit widening scheme of qgemm_avx512.cc on 256-bit
// vectors (8 output channels per vector, two vectors per 16-channel panel).
#include "qgemm_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// Vector-typed helpers stay inside this file; the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// Everything from here to the matching pop is compiled for this instruction set; the
// dispatcher calls it only when the CPU supports it.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Widen256 {
  using C = __m256i;
  struct AP { __m256i even, odd; };
  struct BP { __m256i even, odd; };
  static constexpr int kLanes = 8, kMR = 4, kMaxNP = 1;
  static C zero() { return _mm256_setzero_si256(); }
  static C load_c(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store_c(int32_t* p, C c) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), c); }
  static AP bcast(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    const __m256i v = _mm256_set1_epi32(x);
    return AP{_mm256_and_si256(v, _mm256_set1_epi16(0x00FF)), _mm256_srli_epi16(v, 8)};
  }
  static BP load_b(const int8_t* p) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return BP{_mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8), _mm256_srai_epi16(v, 8)};
  }
  static C dot(C c, const AP& a, const BP& b) {
    c = _mm256_add_epi32(c, _mm256_madd_epi16(a.even, b.even));
    return _mm256_add_epi32(c, _mm256_madd_epi16(a.odd, b.odd));
  }
};

#include "qgemm_kernel.h"

}  // namespace

void block_avx2(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc, int64_t n0,
                int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile) {
  block_impl<Widen256>(g, ep, m0, mc, n0, nc, apack, cbuf, tile, epilogue_scalar);
}

double peak_loop_avx2(int64_t iters) {
  __m256i acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_epi32(j);
  __m256i a = _mm256_set1_epi16(3);  // the accumulator is also a multiplicand: nothing hoists
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(a, acc[j]));
    __asm__ volatile("" : "+x"(a));
  }
  __m256i s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_epi32(s, acc[j]);
  volatile int sink = _mm256_extract_epi32(s, 0);
  (void)sink;
  return 2.0 * 16 * 12 * static_cast<double>(iters);
}

double fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(0.001f * j);
  __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    __asm__ volatile("" : "+x"(a));
  }
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  float out[8];
  _mm256_storeu_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return 2.0 * 8 * 12 * static_cast<double>(iters);
}

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
#include <stdexcept>
namespace needle {
namespace cpu {
namespace qgemm_detail {
void block_avx2(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                uint8_t*, int32_t*, uint8_t*) {
  throw std::runtime_error("AVX2 int8 GEMM is not available on this platform");
}
double peak_loop_avx2(int64_t) { return 0; }
double fma_loop_avx2(int64_t) { return 0; }
}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
#endif
