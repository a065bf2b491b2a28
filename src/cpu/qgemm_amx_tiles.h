// The AMX-INT8 tile micro-kernel, generic over the tile operations T: the hardware
// instructions (qgemm_amx.cc) or their portable model (qgemm_amx_emulated.cc), so the code
// proved bit-exact by the model is the code that runs on the hardware. Included inside the
// including file's anonymous namespace, after qgemm_kernel.h.
//
// Tiles (all 16 rows x 64 bytes, palette 1):
//   0..3  int32 C: rows 0-15 / 16-31 of the micro-tile x panels 0 / 1 (16 channels each)
//   4, 5  uint8 A: rows 0-15 / 16-31, 64 consecutive k (row-major, stride = the A row length)
//   6, 7  int8 B: panels 0 / 1, 16 groups of 4 k: exactly 1 KB of a packed panel (stride 64)
// tdpbusd C, A, B: C[m][n] += sum_{q<16, j<4} A[m][4q + j] * B[q][4n + j] in int32.
//
// T provides configure(cfg), release(), load<t>(p, stride), store<t>(p, stride), zero<t>(),
// dp<c, a, b>() (tdpbusd).
#pragma once

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile t
  uint8_t rows[16] = {};
};

inline TileConfig full_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  return cfg;
}

template <class T>
struct AmxTraits {
  static constexpr bool kTiles = true;
  static constexpr int kMR = 32, kMaxNP = 2;
  static void begin() {
    static const TileConfig cfg = full_tiles();
    T::configure(cfg);
  }
  static void end() { T::release(); }

  // One k step of 64 bytes: A rows at ap (row stride rs), B panels at b0, b1 (stride 64).
  template <int NP>
  static inline void step(const uint8_t* ap, int64_t rs, const int8_t* b0, const int8_t* b1,
                          bool two) {
    T::template load<4>(ap, rs);
    T::template load<6>(b0, 64);
    T::template dp<0, 4, 6>();
    if constexpr (NP == 2) {
      T::template load<7>(b1, 64);
      T::template dp<1, 4, 7>();
    }
    if (two) {
      T::template load<5>(ap + 16 * rs, rs);
      T::template dp<2, 5, 6>();
      if constexpr (NP == 2) T::template dp<3, 5, 7>();
    }
  }

  // The k tail of panels b and b + bstride (np of them) when kq is not a whole number of
  // 64-byte steps: their last partial step copied into zeroed 1 KB blocks of buf (2 KB,
  // 64-byte aligned) rather than reading past the packed panels. Built once per k block and
  // panel pair, shared by every row block. nullptr when there is no tail.
  static const int8_t* tails(const int8_t* b, int64_t bstride, int64_t kq, int64_t np,
                             int8_t* buf) {
    const int64_t full = kq / 16, rest = kq % 16;
    if (rest == 0) return nullptr;
    std::memset(buf, 0, 2 * 1024);
    for (int64_t p = 0; p < np && p < 2; ++p)
      std::memcpy(buf + p * 1024, b + p * bstride + full * 1024, static_cast<size_t>(rest * 64));
    return buf;
  }

  // The micro-kernel contract of qgemm_kernel.h for 32 rows x NP panels. A rows are whole
  // 64-byte steps (zero past k), so the k tail only needs B: `tail` (from tails()).
  template <int NP>
  static void tiles(const ARows& a, const int8_t* b, int64_t bstride, int64_t kq, int32_t* c,
                    bool accumulate, const int8_t* tail) {
    constexpr int64_t cs = kNC * sizeof(int32_t);
    const bool two = a.valid > 16;  // the second 16-row tile holds real rows
    int32_t* c1 = c + 16 * kNC;
    if (accumulate) {
      T::template load<0>(c, cs);
      if constexpr (NP == 2) T::template load<1>(c + 16, cs);
      if (two) T::template load<2>(c1, cs);
      if (two && NP == 2) T::template load<3>(c1 + 16, cs);
    } else {
      T::template zero<0>();
      T::template zero<1>();
      T::template zero<2>();
      T::template zero<3>();
    }
    const int64_t full = kq / 16, rest = kq % 16;
    const int8_t* b1 = b + (NP == 2 ? bstride : 0);
    for (int64_t s = 0; s < full; ++s)
      step<NP>(a.p + s * 64, a.rs, b + s * 1024, b1 + s * 1024, two);
    if (rest) step<NP>(a.p + full * 64, a.rs, tail, tail + 1024, two);
    T::template store<0>(c, cs);
    if constexpr (NP == 2) T::template store<1>(c + 16, cs);
    if (two) T::template store<2>(c1, cs);
    if (two && NP == 2) T::template store<3>(c1 + 16, cs);
  }
};
