// Cache-blocked float32 GEMM with run-time instruction-set dispatch.
//
// Layout (Goto/BLIS style): for each nc-wide column panel of B, B[:, panel] is packed over the
// whole of K (in depth blocks for very deep products) into NR-wide, kc-deep micro-panels shared
// by all threads. C is then updated in blocks of at most mc rows; for each kc slice of K a
// block packs A[rows, slice] into MR-tall micro-panels (L2) and sweeps the register-blocked
// micro-kernel over the block, one B micro-panel (L1) at a time. The C block stays in cache
// across the whole K. Packing makes every kernel load contiguous and aligned and zero-pads the
// ragged edges, so the kernel never branches on sizes; partial tiles are computed into a small
// buffer and copied out. Threads (the backend's set_num_threads; the pool of qgemm_pool.h)
// take B packing pieces and then work units (a block of rows of C, and for very few rows a
// share of the column panel) dynamically, so a thread slowed down by other load on its core
// simply does fewer of them. Products of at most 16 rows (batch-1 inference) skip the packing,
// which would cost more than the product: see gemv_rows.
#include "gemm_f32.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_features.h"
#include "gemm_f32_gemv.h"
#include "gemm_f32_kernels.h"
#include "qgemm_pool.h"

namespace needle {
namespace cpu {
namespace gemm_detail {

// ---- portable fallback: 4 x 8 tile, plain loops the compiler can vectorize with SSE2 ----------
constexpr int kMrScalar = 4, kNrScalar = 8;

static void kernel_scalar_4x8(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                              bool accumulate) {
  float acc[kMrScalar][kNrScalar] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < kMrScalar; ++i)
      for (int j = 0; j < kNrScalar; ++j) acc[i][j] += a[i] * b[j];
    a += kMrScalar;
    b += kNrScalar;
  }
  for (int i = 0; i < kMrScalar; ++i)
    for (int j = 0; j < kNrScalar; ++j)
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

static void gemv_chunk_portable(const float* A, const float* B, float* C, int64_t M, int64_t N,
                                int64_t K, int64_t j0, int64_t j1) {
  gemv_chunk_body(A, B, C, M, N, K, j0, j1);
}

KernelSpec scalar_kernel() {
  return KernelSpec{"scalar", kMrScalar, kNrScalar, 256, 64, 2048, kernel_scalar_4x8,
                    gemv_chunk_portable};
}

}  // namespace gemm_detail

namespace {

using gemm_detail::KernelSpec;

// Reads NEEDLE_ISA (may throw) and picks the widest kernel allowed.
KernelSpec select_kernel() {
  KernelSpec spec;
  if (has_avx512f() && gemm_detail::avx512_kernel(&spec)) return spec;
  if (has_avx2_fma() && gemm_detail::avx2_kernel(&spec)) return spec;
  return gemm_detail::scalar_kernel();
}

// A 64-byte aligned float buffer owned by one thread, grown on demand and kept between calls
// (large packing buffers would otherwise be page-faulted in again on every call).
struct AlignedBuffer {
  float* data = nullptr;
  size_t capacity = 0;
  ~AlignedBuffer() { std::free(data); }
  float* get(size_t n) {
    if (n > capacity) {
      std::free(data);
      const size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (data == nullptr) {
        capacity = 0;
        throw std::bad_alloc();
      }
      capacity = n;
    }
    return data;
  }
};

thread_local AlignedBuffer tls_pack_a, tls_pack_b;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Packs B[k0:k0+kc, j0:j0+nr_cols) (row stride ldb) into one NR-wide micro-panel, zero-padded.
inline void pack_b_panel(const float* B, int64_t ldb, int64_t kc, int64_t cols, int nr,
                         float* dst) {
  for (int64_t p = 0; p < kc; ++p) {
    const float* src = B + p * ldb;
    float* d = dst + p * nr;
    int64_t j = 0;
    for (; j < cols; ++j) d[j] = src[j];
    for (; j < nr; ++j) d[j] = 0.0f;
  }
}

// Packs A[i0:i0+rows, k0:k0+kc] (row stride lda) into one MR-tall micro-panel, zero-padded:
// dst[p * mr + i] = A[i, p]. This is a transpose; full groups of 4 rows use 4 x 4 SSE
// transposes (SSE2 is part of the x86-64 baseline), which matters when N is small and A is
// large (each packed element is then used only a few times).
inline void pack_a_panel(const float* A, int64_t lda, int64_t rows, int64_t kc, int mr,
                         float* dst) {
  int64_t i0 = 0;
#if defined(__SSE2__)
  if (rows == mr) {
    for (; i0 + 4 <= rows; i0 += 4) {
      const float* a0 = A + i0 * lda;
      const float* a1 = a0 + lda;
      const float* a2 = a1 + lda;
      const float* a3 = a2 + lda;
      int64_t p = 0;
      for (; p + 4 <= kc; p += 4) {
        __m128 r0 = _mm_loadu_ps(a0 + p), r1 = _mm_loadu_ps(a1 + p);
        __m128 r2 = _mm_loadu_ps(a2 + p), r3 = _mm_loadu_ps(a3 + p);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        float* d = dst + p * mr + i0;
        _mm_storeu_ps(d, r0);
        _mm_storeu_ps(d + mr, r1);
        _mm_storeu_ps(d + 2 * mr, r2);
        _mm_storeu_ps(d + 3 * mr, r3);
      }
      for (; p < kc; ++p) {
        float* d = dst + p * mr + i0;
        d[0] = a0[p];
        d[1] = a1[p];
        d[2] = a2[p];
        d[3] = a3[p];
      }
    }
  }
#endif
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t i = i0; i < mr; ++i) dst[p * mr + i] = i < rows ? A[i * lda + p] : 0.0f;
}

// How many threads to use: one per ~2 MFLOP of work, at most omp_get_max_threads(); one inside
// an OpenMP parallel region (the caller already parallelises).
int choose_threads(int64_t M, int64_t N, int64_t K) {
#ifdef _OPENMP
  const double flops = 2.0 * double(M) * double(N) * double(K);
  int nt = omp_get_max_threads();
  if (omp_in_parallel()) nt = 1;
  const int64_t by_work = static_cast<int64_t>(flops / 2.0e6) + 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, by_work)));
