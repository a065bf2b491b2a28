// Int8 GEMM kernel for AMX-INT8 (Sapphire Rapids and later): tdpbusd multiplies a 16 x 64
// uint8 tile by a 64 x 16 int8 tile (stored as 16 rows of 16 x 4 bytes, the packed panel
// layout) into a 16 x 16 int32 tile: 16,384 multiply-adds per instruction. The tile sequence
// is qgemm_amx_tiles.h (shared with the portable model); the epilogue is the AVX-512 one.
// Chosen only when cpu_features reports AMX usable (CPUID, XCR0, and the Linux permission).
#include "qgemm_internal.h"

#if NEEDLE_QGEMM_X86
#include "qgemm_avx512_common.h"

NEEDLE_TARGET_PUSH("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

#include "qgemm_kernel.h"
#include "qgemm_amx_tiles.h"
#include "qgemm_epilogue_avx512.h"

// The tile instructions. Tile numbers are immediates (%c: the constant without '$'); the
// memory clobbers keep the compiler's loads and stores of the buffers in program order.
struct TileHw {
  static void configure(const TileConfig& cfg) { __asm__ volatile("ldtilecfg %0" ::"m"(cfg)); }
  static void release() { __asm__ volatile("tilerelease" ::: "memory"); }
  template <int t>
  static void load(const void* p, int64_t stride) {
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(p), "r"(stride), "i"(t) : "memory");
  }
  template <int t>
  static void store(void* p, int64_t stride) {
    __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(p), "r"(stride), "i"(t) : "memory");
  }
  template <int t>
  static void zero() {
    __asm__ volatile("tilezero %%tmm%c0" ::"i"(t));
  }
  template <int tc, int ta, int tb>
  static void dp() {
    __asm__ volatile("tdpbusd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(tc), "i"(ta), "i"(tb));
  }
};

// Four independent tdpbusd chains on operand tiles loaded once.
double peak_loop_amx(int64_t iters) {
  alignas(64) static const uint8_t ones[16 * 64] = {};
  AmxTraits<TileHw>::begin();
  TileHw::load<4>(ones, 64);
  TileHw::load<5>(ones, 64);
  TileHw::load<6>(ones, 64);
  TileHw::load<7>(ones, 64);
  TileHw::zero<0>();
  TileHw::zero<1>();
  TileHw::zero<2>();
  TileHw::zero<3>();
  for (int64_t i = 0; i < iters; ++i) {
    TileHw::dp<0, 4, 6>();
    TileHw::dp<1, 4, 7>();
    TileHw::dp<2, 5, 6>();
    TileHw::dp<3, 5, 7>();
  }
  AmxTraits<TileHw>::end();
  return 2.0 * 16 * 16 * 64 * 4 * static_cast<double>(iters);
}

}  // namespace

const QgemmKernel kQgemmAmx = {block_impl<AmxTraits<TileHw>, epilogue_avx512>, peak_loop_amx};

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle

NEEDLE_TARGET_POP
#endif  // NEEDLE_QGEMM_X86
