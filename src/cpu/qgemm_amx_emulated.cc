// The AMX path on a portable C++ model of the tile instructions (`_qgemm_isa("amx-emulated")`):
// the same driver, packing, tile sequence and epilogue as qgemm_amx.cc, so its bit-exactness
// against the reference can be tested on any CPU. The model follows the instructions'
// definitions (ldtilecfg / tilerelease, tileloadd / tilestored row by row, tilezero, tdpbusd
// with int32 wrap-around) and checks that every tile is used as configured, as the hardware
// would fault otherwise.
#include <stdexcept>

#include "qgemm_internal.h"

namespace needle {
namespace cpu {
namespace qgemm_detail {
namespace {

#include "qgemm_kernel.h"
#include "qgemm_amx_tiles.h"

struct TileModel {
  struct State {
    bool configured = false;
    TileConfig cfg;
    uint8_t data[8][16][64];
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  static void need(bool ok, const char* what) {
    if (!ok) throw std::logic_error(std::string("AMX model: ") + what);
  }
  static void configure(const TileConfig& cfg) {
    need(cfg.palette == 1, "palette must be 1");
    for (int t = 0; t < 8; ++t) need(cfg.rows[t] <= 16 && cfg.colsb[t] <= 64, "tile too large");
    state().cfg = cfg;
    state().configured = true;
  }
  static void release() { state().configured = false; }
  template <int t>
  static void load(const void* p, int64_t stride) {
    State& s = state();
    need(s.configured, "tileloadd before ldtilecfg");
    for (int r = 0; r < s.cfg.rows[t]; ++r)
      std::memcpy(s.data[t][r], static_cast<const uint8_t*>(p) + r * stride, s.cfg.colsb[t]);
  }
  template <int t>
  static void store(void* p, int64_t stride) {
    State& s = state();
    need(s.configured, "tilestored before ldtilecfg");
    for (int r = 0; r < s.cfg.rows[t]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, s.data[t][r], s.cfg.colsb[t]);
  }
  template <int t>
  static void zero() {
    need(state().configured, "tilezero before ldtilecfg");
    std::memset(state().data[t], 0, sizeof(state().data[t]));
  }
  template <int tc, int ta, int tb>
  static void dp() {
    State& s = state();
    const TileConfig& c = s.cfg;
    need(s.configured, "tdpbusd before ldtilecfg");
    // shapes: C is M x N dwords, A is M x K*4 bytes, B is K rows x N dwords
    const int m = c.rows[tc], n = c.colsb[tc] / 4, kq = c.colsb[ta] / 4;
    need(c.rows[ta] == m && c.rows[tb] == kq && c.colsb[tb] / 4 == n, "tile shapes disagree");
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        uint32_t acc;
        std::memcpy(&acc, s.data[tc][i] + 4 * j, 4);
        for (int q = 0; q < kq; ++q)
          for (int e = 0; e < 4; ++e)
            acc += static_cast<uint32_t>(int32_t{s.data[ta][i][4 * q + e]} *
                                         int32_t{static_cast<int8_t>(s.data[tb][q][4 * j + e])});
        std::memcpy(s.data[tc][i] + 4 * j, &acc, 4);
      }
  }
};

}  // namespace

const QgemmKernel kQgemmAmxEmulated = {block_impl<AmxTraits<TileModel>, epilogue_scalar>,
                                       nullptr};

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