#else
  (void)M; (void)N; (void)K;
  return 1;
#endif
}

// Bytes of packed B shared by the threads: ideally all of K for nc columns, so that each thread
// finishes a block of C rows over the whole K while that block stays in its L2 cache. Very deep
// products (K above ~16k) pack B in several depth blocks instead.
constexpr int64_t kPackedBBudget = 8 << 20;

// Everything the threads of one gemm_f32 call share.
struct GemmPlan {
  KernelSpec ks;
  const float* A;
  const float* B;
  float* C;
  int64_t M, N, K;
  int64_t kc_max, mc_max, nc_max;  // cache blocks actually used
  int64_t kb_max;                  // depth of B packed at once (a multiple of kc_max, or K)
  int64_t row_block;               // rows of C per work unit (a multiple of mr, <= mc_max)
  int64_t col_chunk;               // NR micro-panels of a column panel per work unit
  float* packed_b;                 // kb_max x nc_max, shared
};

// One phase of the product: the column panel [jc, jc + nc) of C over the depth block
// [pb, pb + kb) of K. Its B pieces are packed first (all of them, by whoever takes them),
// then its C work units run.
struct GemmPhase {
  int64_t jc, nc, pb, kb, col_panels, nc_pad, col_units;
};

// Piece t of packing B[pb:pb+kb, jc:jc+nc]; the slice at depth pb + pc starts at
// packed_b + pc * nc_pad and holds its NR-wide micro-panels one after another.
void pack_b_piece(const GemmPlan& g, const GemmPhase& ph, int64_t t) {
  const int nr = g.ks.nr;
  const int64_t s = t / ph.col_panels, q = t % ph.col_panels;
  const int64_t pc = s * g.kc_max, kc = std::min<int64_t>(g.kc_max, ph.kb - pc);
  const int64_t cols = std::min<int64_t>(nr, ph.nc - q * nr);
  pack_b_panel(g.B + (ph.pb + pc) * g.N + ph.jc + q * nr, g.N, kc, cols, nr,
               g.packed_b + pc * ph.nc_pad + q * kc * nr);
}

