// AVX-512 epilogue, included by the AVX-512 kernels inside their target region (needs F, BW,
// VL). Same math as epilogue_scalar in qgemm.cc: 16 output channels per step, each half of
// 8 channels in 64-bit lanes (vpmuldq for acc * m, vpsravq for the arithmetic shift). The
// per-channel constants of a 16-channel strip are loaded once and reused down all its rows.
struct EpiConsts {
  __m512i offset, mult, shift, round;
};

static inline EpiConsts epi_consts(const QEpilogue& ep, int64_t c, __mmask8 k) {
  EpiConsts e;
  e.offset = _mm512_maskz_loadu_epi64(k, ep.offset + c);
  if (ep.out_type == QType::kInt32) {
    e.mult = e.shift = e.round = _mm512_setzero_si512();
    return e;
  }
  e.mult = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, ep.mult + c));
  e.shift = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, ep.total_shift + c));
  e.round = _mm512_maskz_loadu_epi64(k, ep.round + c);
  return e;
}

// 8 accumulators -> 8 results (int32 lanes of a 256-bit vector), clamped to [lo, hi].
static inline __m256i epi_half(__m256i acc32, const EpiConsts& e, bool raw, __m512i lo,
                               __m512i hi, __m512i zp) {
  const __m512i imin = _mm512_set1_epi64(INT32_MIN), imax = _mm512_set1_epi64(INT32_MAX);
  __m512i acc = _mm512_add_epi64(_mm512_cvtepi32_epi64(acc32), e.offset);
  acc = _mm512_min_epi64(_mm512_max_epi64(acc, imin), imax);
  if (raw) return _mm512_cvtepi64_epi32(acc);
  __m512i y = _mm512_add_epi64(_mm512_mul_epi32(acc, e.mult), e.round);
  y = _mm512_add_epi64(_mm512_srav_epi64(y, e.shift), zp);
  return _mm512_cvtepi64_epi32(_mm512_min_epi64(_mm512_max_epi64(y, lo), hi));
}

static void epilogue_avx512(const QEpilogue& ep, const int32_t* cbuf, int64_t m0, int64_t mc,
                            int64_t n0, int64_t nc) {
  const bool raw = ep.out_type == QType::kInt32;
  const __m512i lo = _mm512_set1_epi64(ep.lo), hi = _mm512_set1_epi64(ep.hi);
  const __m512i zp = _mm512_set1_epi64(ep.zp);
  for (int64_t j = 0; j < nc; j += 16) {
    const int64_t left = nc - j;
    const __mmask16 k16 = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                     : static_cast<__mmask16>((1u << left) - 1);
    const int64_t c = n0 + j;
    const EpiConsts elo = epi_consts(ep, c, static_cast<__mmask8>(k16 & 0xFF));
    const EpiConsts ehi = epi_consts(ep, c + 8, static_cast<__mmask8>(k16 >> 8));
    for (int64_t r = 0; r < mc; ++r) {
      const __m512i acc32 = _mm512_maskz_loadu_epi32(k16, cbuf + r * kNC + j);
      const __m256i vlo = epi_half(_mm512_castsi512_si256(acc32), elo, raw, lo, hi, zp);
      const __m256i vhi = epi_half(_mm512_extracti64x4_epi64(acc32, 1), ehi, raw, lo, hi, zp);
      const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(vlo), vhi, 1);
      const int64_t at = (m0 + r) * ep.n + c;
      if (raw)
        _mm512_mask_storeu_epi32(static_cast<int32_t*>(ep.out) + at, k16, v);
      else  // values are already clamped to the 8-bit range: truncation is exact
        _mm_mask_storeu_epi8(static_cast<int8_t*>(ep.out) + at, k16, _mm512_cvtepi32_epi8(v));
    }
  }
}
