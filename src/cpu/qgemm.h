// Integer (int8) GEMM of the CPU backend: weight packing and the fused quantized GEMM.
//
// Math (docs/ARCHITECTURE.md, "Quantization math"; needle/quant/reference.py is the reference):
//   acc[i, c] = sat32( sum_k a[i, k] * w[c, k] - a_zp * colsum[c] + bias[c] )   (int64 math)
//   out[i, c] = clamp(((acc * mult[c] + 2^(s-1)) >> s) + out_zp, lo, hi),  s = 31 + shift[c]
// with lo raised to out_zp by a fused ReLU, or out = acc for int32 output.
//
// Weights are packed once (qpack_weights) into panels of 16 output channels; inside a panel
// every group of 4 consecutive k of one channel forms one 32-bit lane, which is exactly the
// operand layout of the VNNI instruction vpdpbusd (u8 x s8, 4 products summed per lane).
// The inner product runs in int32 with the activations as uint8 (int8 activations are
// shifted by +128, which the zero point absorbs); zero points never enter the inner loop.
//
// Paths, chosen at run time: AMX-INT8 tiles (tdpbusd on 16 x 64-byte tiles; the packed
// panel above is already the tile layout of B: 16 rows of q x 64 bytes), AVX-512 VNNI, AVX-VNNI (256-bit), AVX-512BW and AVX2 (exact
// 16-bit widening with vpmaddwd), and portable C++ (qgemm_scalar.cc, the course's C++
// exercise: used only when the scalar path is selected). All give identical bits.
#pragma once
#include <cstdint>

namespace needle {
namespace cpu {

// kAmxEmulated runs the AMX path's blocking, packing and tile sequence on a portable C++
// model of the tile instructions: slow, always available, never chosen automatically; it
// proves the AMX code bit-exact on CPUs without AMX.
enum class QgemmIsa : int {
  kScalar = 0, kAvx2 = 1, kAvxVnni = 2, kAvx512 = 3, kVnni512 = 4, kAmx = 5, kAmxEmulated = 6
};
constexpr int kQgemmIsaCount = 7;
enum class QType : int { kUint8 = 0, kInt8 = 1, kInt32 = 2 };

constexpr int64_t kQPanel = 16;  // output channels per packed panel
constexpr int64_t kQKGroup = 4;  // consecutive k per 32-bit lane
// Largest k for which the int32 inner product cannot overflow (255 * 128 * k < 2^31).
constexpr int64_t kQMaxK = 65793;

// Packed size in bytes of int8 weights [n, k]: n rounded up to 16, k rounded up to 4.
int64_t qpack_size(int64_t n, int64_t k);
// w: int8 [n, k] row-major -> packed: qpack_size(n, k) bytes (padding is zero).
void qpack_weights(const int8_t* w, int64_t n, int64_t k, int8_t* packed);

// A convolution seen as a GEMM: row i of A is the im2col patch of output pixel i (NHWC input
// [batch, h, w, c], k = kh * kw * c in (kh, kw, c) order, out-of-image taps read pad_value,
// i.e. the activation zero point). The patches are gathered block by block while packing;
// no im2col matrix is ever materialised.
struct QConvGeom {
  int64_t batch = 0, h = 0, w = 0, c = 0;  // input
  int64_t kh = 0, kw = 0, stride = 1, pad = 0;
  int64_t ho = 0, wo = 0;                  // output height and width
  int32_t pad_value = 0;                   // in the input's own dtype (uint8 or int8 range)
};

struct QgemmArgs {
  const void* a = nullptr;        // [m, k] activations
  QType a_type = QType::kUint8;   // kUint8 or kInt8
  const int8_t* packed = nullptr; // from qpack_weights(w, n, k)
  void* out = nullptr;            // [m, n]
  QType out_type = QType::kUint8;
  int64_t m = 0, n = 0, k = 0;
  int32_t a_zero_point = 0;
  const int32_t* colsum = nullptr;      // [n], sum_k w[c, k]
  const int32_t* bias = nullptr;        // [n] or nullptr (zero)
  const int32_t* multiplier = nullptr;  // [n] (unused for int32 output)
  const int32_t* shift = nullptr;       // [n], n of M = m * 2^-(31+n), in [-30, 31]
  int32_t out_zero_point = 0;
  bool relu = false;
  const QConvGeom* conv = nullptr;  // set: a is an NHWC image, m = batch * ho * wo
};

// Runs the fused GEMM on the path `isa` (must be supported: see qgemm_isa_supported).
// Arguments are assumed validated. Large problems are split into blocks of rows x columns
// shared with helper threads (qgemm_pool.h; as many threads as OpenMP would use, i.e.
// OMP_NUM_THREADS / set_num_threads). Needs no GIL.
void qgemm(const QgemmArgs& args, QgemmIsa isa);

// The path used when none is forced: the best the CPU offers below the NEEDLE_ISA cap, or the
// one set by qgemm_force_isa. With NEEDLE_ISA=amx on a machine without usable AMX it throws
// std::runtime_error saying why (CPU flags or the kernel's refusal of tile data).
QgemmIsa qgemm_default_isa();
// The path for a product with n output channels and reduction length k: qgemm_default_isa(),
// except that an automatically chosen AMX path hands short, narrow products (k < 256, or
// k < 512 and n < 48) to AVX-512 VNNI, which is faster there. Same bits either way.
QgemmIsa qgemm_isa_for(int64_t n, int64_t k);
bool qgemm_isa_supported(QgemmIsa isa);
const char* qgemm_isa_name(QgemmIsa isa);
// Parses "scalar", "avx2", "avxvnni", "avx512", "vnni", "amx", "amx-emulated"; throws
// std::invalid_argument otherwise.
QgemmIsa qgemm_isa_from_name(const char* name);
// Forces a path for later calls (tests); `clear` returns to automatic choice.
void qgemm_force_isa(QgemmIsa isa);
void qgemm_clear_forced_isa();

// Measured peak of the int8 dot-product unit in GOP/s (2 ops per multiply-add) for `isa`,
// one thread, from a register-only loop of independent accumulations lasting ~`seconds`.
double qgemm_peak_gops(QgemmIsa isa, double seconds);
// Same for float32 FMA (AVX-512 when available, else AVX2 FMA): GFLOP/s, one thread.
double f32_fma_peak_gflops(double seconds);

}  // namespace cpu
}  // namespace needle
