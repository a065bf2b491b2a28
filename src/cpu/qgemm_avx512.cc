// Int8 GEMM kernel for AVX-512BW without VNNI. vpmaddubsw would saturate (two u8 x s8
// products can exceed int16), so each 32-bit lane [w0 w1 w2 w3] is split into 16-bit even
// (w0, w2) and odd (w1, w3) halves, sign-extended, and vpmaddwd forms exact int32 pair sums:
// the lane receives a0*w0 + a2*w2 + a1*w1 + a3*w3, the same as vpdpbusd.
#include "qgemm_internal.h"

#if NEEDLE_QGEMM_X86
#include "qgemm_avx512_common.h"

NEEDLE_TARGET_PUSH("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Widen512 : VectorTraits {
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
  // vpmaddwd + vpaddd (32 multiply-adds); the accumulator is also a multiplicand
  static constexpr int kPeakOps = 2 * 32;
  static C peak_step(C c) { return _mm512_add_epi32(c, _mm512_madd_epi16(_mm512_set1_epi16(3), c)); }
};

#include "qgemm_kernel.h"
#include "qgemm_epilogue_avx512.h"

}  // namespace

const QgemmKernel kQgemmAvx512 = {block_impl<Widen512, epilogue_avx512>, peak_loop<Widen512>};

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

NEEDLE_TARGET_POP
#endif  // NEEDLE_QGEMM_X86
