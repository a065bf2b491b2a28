// Int8 GEMM: weight packing, activation packing, the portable kernel, the epilogue and the
// run-time dispatcher (see qgemm.h for the math and the layouts).
#include "qgemm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "parallel.h"
#include "qgemm_internal.h"
#include "qgemm_pool.h"

namespace needle {
namespace cpu {
namespace qgemm_detail {

// The portable path, kQgemmScalar, is in qgemm_scalar.cc (the course's C++ exercise); each
// fast path's kernel is in its qgemm_<isa>.cc.

// ---- packing and epilogue -------------------------------------------------------------------
void conv_tile(const QgemmArgs& g, int64_t m0, int64_t mc, uint8_t* tile) {
  // Geometry in locals: byte stores may alias anything, so fields read through a pointer
  // would be reloaded after every store.
  const QConvGeom cv = *g.conv;
  const int64_t c = cv.c, h = cv.h, w = cv.w, kh = cv.kh, kw = cv.kw, k = g.k;
  const int64_t kp = round_up(k, kQKGroup);
  const uint8_t flip = g.a_type == QType::kInt8 ? 0x80 : 0;
  const uint8_t pad = static_cast<uint8_t>(cv.pad_value) ^ flip;
  const uint8_t* x = static_cast<const uint8_t*>(g.a);
  const int64_t run = kw * c;
  int64_t n = m0 / (cv.ho * cv.wo), oh = (m0 % (cv.ho * cv.wo)) / cv.wo, ow = m0 % cv.wo;
  for (int64_t r = 0; r < mc; ++r) {
    uint8_t* d = tile + r * kp;
    const uint8_t* img = x + n * h * w * c;
    const int64_t ih0 = oh * cv.stride - cv.pad, iw0 = ow * cv.stride - cv.pad;
    const bool inside = ih0 >= 0 && iw0 >= 0 && ih0 + kh <= h && iw0 + kw <= w;
    for (int64_t th = 0; th < kh; ++th) {
      const int64_t ih = ih0 + th;
      if (inside && !flip) {  // the whole kernel row is one contiguous run of kw * c bytes
        const uint8_t* src = img + (ih * w + iw0) * c;
        if (run <= 16) {  // small runs (a 3x3 kernel on 1 channel): no library call per row
          for (int64_t j = 0; j < run; ++j) d[j] = src[j];
        } else {
          std::memcpy(d, src, static_cast<size_t>(run));
        }
        d += run;
        continue;
      }
      for (int64_t tw = 0; tw < kw; ++tw, d += c) {
        const int64_t iw = iw0 + tw;
        if (ih < 0 || ih >= h || iw < 0 || iw >= w) {
          std::memset(d, pad, static_cast<size_t>(c));
          continue;
        }
        const uint8_t* src = img + (ih * w + iw) * c;
        for (int64_t j = 0; j < c; ++j) d[j] = src[j] ^ flip;
      }
    }
    for (int64_t j = k; j < kp; ++j) d[j - k] = 0;  // k padding (d is at row + k here)
    if (++ow == cv.wo) {
      ow = 0;
      if (++oh == cv.ho) {
        oh = 0;
        ++n;
      }
    }
  }
}

void pack_a(const QgemmArgs& g, int64_t m0, int64_t mc, int64_t k0, int64_t kc, int mr,
            uint8_t* dst) {
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  const uint32_t flip = g.a_type == QType::kInt8 ? 0x80808080u : 0u;
  const int64_t kq = kc / kQKGroup;
  const int64_t kfull = std::max<int64_t>(0, std::min(kc, g.k - k0)) / kQKGroup;  // whole groups
  const int64_t panels = (mc + mr - 1) / mr;
  for (int64_t p = 0; p < panels; ++p) {
    uint8_t* pd = dst + p * kq * mr * kQKGroup;
    for (int r = 0; r < mr; ++r) {
      const int64_t i = m0 + p * mr + r;
      uint8_t* d = pd + r * kQKGroup;
      const int64_t stride = mr * kQKGroup;
      if (i >= m0 + mc) {
        for (int64_t q = 0; q < kq; ++q) std::memset(d + q * stride, 0, kQKGroup);
        continue;
      }
      const uint8_t* row = a + i * g.k + k0;
      int64_t q = 0;
      for (; q < kfull; ++q) {
        uint32_t v;
        std::memcpy(&v, row + q * kQKGroup, 4);
        v ^= flip;
        std::memcpy(d + q * stride, &v, 4);
      }
      for (; q < kq; ++q) {  // the k tail (zero padded) and padding groups
        const int64_t have = std::min<int64_t>(std::max<int64_t>(g.k - k0 - q * kQKGroup, 0), 4);
        uint32_t v = 0;
        for (int64_t j = 0; j < have; ++j)
          v |= static_cast<uint32_t>(row[q * kQKGroup + j] ^ (flip & 0xFF)) << (8 * j);
        std::memcpy(d + q * stride, &v, 4);
      }
    }
  }
}

void pack_a_rows(const QgemmArgs& g, const uint8_t* conv_rows, int64_t m0, int64_t mc,
                 int64_t k0, int64_t kc, int64_t ld, uint8_t* dst) {
  const int64_t have = std::max<int64_t>(0, std::min(kc, g.k - k0));  // real bytes per row
  const int64_t kp = round_up(g.k, kQKGroup);
  const bool flip = g.a_type == QType::kInt8 && conv_rows == nullptr;  // tiles are uint8 already
  for (int64_t r = 0; r < mc; ++r) {
    uint8_t* d = dst + r * ld;
    const uint8_t* src = conv_rows ? conv_rows + r * kp + k0
                                   : static_cast<const uint8_t*>(g.a) + (m0 + r) * g.k + k0;
    if (flip)
      for (int64_t j = 0; j < have; ++j) d[j] = src[j] ^ 0x80;
    else
      std::memcpy(d, src, static_cast<size_t>(have));
    std::memset(d + have, 0, static_cast<size_t>(ld - have));
  }
}

namespace {
// Rows of one output type. Everything in locals: byte stores may alias anything, so fields
// read through `ep` would be reloaded after every store.
template <class Out>
void epilogue_rows(const QEpilogue& ep, const int32_t* cbuf, int64_t m0, int64_t mc, int64_t n0,
                   int64_t nc) {
  const int64_t* offset = ep.offset + n0;
  const int32_t* mult = ep.mult + n0;
  const int32_t* shift = ep.total_shift + n0;
  const int64_t* round = ep.round + n0;
  const int64_t lo = ep.lo, hi = ep.hi, zp = ep.zp, ldo = ep.n;
  Out* out = static_cast<Out*>(ep.out) + m0 * ldo + n0;
  for (int64_t r = 0; r < mc; ++r) {
    const int32_t* crow = cbuf + r * kNC;
    Out* orow = out + r * ldo;
    for (int64_t j = 0; j < nc; ++j) {
      int64_t acc = static_cast<int64_t>(crow[j]) + offset[j];
      acc = std::min<int64_t>(std::max<int64_t>(acc, INT32_MIN), INT32_MAX);
      if constexpr (std::is_same<Out, int32_t>::value) {
        orow[j] = static_cast<int32_t>(acc);
      } else {
        const int64_t y = ((acc * mult[j] + round[j]) >> shift[j]) + zp;
        orow[j] = static_cast<Out>(std::min<int64_t>(std::max<int64_t>(y, lo), hi));
      }
    }
  }
}
}  // namespace

void epilogue_scalar(const QEpilogue& ep, const int32_t* cbuf, int64_t m0, int64_t mc,
                     int64_t n0, int64_t nc) {
  switch (ep.out_type) {
    case QType::kInt32: return epilogue_rows<int32_t>(ep, cbuf, m0, mc, n0, nc);
    case QType::kUint8: return epilogue_rows<uint8_t>(ep, cbuf, m0, mc, n0, nc);
    case QType::kInt8: return epilogue_rows<int8_t>(ep, cbuf, m0, mc, n0, nc);
  }
}

}  // namespace qgemm_detail

using namespace qgemm_detail;

// ---- weights --------------------------------------------------------------------------------
int64_t qpack_size(int64_t n, int64_t k) {
  return round_up(n, kQPanel) * round_up(k, kQKGroup);
}

void qpack_weights(const int8_t* w, int64_t n, int64_t k, int8_t* packed) {
  const int64_t kp = round_up(k, kQKGroup);
  const int64_t np = round_up(n, kQPanel);
  // packed[panel][q][lane][j] = w[panel*16 + lane, 4q + j], zero outside [n, k]
  for (int64_t p = 0; p < np / kQPanel; ++p) {
    int8_t* dst = packed + p * kp * kQPanel;
    for (int64_t q = 0; q < kp / kQKGroup; ++q)
      for (int64_t lane = 0; lane < kQPanel; ++lane)
        for (int64_t j = 0; j < kQKGroup; ++j) {
          const int64_t c = p * kQPanel + lane, kk = q * kQKGroup + j;
          dst[(q * kQPanel + lane) * kQKGroup + j] = (c < n && kk < k) ? w[c * k + kk] : 0;
        }
  }
}

// ---- instruction-set choice -----------------------------------------------------------------
namespace {
std::atomic<int> g_forced{-1};
}

const char* qgemm_isa_name(QgemmIsa isa) {
  switch (isa) {
    case QgemmIsa::kScalar: return "scalar";
    case QgemmIsa::kAvx2: return "avx2";
    case QgemmIsa::kAvxVnni: return "avxvnni";
    case QgemmIsa::kAvx512: return "avx512";
    case QgemmIsa::kVnni512: return "vnni";
    case QgemmIsa::kAmx: return "amx";
    case QgemmIsa::kAmxEmulated: return "amx-emulated";
  }
  return "unknown";
}

QgemmIsa qgemm_isa_from_name(const char* name) {
  const std::string s(name);
  for (int i = 0; i < kQgemmIsaCount; ++i)
    if (s == qgemm_isa_name(static_cast<QgemmIsa>(i))) return static_cast<QgemmIsa>(i);
  throw std::invalid_argument("unknown int8 GEMM path '" + s +
                              "'; expected one of scalar, avx2, avxvnni, avx512, vnni, amx, "
                              "amx-emulated");
}

namespace {
// The kernel of each path; nullptr where this build has none.
const QgemmKernel* kernel_of(QgemmIsa isa) {
  switch (isa) {
    case QgemmIsa::kScalar: return &kQgemmScalar;
    case QgemmIsa::kAmxEmulated: return &kQgemmAmxEmulated;
#if NEEDLE_QGEMM_X86
    case QgemmIsa::kAvx2: return &kQgemmAvx2;
    case QgemmIsa::kAvxVnni: return &kQgemmAvxVnni;
    case QgemmIsa::kAvx512: return &kQgemmAvx512;
    case QgemmIsa::kVnni512: return &kQgemmVnni512;
    case QgemmIsa::kAmx: return &kQgemmAmx;
#endif
    default: return nullptr;
  }
}
}  // namespace

bool qgemm_isa_supported(QgemmIsa isa) {
  if (kernel_of(isa) == nullptr) return false;
  switch (isa) {
    case QgemmIsa::kScalar: return true;
    case QgemmIsa::kAmxEmulated: return true;
    case QgemmIsa::kAvx2: return has_avx2_fma();
    case QgemmIsa::kAvxVnni: return has_avx_vnni();
    case QgemmIsa::kAvx512: return has_avx512bw();
    case QgemmIsa::kVnni512: return has_avx512_vnni();
    case QgemmIsa::kAmx: return has_amx_int8();  // (its epilogue also needs AVX-512)
  }
  return false;
}

QgemmIsa qgemm_default_isa() {
  const int forced = g_forced.load();
  if (forced >= 0) return static_cast<QgemmIsa>(forced);
  if (isa_demands_amx() && !qgemm_isa_supported(QgemmIsa::kAmx))
    throw std::runtime_error(std::string("NEEDLE_ISA=amx, but the AMX int8 path is not "
                                         "available here: ") + amx_status() +
                             ". Unset NEEDLE_ISA (or set it to vnni) to use the best other path.");
  for (QgemmIsa isa : {QgemmIsa::kAmx, QgemmIsa::kVnni512, QgemmIsa::kAvxVnni,
                       QgemmIsa::kAvx512, QgemmIsa::kAvx2})
    if (qgemm_isa_supported(isa)) return isa;
  return QgemmIsa::kScalar;
}

// Whether AMX tiles beat AVX-512 VNNI on an n x k product (one thread, Sapphire Rapids class,
// bench/README.md): a tile step reads 64 bytes of k per row and writes a 16 x 16 tile, so a
// short k or few channels leave most of each instruction unused (k = 144, 16 channels: 0.6x
// VNNI; k = 9, 8 channels: 0.4x), while k >= 512 gains 1.6-3.2x whatever the rows.
static bool amx_pays(int64_t n, int64_t k) { return k >= 512 || (k >= 256 && n >= 48); }

QgemmIsa qgemm_isa_for(int64_t n, int64_t k) {
  const QgemmIsa isa = qgemm_default_isa();
  // a forced path (tests, _qgemm_isa) and NEEDLE_ISA=amx run as asked
  if (isa != QgemmIsa::kAmx || g_forced.load() >= 0 || isa_demands_amx()) return isa;
  if (amx_pays(n, k) || !qgemm_isa_supported(QgemmIsa::kVnni512)) return isa;
  return QgemmIsa::kVnni512;
}

void qgemm_force_isa(QgemmIsa isa) {
  if (!qgemm_isa_supported(isa))
    throw std::invalid_argument(std::string("int8 GEMM path '") + qgemm_isa_name(isa) +
                                "' is not supported by this CPU (or is above NEEDLE_ISA)");
  g_forced.store(static_cast<int>(isa));
}

void qgemm_clear_forced_isa() { g_forced.store(-1); }

// ---- the driver -----------------------------------------------------------------------------
void qgemm(const QgemmArgs& g, QgemmIsa isa) {
  if (g.m <= 0 || g.n <= 0) return;
  const QgemmKernel* kernel = kernel_of(isa);
  if (kernel == nullptr)
    throw std::invalid_argument(std::string("int8 GEMM path '") + qgemm_isa_name(isa) +
                                "' is not part of this build");
  const BlockFn block = kernel->block;
  // Per-channel epilogue constants. int8 activations are fed to the kernel as x + 128.
  const int64_t zp_eff =
      static_cast<int64_t>(g.a_zero_point) + (g.a_type == QType::kInt8 ? 128 : 0);
  std::vector<int64_t> offset(g.n), round(g.n);
  std::vector<int32_t> total_shift(g.n), mult(g.n);
  for (int64_t c = 0; c < g.n; ++c) {
    offset[c] = (g.bias ? static_cast<int64_t>(g.bias[c]) : 0) -
                zp_eff * static_cast<int64_t>(g.colsum[c]);
    if (g.out_type != QType::kInt32) {
      total_shift[c] = 31 + g.shift[c];
      round[c] = int64_t{1} << (total_shift[c] - 1);
      mult[c] = g.multiplier[c];
    }
  }
  QEpilogue ep;
  ep.offset = offset.data();
  ep.mult = mult.data();
  ep.total_shift = total_shift.data();
  ep.round = round.data();
  ep.out_type = g.out_type;
  ep.out = g.out;
  ep.n = g.n;
  ep.zp = g.out_zero_point;
  ep.lo = g.out_type == QType::kUint8 ? 0 : -128;
  ep.hi = g.out_type == QType::kUint8 ? 255 : 127;
  if (g.relu) ep.lo = std::max(ep.lo, g.out_zero_point);

  const int64_t mblocks = (g.m + kMC - 1) / kMC;
  const int64_t nblocks = (g.n + kNC - 1) / kNC;
  const int64_t items = mblocks * nblocks;
  const double macs = static_cast<double>(g.m) * g.n * std::max<int64_t>(g.k, 1);
  // below ~4M multiply-adds (~10 us on one core) waking helpers costs more than it saves
  const int threads = items > 1 && macs >= (1 << 22) ? num_threads() : 1;
  const int64_t tile_bytes = g.conv ? kMC * round_up(g.k, kQKGroup) : 0;
  // parallel_items' fn must not throw: the first error of a block (e.g. the "not implemented"
  // of an unfinished portable kernel) is kept, the remaining blocks are skipped, and it is
  // rethrown here on the calling thread.
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  parallel_items(items, threads, [&](int64_t t) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      // per-thread scratch, kept between calls
      thread_local std::vector<uint8_t> apack, tile;
      thread_local std::vector<int32_t> cbuf;
      if (apack.size() < static_cast<size_t>(kMC * kKC)) apack.resize(kMC * kKC);
      if (cbuf.size() < static_cast<size_t>(kMC * kNC)) cbuf.resize(kMC * kNC);
      if (tile.size() < static_cast<size_t>(tile_bytes)) tile.resize(tile_bytes);
      // column block outer: the items one thread takes in turn share B's block (in L2)
      const int64_t mb = t % mblocks, nb = t / mblocks;
      const int64_t m0 = mb * kMC, n0 = nb * kNC;
      block(g, ep, m0, std::min(kMC, g.m - m0), n0, std::min(kNC, g.n - n0), apack.data(),
            cbuf.data(), tile.data());
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

// ---- peak measurement -----------------------------------------------------------------------
namespace {
template <class F>
double time_loop(F loop, double seconds) {
  // Size one run to ~2 ms, then keep the best run seen within `seconds`: on a shared machine
  // the best short window is the one where this thread had the core to itself.
  if (!(seconds >= 0.0 && seconds <= 60.0))  // (NaN fails too) an infinite budget never ends
    throw std::invalid_argument("peak measurement: seconds must be in [0, 60], got " +
                                std::to_string(seconds));
  using clock = std::chrono::steady_clock;
  int64_t iters = 1 << 10;
  for (;;) {
    const auto t0 = clock::now();
    loop(iters);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > 2e-3 || iters > (int64_t{1} << 40)) break;
    iters *= 2;
  }
  double best = 0;
  const auto start = clock::now();
  do {
    const auto t0 = clock::now();
    const double ops = loop(iters);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::max(best, ops / dt / 1e9);
  } while (std::chrono::duration<double>(clock::now() - start).count() < seconds);
  return best;
}
}  // namespace

double qgemm_peak_gops(QgemmIsa isa, double seconds) {
  if (!qgemm_isa_supported(isa))
    throw std::invalid_argument(std::string("int8 path '") + qgemm_isa_name(isa) +
                                "' is not supported here");
  const QgemmKernel* kernel = kernel_of(isa);
  if (kernel == nullptr || kernel->peak_loop == nullptr)
    throw std::invalid_argument(std::string("no peak loop for the int8 path '") +
                                qgemm_isa_name(isa) + "'");
  return time_loop(kernel->peak_loop, seconds);
}

double f32_fma_peak_gflops(double seconds) {
#if NEEDLE_QGEMM_X86
  if (has_avx512f()) return time_loop(fma_loop_avx512, seconds);
  if (has_avx2_fma()) return time_loop(fma_loop_avx2, seconds);
#endif
  (void)seconds;
  throw std::invalid_argument("no FMA unit detected");
}

}  // namespace cpu
}  // namespace needle