// Work unit u: rows [ic, ic + mc) x micro-panels [q0, q1) of the phase's column panel.
void gemm_unit(const GemmPlan& g, const GemmPhase& ph, int64_t u, float* packed_a) {
  const int mr = g.ks.mr, nr = g.ks.nr;
  const int64_t N = g.N, K = g.K;
  alignas(64) float edge[16 * 64];  // partial tiles (mr * nr <= 1024 for every kernel)
  const int64_t ic = (u / ph.col_units) * g.row_block;
  const int64_t mc = std::min<int64_t>(g.row_block, g.M - ic);
  const int64_t q0 = (u % ph.col_units) * g.col_chunk;
  const int64_t q1 = std::min<int64_t>(ph.col_panels, q0 + g.col_chunk);
  for (int64_t pc = 0; pc < ph.kb; pc += g.kc_max) {
    const int64_t kc = std::min<int64_t>(g.kc_max, ph.kb - pc);
    const bool accumulate = ph.pb + pc > 0;
    for (int64_t ir = 0; ir < mc; ir += mr)
      pack_a_panel(g.A + (ic + ir) * K + ph.pb + pc, K, std::min<int64_t>(mr, mc - ir), kc, mr,
                   packed_a + ir * kc);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j = ph.jc + q * nr;
      const int64_t cols = std::min<int64_t>(nr, N - j);
      const float* bp = g.packed_b + pc * ph.nc_pad + q * kc * nr;
      for (int64_t ir = 0; ir < mc; ir += mr) {
        const int64_t rows = std::min<int64_t>(mr, mc - ir);
        float* c = g.C + (ic + ir) * N + j;
        const float* ap = packed_a + ir * kc;
        if (rows == mr && cols == nr) {
          g.ks.kernel(kc, ap, bp, c, N, accumulate);
        } else {  // ragged edge: full tile into a buffer, copy the valid part
          g.ks.kernel(kc, ap, bp, edge, nr, false);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t jj = 0; jj < cols; ++jj)
              c[i * N + jj] = accumulate ? c[i * N + jj] + edge[i * nr + jj] : edge[i * nr + jj];
        }
      }
    }
  }
}

// The phases in order, each as two rounds of work items shared out by parallel_items (the
// kit's pool: items are claimed dynamically, and a round never waits for a helper that has
// not started, so a thread slowed down by other load on its core simply does fewer of them).
void gemm_phases(const GemmPlan& g, int nt) {
  const int nr = g.ks.nr;
  const size_t packed_a_size = static_cast<size_t>(g.mc_max * g.kc_max);
  const int64_t row_units = (g.M + g.row_block - 1) / g.row_block;
  std::atomic<bool> alloc_failed{false};  // items must not throw
  for (int64_t jc = 0; jc < g.N; jc += g.nc_max) {
    for (int64_t pb = 0; pb < g.K; pb += g.kb_max) {
      GemmPhase ph;
      ph.jc = jc;
      ph.nc = std::min<int64_t>(g.nc_max, g.N - jc);
      ph.pb = pb;
      ph.kb = std::min<int64_t>(g.kb_max, g.K - pb);
      ph.col_panels = (ph.nc + nr - 1) / nr;
      ph.nc_pad = ph.col_panels * nr;
      ph.col_units = (ph.col_panels + g.col_chunk - 1) / g.col_chunk;
      const int64_t pieces = ((ph.kb + g.kc_max - 1) / g.kc_max) * ph.col_panels;
      const int64_t units = row_units * ph.col_units;
      if (nt == 1) {
        for (int64_t t = 0; t < pieces; ++t) pack_b_piece(g, ph, t);
        float* packed_a = tls_pack_a.get(packed_a_size);
        for (int64_t u = 0; u < units; ++u) gemm_unit(g, ph, u, packed_a);
        continue;
      }
      parallel_items(pieces, nt, [&](int64_t t) { pack_b_piece(g, ph, t); });
      parallel_items(units, nt, [&](int64_t u) {
        float* packed_a = nullptr;
        try {
          packed_a = tls_pack_a.get(packed_a_size);
        } catch (const std::bad_alloc&) {
          alloc_failed.store(true);
          return;
        }
        gemm_unit(g, ph, u, packed_a);
      });
      if (alloc_failed.load()) throw std::bad_alloc();
    }
  }
}

