// Int8 GEMM kernel for AVX2: the exact 16-bit widening scheme of qgemm_avx512.cc on 256-bit
// vectors (8 output channels per vector, two vectors per 16-channel panel).
#include "qgemm_internal.h"

#if NEEDLE_QGEMM_X86
#include <immintrin.h>

// Vector-typed helpers stay inside this file; the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

NEEDLE_TARGET_PUSH("avx2,fma")

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Widen256 : VectorTraits {
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
  // vpmaddwd + vpaddd (16 multiply-adds); the accumulator is also a multiplicand
  static constexpr int kPeakOps = 2 * 16;
  static C peak_step(C c) { return _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_set1_epi16(3), c)); }
};

#include "qgemm_kernel.h"

}  // namespace

const QgemmKernel kQgemmAvx2 = {block_impl<Widen256, epilogue_scalar>, peak_loop<Widen256>};

double fma_loop_avx2(int64_t iters) {
  return peak_chains(iters, _mm256_set1_ps(0.5f), 2.0 * 8, [](__m256 c) {
    return _mm256_fmadd_ps(c, _mm256_set1_ps(0.999f), _mm256_set1_ps(1e-6f));
  });
}

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

NEEDLE_TARGET_POP
#endif  // NEEDLE_QGEMM_X86
