// Int8 GEMM kernel for AVX-512 VNNI: vpdpbusd multiplies 4 uint8 x 4 int8 per 32-bit lane and
// adds them to the int32 accumulator, 64 multiply-adds per instruction.
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
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Vnni512 {
  using C = __m512i;
  using AP = __m512i;
  using BP = __m512i;
  static constexpr int kLanes = 16, kMR = 6, kMaxNP = 4;
  static C zero() { return _mm512_setzero_si512(); }
  static C load_c(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store_c(int32_t* p, C c) { _mm512_storeu_si512(p, c); }
  static AP bcast(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm512_set1_epi32(x);
  }
  static BP load_b(const int8_t* p) { return _mm512_loadu_si512(p); }
  static C dot(C c, AP a, BP b) { return _mm512_dpbusd_epi32(c, a, b); }
};

#include "qgemm_kernel.h"
#include "qgemm_epilogue_avx512.h"

}  // namespace

void block_vnni512(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc, int64_t n0,
                   int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile) {
  block_impl<Vnni512>(g, ep, m0, mc, n0, nc, apack, cbuf, tile, epilogue_avx512);
}

double peak_loop_vnni512(int64_t iters) {
  __m512i acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_epi32(j);
  __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x01FF0102);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
    __asm__ volatile("" : "+v"(a));
  }
  __m512i s = acc[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_epi32(s, acc[j]);
  int lanes[16];
  _mm512_storeu_si512(lanes, s);
  volatile int sink = lanes[0];
  (void)sink;
  return 2.0 * 64 * 16 * static_cast<double>(iters);
}

double fma_loop_avx512(int64_t iters) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(0.001f * j);
  __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-6f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    __asm__ volatile("" : "+v"(a));
  }
  __m512 s = acc[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, acc[j]);
  float lanes[16];
  _mm512_storeu_ps(lanes, s);
  volatile float sink = lanes[0];
  (void)sink;
  return 2.0 * 16 * 16 * static_cast<double>(iters);
}

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64: the dispatcher never selects this path
#include <stdexcept>
namespace needle {
namespace cpu {
namespace qgemm_detail {
void block_vnni512(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                   uint8_t*, int32_t*, uint8_t*) {
  throw std::runtime_error("AVX-512 VNNI int8 GEMM is not available on this platform");
}
double peak_loop_vnni512(int64_t) { return 0; }
double fma_loop_avx512(int64_t) { return 0; }
}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
#endif
