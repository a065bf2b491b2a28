// Int8 GEMM kernel for AVX-VNNI: the VEX-encoded 256-bit vpdpbusd (8 output channels per
// vector, two vectors per 16-channel panel), for CPUs with VNNI but without AVX-512.
#include "qgemm_internal.h"

#if NEEDLE_QGEMM_X86
#include <immintrin.h>

// Vector-typed helpers stay inside this file; the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

NEEDLE_TARGET_PUSH("avx2,fma,avxvnni")

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Vnni256 : VectorTraits {
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
  static constexpr int kPeakOps = 2 * 32;
  static C peak_step(C c) {
    return _mm256_dpbusd_avx_epi32(c, _mm256_set1_epi32(0x01020304), _mm256_set1_epi32(0x01FF0102));
  }
};

#include "qgemm_kernel.h"

}  // namespace

const QgemmKernel kQgemmAvxVnni = {block_impl<Vnni256, epilogue_scalar>, peak_loop<Vnni256>};

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

NEEDLE_TARGET_POP
#endif  // NEEDLE_QGEMM_X86
