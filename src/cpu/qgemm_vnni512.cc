// Int8 GEMM kernel for AVX-512 VNNI: vpdpbusd multiplies 4 uint8 x 4 int8 per 32-bit lane and
// adds them to the int32 accumulator, 64 multiply-adds per instruction.
#include "qgemm_internal.h"

#if NEEDLE_QGEMM_X86
#include "qgemm_avx512_common.h"

NEEDLE_TARGET_PUSH("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

struct Vnni512 : VectorTraits {
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
  static constexpr int kPeakOps = 2 * 64;
  static C peak_step(C c) {
    return _mm512_dpbusd_epi32(c, _mm512_set1_epi32(0x01020304), _mm512_set1_epi32(0x01FF0102));
  }
};

#include "qgemm_kernel.h"
#include "qgemm_epilogue_avx512.h"

}  // namespace

const QgemmKernel kQgemmVnni512 = {block_impl<Vnni512, epilogue_avx512>, peak_loop<Vnni512>};

double fma_loop_avx512(int64_t iters) {
  return peak_chains(iters, _mm512_set1_ps(0.5f), 2.0 * 16, [](__m512 c) {
    return _mm512_fmadd_ps(c, _mm512_set1_ps(0.999f), _mm512_set1_ps(1e-6f));
  });
}

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

NEEDLE_TARGET_POP
#endif  // NEEDLE_QGEMM_X86
