// The cache-blocked int8 GEMM work item shared by every fast path, generic over an
// instruction-set traits type. Each qgemm_<isa>.cc includes this file inside its own
// anonymous namespace, within its NEEDLE_TARGET_PUSH region, after all library headers (so
// that only these functions are compiled for the wider instruction set), and defines its
// QgemmKernel as {block_impl<Traits, epilogue>, peak loop}: constant initialisation, so no
// code of the wider instruction set runs when the module loads.
//
// A vector traits type I provides:
//   C        accumulator vector of I::kLanes int32 lanes (one output channel per lane)
//   AP, BP   broadcast activation group / loaded weight vector, in whatever form dot() wants
//   kLanes   lanes per vector (16: 512-bit, 8: 256-bit); kMR rows, kMaxNP 16-channel panels
//   zero(), load_c(p), store_c(p, c), bcast(p: 4 uint8), load_b(p: kLanes*4 int8),
//   dot(c, a, b): c[lane] += sum_{j<4} a[j] * b[lane][j], exact in int32,
//   peak_step(c): one dependent dot-product instruction (group) on c, kPeakOps operations.
// A tile traits type (kTiles = true) instead provides kMR, kMaxNP, begin()/end() around a
// work item, tails(b, bstride, kq, np, buf) (the panels' k tail, once per k block and panel
// pair) and tiles<NP>(a, b, bstride, kq, c, accumulate, tail) with the micro-kernel contract
// below; its A operand is row-major, whole 64-byte rows (in place when every tile it loads
// lies inside A, else copied by pack_a_rows).
//
// Requires: qgemm_internal.h included before.

// Where a micro-kernel reads A: row r (r < valid; later rows repeat row valid - 1), group q
// of 4 bytes at p + r * rs + q * qs.
struct ARows {
  const uint8_t* p;
  int64_t rs, qs, valid;
};

