// Int8 GEMM kernel for AVX-VNNI: the VEX-encoded 256-bit vpdpbusd (8 output channels per
// vector, two vectors per 16-channel panel), for CPUs with VNNI but without AVX-512.
#include "qgemm_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// Vector-typed helpers stay inside this file; the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// Everything from here to the matching pop is compiled for this instruction set; the
// dispatcher calls it only when the CPU supports it.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avxvnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avxvnni")
#endif

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Vnni256 {
  using C = __m256i;
  using AP = __m256i;
  using BP = __m256i;
  static constexpr int kLanes = 8, kMR = 6, kMaxNP = 1;
  static C zero() { return _mm256_setzero_si256(); }
  static C load_c(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store_c(int32_t* p, C c) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), c); }
  static AP bcast(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm256_set1_epi32(x);
  }
  static BP load_b(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static C dot(C c, AP a, BP b) { return _mm256_dpbusd_avx_epi32(c, a, b); }
};

#include "qgemm_kernel.h"

}  // namespace

void block_avxvnni(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc, int64_t n0,
                   int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile) {
  block_impl<Vnni256>(g, ep, m0, mc, n0, nc, apack, cbuf, tile, epilogue_scalar);
}

double peak_loop_avxvnni(int64_t iters) {
  __m256i acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_epi32(j);
  __m256i a = _mm256_set1_epi32(0x01020304), b = _mm256_set1_epi32(0x01FF0102);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_dpbusd_avx_epi32(acc[j], a, b);
    __asm__ volatile("" : "+x"(a));
  }
  __m256i s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_epi32(s, acc[j]);
  volatile int sink = _mm256_extract_epi32(s, 0);
  (void)sink;
  return 2.0 * 32 * 12 * static_cast<double>(iters);
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
void block_avxvnni(const QgemmArgs&, const QEpilogue&, int64_t, int64_t, int64_t, int64_t,
                   uint8_t*, int32_t*, uint8_t*) {
  throw std::runtime_error("AVX-VNNI int8 GEMM is not available on this platform");
}
double peak_loop_avxvnni(int64_t) { return 0; }
}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
#endif
