// Int8 GEMM kernel for AVX-512BW without VNNI. vpmaddubsw would saturate (two u8 x s8
// products can exceed int16), so each 32-bit lane [w0 w1 w2 w3] is split into 16-bit even
// (w0, w2) and odd (w1, w3) halves, sign-extended, and vpmaddwd forms exact int32 pair sums:
// the lane receives a0*w0 + a2*w2 + a1*w1 + a3*w3, the same as vpdpbusd.
#include "qgemm_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// Vector-typed helpers stay inside this file; the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12's AVX-512 headers build 256-bit halves from _mm256_undefined_si256(), which -O3 -Wall
// reports as maybe-uninitialized (a false positive in the library header).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Everything from here to the matching pop is compiled for this instruction set; the
// dispatcher calls it only when the CPU supports it.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
#endif

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Widen512 {
  using C = __m512i;
  struct AP { __m512i even, odd; };
  struct BP { __m512i even, odd; };
  static constexpr int kLanes = 16, kMR = 6, kMaxNP = 2;
  static C zero() { return _mm512_setzero_si512(); }
  static C load_c(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store_c(int32_t* p, C c) { _mm512_storeu_si512(p, c); }
  static AP bcast(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    const __m512i v = _mm512_set1_epi32(x);
    return AP{_mm512_and_si512(v, _mm512_set1_epi16(0x00FF)), _mm512_srli_epi16(v, 8)};
  }
  static BP load_b(const int8_t* p) {
    const __m512i v = _mm512_loadu_si512(p);
    return BP{_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8), _mm512_srai_epi16(v, 8)};
  }
  static C dot(C c, const AP& a, const BP& b) {
    c = _mm512_add_epi32(c, _mm512_madd_epi16(a.even, b.even));
    return _mm512_add_epi32(c, _mm512_madd_epi16(a.odd, b.odd));
  }
};

#include "qgemm_kernel.h"
#include "qgemm_epilogue_avx512.h"

}  // namespace

void block_avx512(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc, int64_t n0,
                  int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile) {
  block_impl<Widen512>(g, ep, m0, mc, n0, nc, apack, cbuf, tile, epilogue_avx512);
}

double peak_loop_avx512(int64_t iters) {
  __m512i acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_epi32(j);
  __m512i a = _mm512_set1_epi16(3);  // the accumulator is also a multiplicand: nothing hoists
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_add_epi32(acc[j], _mm512_madd_epi16(a, acc[j]));
    __asm__ volatile("" : "+v"(a));
  }
  __m512i s = acc[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_epi32(s, acc[j]);
  int lanes[16];
  _mm512_storeu_si512(lanes, s);
  volatile int sink = lanes[0];
  (void)sink;
  return 2.0 * 32 * 16 * static_cast<double>(iters);
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
void block_avx512(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                  uint8_t*, int32_t*, uint8_t*) {
  throw std::runtime_error("AVX-512 int8 GEMM is not available on this platform");
}
double peak_loop_avx512(int64_t) { return 0; }
}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
#endif