// Micro-kernel: acc[r][col] over kq groups of 4 k, for kMR rows and NP panels of 16 channels.
//   b + p*bstride + q*64: the 16 channels x 4 bytes of panel p, group q
//   c + r*kNC + col: the int32 tile (loaded first when `accumulate`)
// Half: only the first 8 channels of a single panel (N <= 8 on 8-lane vectors).
template <class I, int NP, bool Half = false>
static inline void micro_kernel(const ARows& a, const int8_t* b, int64_t bstride, int64_t kq,
                                int32_t* c, bool accumulate) {
  constexpr int MR = I::kMR;
  constexpr int VPP = 16 / I::kLanes;  // vectors per 16-channel panel
  constexpr int NV = Half ? 1 : NP * VPP;
  typename I::C acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? I::load_c(c + r * kNC + v * I::kLanes) : I::zero();
  const uint8_t* rp[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) rp[r] = a.p + (r < a.valid ? r : a.valid - 1) * a.rs;
  const int64_t qs = a.qs;
  for (int64_t q = 0; q < kq; ++q) {
    typename I::BP bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      bv[v] = I::load_b(b + (v / VPP) * bstride + q * 64 + (v % VPP) * I::kLanes * 4);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename I::AP av = I::bcast(rp[r] + q * qs);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = I::dot(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) I::store_c(c + r * kNC + v * I::kLanes, acc[r][v]);
}

template <class I, int NP>
static inline void run_kernel(const ARows& a, const int8_t* b, int64_t bstride, int64_t kq,
                              int32_t* c, bool accumulate, int64_t nc, const int8_t* tail) {
  if constexpr (I::kTiles) {
    I::template tiles<NP>(a, b, bstride, kq, c, accumulate, tail);
  } else if constexpr (NP == 1 && I::kLanes < 16) {
    if (nc <= I::kLanes)  // e.g. the 8 channels of a first convolution: skip the empty half
      micro_kernel<I, 1, true>(a, b, bstride, kq, c, accumulate);
    else
      micro_kernel<I, 1>(a, b, bstride, kq, c, accumulate);
  } else {
    micro_kernel<I, NP>(a, b, bstride, kq, c, accumulate);
  }
}

// One work item of the driver (see BlockFn in qgemm_internal.h); Epi writes the output.
template <class I, EpilogueFn Epi>
static void block_impl(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc,
                       int64_t n0, int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile) {
  constexpr int MR = I::kMR;
  const int64_t kp = round_up(g.k, kQKGroup);
  const int64_t bstride = kp * kQPanel;  // bytes between consecutive panels
  // Where the micro-kernel reads A: uint8 rows holding whole groups of 4 are read in place,
  // a convolution's rows from its im2col tile (built once per work item, already uint8 and
  // padded); otherwise (int8, or a k tail) each k-block of A is packed first. Tile kernels
  // read whole 64-byte rows, 16 rows per tile: in place too when A has them, else from a
  // row-major copy (pack_a_rows).
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  int64_t lda = g.k, arow0 = m0;
  bool direct = g.a_type == QType::kUint8 && g.k % kQKGroup == 0;
  const uint8_t* conv_rows = nullptr;
  if (g.conv != nullptr) {
    conv_tile(g, m0, mc, tile);
    conv_rows = a = tile;
    lda = kp;
    arow0 = 0;
    direct = true;
  }
  if constexpr (I::kTiles) {
    // in place only when no tile reads past the end of A: k a multiple of 64 and whole
    // 16-row tiles (the kernel loads a block's second tile only when it has rows)
    direct = direct && g.k % 64 == 0 && mc % 16 == 0;
    I::begin();
  }
  const int64_t npanels = (nc + kQPanel - 1) / kQPanel;
  const int64_t p0 = n0 / kQPanel;
  alignas(64) int8_t tail_buf[I::kTiles ? 2 * 1024 : 1];
  if (kp == 0) std::memset(cbuf, 0, sizeof(int32_t) * kMC * kNC);
  for (int64_t k0 = 0; k0 < kp; k0 += kKC) {
    const int64_t kc = kp - k0 < kKC ? kp - k0 : kKC;
    const int64_t kq = kc / kQKGroup;
    const int64_t ld = round_up(kc, 64);
    if constexpr (I::kTiles) {
      if (!direct) pack_a_rows(g, conv_rows, m0, mc, k0, kc, ld, apack);
    } else if (!direct)
      pack_a(g, m0, mc, k0, kc, MR, apack);
    const bool accumulate = k0 > 0;
    for (int64_t jp = 0; jp < npanels; jp += I::kMaxNP) {
      const int64_t np = npanels - jp < I::kMaxNP ? npanels - jp : I::kMaxNP;
      const int8_t* b = g.packed + (p0 + jp) * bstride + k0 * kQPanel;
      const int8_t* tail = nullptr;  // tile kernels: the panels' k tail, once for all rows
      if constexpr (I::kTiles) tail = I::tails(b, bstride, kq, np, tail_buf);
      for (int64_t ir = 0; ir < mc; ir += MR) {
        ARows ar;
        if (direct)
          ar = ARows{a + (arow0 + ir) * lda + k0, lda, kQKGroup, mc - ir};
        else if (I::kTiles)
          ar = ARows{apack + ir * ld, ld, kQKGroup, mc - ir};
        else  // rows past the end are zero in the packed panel: computed, never written out
          ar = ARows{apack + (ir / MR) * kq * MR * kQKGroup, kQKGroup, MR * kQKGroup, MR};
        int32_t* c = cbuf + ir * kNC + jp * kQPanel;
        switch (np) {
          case 1: run_kernel<I, 1>(ar, b, bstride, kq, c, accumulate, nc - jp * kQPanel, tail); break;
          case 2: if constexpr (I::kMaxNP >= 2) run_kernel<I, 2>(ar, b, bstride, kq, c, accumulate, 0, tail); break;
          case 3: if constexpr (I::kMaxNP >= 3) run_kernel<I, 3>(ar, b, bstride, kq, c, accumulate, 0, tail); break;
          default: if constexpr (I::kMaxNP >= 4) run_kernel<I, 4>(ar, b, bstride, kq, c, accumulate, 0, tail); break;
        }
      }
    }
  }
  if constexpr (I::kTiles) I::end();
  Epi(ep, cbuf, m0, mc, n0, nc);
}

// Register-only throughput: 12 independent chains of `step` (each step depends on the last,
// so nothing is hoisted; the opaque seeds keep chains apart and values unknown). Returns the
// operations performed, ops_per_step per step.
template <class V, class Step>
static double peak_chains(int64_t iters, V seed, double ops_per_step, Step step) {
  constexpr int kChains = 12;
  V acc[kChains];
  for (int j = 0; j < kChains; ++j) {
    acc[j] = seed;
    __asm__ volatile("" : "+x"(acc[j]));
  }
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) acc[j] = step(acc[j]);
  }
  for (int j = 0; j < kChains; ++j) __asm__ volatile("" ::"x"(acc[j]));
  return ops_per_step * kChains * static_cast<double>(iters);
}

template <class I>
static double peak_loop(int64_t iters) {
  return peak_chains(iters, I::zero(), I::kPeakOps, I::peak_step);
}