void gemm_blocked(const KernelSpec& ks, const float* A, const float* B, float* C, int64_t M,
                  int64_t N, int64_t K) {
  GemmPlan g{ks, A, B, C, M, N, K, 0, 0, 0, 0, 0, 0, nullptr};
  const int mr = ks.mr, nr = ks.nr;
  const int64_t budget = kPackedBBudget / int64_t(sizeof(float));  // in floats
  g.kc_max = std::min<int64_t>(ks.kc, K);
  g.mc_max = ks.mc;
  // Column panel width: as wide as the budget allows for all of K, at least 4 micro-panels,
  // at most ks.nc; then as much depth as fits (whole kc slices).
  int64_t nc_max = budget / K / nr * nr;
  nc_max = std::max<int64_t>(4 * nr, std::min<int64_t>(nc_max, ks.nc));
  g.nc_max = std::min<int64_t>(nc_max, round_up(N, nr));
  g.kb_max = std::max<int64_t>(g.kc_max, budget / g.nc_max / g.kc_max * g.kc_max);
  if (g.kb_max >= K) g.kb_max = K;

  // Work units: about 4 per thread so that dynamic hand-out can even out the load. Rows are
  // split first; with too few rows, each column panel is split as well.
  const int nt = choose_threads(M, N, K);
  const int64_t want = nt == 1 ? 1 : 4 * int64_t(nt);
  const int64_t row_panels = (M + mr - 1) / mr;
  int64_t row_units = std::max<int64_t>(want, (M + g.mc_max - 1) / g.mc_max);
  row_units = round_up(std::min<int64_t>(row_units, row_panels), nt);  // even shares
  g.row_block = std::min<int64_t>(g.mc_max, (row_panels + row_units - 1) / row_units * mr);
  row_units = (M + g.row_block - 1) / g.row_block;
  const int64_t col_panels = g.nc_max / nr;
  g.col_chunk = col_panels;
  if (row_units < want) {
    const int64_t split = std::min<int64_t>(col_panels, (want + row_units - 1) / row_units);
    g.col_chunk = (col_panels + split - 1) / split;
  }

  g.packed_b = tls_pack_b.get(static_cast<size_t>(g.kb_max * g.nc_max));
  gemm_phases(g, nt);
}

// ---- a few rows (batch-1 inference): a matrix-vector product --------------------------------
// Packing B for the blocked kernel reads and writes all of B, which costs more than a product
// that uses each element of B only M times. Instead each column chunk streams B once per group
// of up to 4 rows (gemm_f32_gemv.h: ks.gemv); the chunks are shared out among the threads.
// Every output sums k = 0 .. K-1 in order, whatever the thread count.
constexpr int64_t kGemvMaxRows = 16;
constexpr int64_t kGemvChunkFloats = 4096;  // floats of C per chunk (one group of <= 4 rows)
constexpr int64_t kGemvGroupedCols = 256;   // chunk width with several groups (B chunk in L3)

void gemv_rows(const KernelSpec& ks, const float* A, const float* B, float* C, int64_t M,
               int64_t N, int64_t K) {
  const int nt = choose_threads(M, N, K);
  // at least one chunk per thread, none over kGemvChunkFloats of C, widths a multiple of 16
  const int64_t max_cols =
      M <= 4 ? std::max<int64_t>(16, kGemvChunkFloats / M) : kGemvGroupedCols;
  const int64_t chunks = std::max<int64_t>(nt, (N + max_cols - 1) / max_cols);
  const int64_t width = std::max<int64_t>(16, round_up((N + chunks - 1) / chunks, 16));
  const int64_t items = (N + width - 1) / width;
  parallel_items(items, nt, [&](int64_t t) {
    const int64_t j0 = t * width, j1 = std::min<int64_t>(N, j0 + width);
    ks.gemv(A, B, C, M, N, K, j0, j1);
  });
}

}  // namespace

void gemm_f32(const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum
    std::memset(C, 0, sizeof(float) * static_cast<size_t>(M) * static_cast<size_t>(N));
    return;
  }
  const KernelSpec ks = select_kernel();  // before any parallel region: it may throw
  if (M <= kGemvMaxRows) return gemv_rows(ks, A, B, C, M, N, K);
  gemm_blocked(ks, A, B, C, M, N, K);
}

const char* gemm_f32_isa() {
  return select_kernel().name;
}

}  // namespace cpu
}  // namespace needle
