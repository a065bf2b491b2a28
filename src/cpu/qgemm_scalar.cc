// The portable int8 GEMM path: block_scalar (the driver's work item for `_qgemm_isa("scalar")`)
// with the tile a student writes and the requantization it feeds (see qgemm_scalar.h).
//
// ---- Exercise (notebook 05_int8_cpu_kernel) -------------------------------------------------
// Write qgemm_scalar_tile below; requantize_scalar (notebook 3's requantize in 64-bit
// integers) is given, and block_scalar calls both. block_scalar has already turned the
// operands into plain row-major matrices: uint8 activation rows (int8 activations arrive
// shifted by +128, with the zero point shifted to match) and int8 weight rows, one per output
// channel. Follow needle/quant/reference.py (qgemm_reference's accumulator) to the bit:
//   * accumulate the products in int32: a uint8 x int8 product reaches 255 * 128, so 16 bits
//     overflow after two of them;
//   * fold the activation zero point in with colsum: sum (a - z) w = sum a w - z * colsum;
//   * add the correction and the bias in 64 bits and saturate the sum to int32.
// Rebuild with `make build` from the repository root, then restart the notebook's kernel.
// `_qgemm_isa("scalar")` (module ndarray_backend_cpu) makes every qgemm call use this path.
#include "qgemm_scalar.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "qgemm_internal.h"

namespace needle {
namespace cpu {

void qgemm_scalar_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t ldw,
                       int64_t rows, int64_t cols, int64_t k, int32_t a_zero_point,
                       const int32_t* colsum, const int32_t* bias, int32_t* acc, int64_t ldc) {
  // BEGIN SOLUTION
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* arow = a + r * lda;
    for (int64_t j = 0; j < cols; ++j) {
      const int8_t* wrow = w + j * ldw;
      int32_t dot = 0;
      for (int64_t kk = 0; kk < k; ++kk) dot += int32_t(arow[kk]) * int32_t(wrow[kk]);
      int64_t v = int64_t(dot) - int64_t(a_zero_point) * colsum[j] + bias[j];
      v = std::min<int64_t>(std::max<int64_t>(v, INT32_MIN), INT32_MAX);
      acc[r * ldc + j] = int32_t(v);
    }
  }
  // END SOLUTION
}

int32_t requantize_scalar(int32_t acc, int32_t multiplier, int32_t shift,
                          int32_t out_zero_point, int32_t lo, int32_t hi, bool relu) {
  const int s = 31 + shift;
  const int64_t y = (int64_t(acc) * multiplier + (int64_t(1) << (s - 1))) >> s;
  const int64_t low = relu ? std::max(lo, out_zero_point) : lo;
  return int32_t(std::min<int64_t>(std::max<int64_t>(y + out_zero_point, low), hi));
}

namespace qgemm_detail {

static void block_scalar(const QgemmArgs& g, const QEpilogue& ep, int64_t m0, int64_t mc, int64_t n0,
                  int64_t nc, uint8_t* /*apack*/, int32_t* cbuf, uint8_t* tile) {
  const int64_t k = g.k, kp = round_up(k, kQKGroup);
  thread_local std::vector<uint8_t> arows;
  thread_local std::vector<int8_t> wrows;
  thread_local std::vector<int32_t> zeros;
  // Activations as uint8 rows (the same +128 shift the fast paths use for int8 input).
  const uint8_t* a = static_cast<const uint8_t*>(g.a) + m0 * k;
  int64_t lda = k;
  if (g.conv != nullptr) {
    conv_tile(g, m0, mc, tile);
    a = tile;
    lda = kp;
  } else if (g.a_type == QType::kInt8) {
    arows.resize(static_cast<size_t>(mc * k));
    for (int64_t i = 0; i < mc * k; ++i) arows[i] = a[i] ^ 0x80;
    a = arows.data();
  }
  // Weight rows [nc, k] from the packed panels: packed[panel][q][lane][j] = w[16 p + lane, 4 q + j].
  wrows.resize(static_cast<size_t>(nc * k));
  for (int64_t j = 0; j < nc; ++j) {
    const int64_t c = n0 + j;
    const int8_t* panel = g.packed + (c / kQPanel) * kp * kQPanel;
    const int64_t lane = c % kQPanel;
    for (int64_t kk = 0; kk < k; ++kk)
      wrows[j * k + kk] = panel[((kk / kQKGroup) * kQPanel + lane) * kQKGroup + kk % kQKGroup];
  }
  const int32_t zp = g.a_zero_point + (g.a_type == QType::kInt8 ? 128 : 0);
  const int32_t* bias = g.bias;
  if (bias == nullptr) {
    zeros.assign(static_cast<size_t>(nc), 0);
    bias = zeros.data();
  } else {
    bias += n0;
  }
  qgemm_scalar_tile(a, lda, wrows.data(), k, mc, nc, k, zp, g.colsum + n0, bias, cbuf, kNC);
  for (int64_t r = 0; r < mc; ++r) {
    const int32_t* crow = cbuf + r * kNC;
    const int64_t base = (m0 + r) * g.n + n0;
    for (int64_t j = 0; j < nc; ++j) {
      if (g.out_type == QType::kInt32) {
        static_cast<int32_t*>(g.out)[base + j] = crow[j];
        continue;
      }
      const int64_t c = n0 + j;
      const int32_t y = requantize_scalar(crow[j], g.multiplier[c], g.shift[c],
                                          g.out_zero_point, ep.out_type == QType::kUint8 ? 0 : -128,
                                          ep.out_type == QType::kUint8 ? 255 : 127, g.relu);
      if (g.out_type == QType::kUint8)
        static_cast<uint8_t*>(g.out)[base + j] = static_cast<uint8_t>(y);
      else
        static_cast<int8_t*>(g.out)[base + j] = static_cast<int8_t>(y);
    }
  }
}

const QgemmKernel kQgemmScalar = {block_scalar, nullptr};

}  // namespace qgemm_detail
}  // namespace cpu
}  // namespace needle
