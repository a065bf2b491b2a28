// The cache-blocked int8 GEMM driver and micro-kernel, generic over an instruction-set traits
// type. Each qgemm_<isa>.cc includes this file inside its own namespace, with its
// `#pragma GCC target` in effect, after all library headers (so that only these functions are
// compiled for the wider instruction set).
//
// A traits type I provides:
//   C        accumulator vector of I::kLanes int32 lanes (one output channel per lane)
//   AP, BP   broadcast activation group / loaded weight vector, in whatever form dot() wants
//   kLanes   lanes per vector (16: 512-bit, 8: 256-bit); kMR rows, kMaxNP 16-channel panels
//   zero(), load_c(p), store_c(p, c), bcast(p: 4 uint8), load_b(p: kLanes*4 int8),
//   dot(c, a, b): c[lane] += sum_{j<4} a[j] * b[lane][j], exact in int32.
//
// Requires: qgemm_internal.h included before.

// Micro-kernel: acc[r][col] over kq groups of 4 k, for kMR rows and NP panels of 16 channels.
//   rows[r] + q*qstride: the 4 activation bytes of row r, group q
//   b + p*bstride + q*64: the 16 channels x 4 bytes of panel p, group q
//   c + r*kNC + col: the int32 tile (loaded first when `accumulate`)
template <class I, int NP>
static inline void micro_kernel(const uint8_t* const* rows, int64_t qstride, const int8_t* b,
                                int64_t bstride, int64_t kq, int32_t* c, bool accumulate) {
  constexpr int MR = I::kMR;
  constexpr int VPP = 16 / I::kLanes;  // vectors per 16-channel panel
  constexpr int NV = NP * VPP;
  typename I::C acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? I::load_c(c + r * kNC + v * I::kLanes) : I::zero();
  const uint8_t* rp[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) rp[r] = rows[r];
  for (int64_t q = 0; q < kq; ++q) {
    typename I::BP bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      bv[v] = I::load_b(b + (v / VPP) * bstride + q * 64 + (v % VPP) * I::kLanes * 4);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename I::AP av = I::bcast(rp[r] + q * qstride);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = I::dot(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) I::store_c(c + r * kNC + v * I::kLanes, acc[r][v]);
}

// One work item of the driver (see BlockFn in qgemm_internal.h); `Epi` writes the output.
template <class I, class Epi>
static void block_impl(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc,
                       int64_t n0, int64_t nc, uint8_t* apack, int32_t* cbuf, uint8_t* tile,
                       Epi epilogue) {
  constexpr int MR = I::kMR;
  const int64_t kp = round_up(g.k, kQKGroup);
  const int64_t bstride = kp * kQPanel;  // bytes between consecutive panels
  // Where the micro-kernel reads A: uint8 rows holding whole groups of 4 are read in place,
  // a convolution's rows from its im2col tile (built once per work item, already uint8 and
  // padded); otherwise (int8, or a k tail) each k-block of A is packed first.
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  int64_t lda = g.k, arow0 = m0;
  bool direct = g.a_type == QType::kUint8 && g.k % kQKGroup == 0;
  if (g.conv != nullptr) {
    conv_tile(g, m0, mc, tile);
    a = tile;
    lda = kp;
    arow0 = 0;
    direct = true;
  }
  const int64_t npanels = (nc + kQPanel - 1) / kQPanel;
  const int64_t p0 = n0 / kQPanel;
  if (kp == 0) std::memset(cbuf, 0, sizeof(int32_t) * kMC * kNC);
  for (int64_t k0 = 0; k0 < kp; k0 += kKC) {
    const int64_t kc = kp - k0 < kKC ? kp - k0 : kKC;
    const int64_t kq = kc / kQKGroup;
    if (!direct) pack_a(g, m0, mc, k0, kc, MR, apack);
    const bool accumulate = k0 > 0;
    for (int64_t jp = 0; jp < npanels; jp += I::kMaxNP) {
      const int64_t np = npanels - jp < I::kMaxNP ? npanels - jp : I::kMaxNP;
      const int8_t* b = g.packed + (p0 + jp) * bstride + k0 * kQPanel;
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const uint8_t* rows[MR];
        int64_t qstride;
        if (direct) {
          for (int r = 0; r < MR; ++r) {
            // rows past the end repeat the last row: computed, never written out
            const int64_t i = arow0 + (ir + r < mc ? ir + r : mc - 1);
            rows[r] = a + i * lda + k0;
          }
          qstride = kQKGroup;
        } else {
          const uint8_t* panel = apack + (ir / MR) * kq * MR * kQKGroup;
          for (int r = 0; r < MR; ++r) rows[r] = panel + r * kQKGroup;
          qstride = MR * kQKGroup;
        }
        int32_t* c = cbuf + ir * kNC + jp * kQPanel;
        switch (np) {
          case 1: micro_kernel<I, 1>(rows, qstride, b, bstride, kq, c, accumulate); break;
          case 2: if constexpr (I::kMaxNP >= 2) micro_kernel<I, 2>(rows, qstride, b, bstride, kq, c, accumulate); break;
          case 3: if constexpr (I::kMaxNP >= 3) micro_kernel<I, 3>(rows, qstride, b, bstride, kq, c, accumulate); break;
          default: if constexpr (I::kMaxNP >= 4) micro_kernel<I, 4>(rows, qstride, b, bstride, kq, c, accumulate); break;
        }
      }
    }
  }
  epilogue(ep, cbuf, m0, mc, n0, nc);
}
