// Weight-only int4 GEMV/GEMM kernels (see int4_gemv.h) and their Python binding.
//
// Both paths compute, for every output (row m, channel n), exactly (reference.py,
// int4_gemm_reference)
//     for each group g:  pe[0..7] = po[0..7] = 0
//                        (t odd ? po : pe)[(t % 16) / 2] += float(u - z) * x[k]   (t = k - k0)
//                        q = pe + po;  sum = ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7))
//                        y += s[n, g] * sum
// with separate float32 multiplies and adds (this file is compiled with -ffp-contract=off,
// and the vector path is built for AVX2 without FMA), so they agree bit for bit with each
// other and with the numpy reference. The two lane sets follow the byte layout: 8 bytes hold
// 16 codes, the low nibbles the even positions and the high nibbles the odd ones, so the
// vector path widens 8 bytes to 8 int32 lanes once and takes both nibbles from them, against
// a copy of x split the same way (x_even, x_odd per 16 values).
#include "int4_gemv.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../common/checked_size.h"
#include "array.h"
#include "cpu_features.h"
#include "parallel.h"

#if defined(__x86_64__) || defined(__i386__)
#define NEEDLE_INT4_X86 1
#include <immintrin.h>
#else
#define NEEDLE_INT4_X86 0
#endif

namespace py = pybind11;

namespace needle {
namespace cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kBlock = 2 * kLanes;  // codes per vector step (8 bytes)

inline int code_at(const uint8_t* row, int64_t j) {
  const uint8_t b = row[j >> 1];
  return (j & 1) ? (b >> 4) : (b & 0x0F);
}

inline float tree_sum(const float* pe, const float* po) {
  float q[kLanes];
  for (int l = 0; l < kLanes; ++l) q[l] = pe[l] + po[l];
  return ((q[0] + q[4]) + (q[2] + q[6])) + ((q[1] + q[5]) + (q[3] + q[7]));
}

// Adds the codes [t0, len) of the group starting at k0 (scalar, the documented lane rule).
inline void group_tail(float* pe, float* po, const uint8_t* row, const float* x, int64_t k0,
                       int64_t t0, int64_t len, int z) {
  for (int64_t t = t0; t < len; ++t) {
    float* p = (t & 1) ? po : pe;
    const int l = static_cast<int>((t % kBlock) >> 1);
    p[l] = p[l] + static_cast<float>(code_at(row, k0 + t) - z) * x[k0 + t];
  }
}

void rows_scalar(const Int4GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    const float* x = a.x + mi * a.k;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = a.codes + n * kb;
      float y = 0.0f;
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t k0 = g * a.group, len = std::min(a.group, a.k - k0);
        float pe[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0}, po[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
        group_tail(pe, po, row, x, k0, 0, len, a.zeros[n * ng + g]);
        y = y + a.scales[n * ng + g] * tree_sum(pe, po);
      }
      a.out[mi * a.n + n] = y;
    }
  }
}

#if NEEDLE_INT4_X86
#pragma GCC diagnostic ignored "-Wpsabi"

// ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7)) of the 8 lanes of q, as tree_sum.
__attribute__((target("avx2"))) inline float hsum_avx2(__m256 q) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

// R output channels at once: independent accumulators hide the add latency, and one load of
// x serves all of them. xs: x split per 16 values into 8 even then 8 odd positions (the
// vector path needs group % 16 == 0, so blocks of 16 start at multiples of 16).
template <int R>
__attribute__((target("avx2"))) void block_avx2(const Int4GemmArgs& a, const float* xs_all,
                                                int64_t n) {
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group;
  const int64_t ks = (a.k + kBlock - 1) / kBlock * kBlock;
  const __m256i mask = _mm256_set1_epi32(0x0F);
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = a.codes + (n + r) * kb;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    const float* x = a.x + mi * a.k;
    const float* xs = xs_all + mi * ks;
    float y[R];
    for (int r = 0; r < R; ++r) y[r] = 0.0f;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t k0 = g * a.group, len = std::min(a.group, a.k - k0);
      const int64_t full = len / kBlock * kBlock;
      __m256i z[R];
      __m256 ae[R], ao[R];
      for (int r = 0; r < R; ++r) {
        z[r] = _mm256_set1_epi32(a.zeros[(n + r) * ng + g]);
        ae[r] = _mm256_setzero_ps();
        ao[r] = _mm256_setzero_ps();
      }
      for (int64_t t = 0; t < full; t += kBlock) {
        const __m256 xe = _mm256_loadu_ps(xs + k0 + t), xo = _mm256_loadu_ps(xs + k0 + t + kLanes);
        const int64_t byte = (k0 + t) >> 1;
        for (int r = 0; r < R; ++r) {
          const __m256i v = _mm256_cvtepu8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows[r] + byte)));
          const __m256 we = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), z[r]));
          const __m256 wo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), z[r]));
          ae[r] = _mm256_add_ps(ae[r], _mm256_mul_ps(we, xe));
          ao[r] = _mm256_add_ps(ao[r], _mm256_mul_ps(wo, xo));
        }
      }
      for (int r = 0; r < R; ++r) {
        float sum;
        if (full < len) {
          alignas(32) float pe[kLanes], po[kLanes];
          _mm256_store_ps(pe, ae[r]);
          _mm256_store_ps(po, ao[r]);
          group_tail(pe, po, rows[r], x, k0, full, len, a.zeros[(n + r) * ng + g]);
          sum = tree_sum(pe, po);
        } else {
          sum = hsum_avx2(_mm256_add_ps(ae[r], ao[r]));
        }
        y[r] = y[r] + a.scales[(n + r) * ng + g] * sum;
      }
    }
    for (int r = 0; r < R; ++r) a.out[mi * a.n + n + r] = y[r];
  }
}

void rows_avx2(const Int4GemmArgs& a, const float* xs, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) block_avx2<4>(a, xs, n);
  for (; n < n1; ++n) block_avx2<1>(a, xs, n);
}
#endif

// x [m, k] split per 16 values into the 8 even then the 8 odd positions ([m, ks], ks = k
// rounded up to 16, zero padded): the activation order the vector path reads.
std::vector<float> split_even_odd(const Int4GemmArgs& a) {
  const int64_t ks = (a.k + kBlock - 1) / kBlock * kBlock;
  std::vector<float> xs(static_cast<size_t>(checked_mul(a.m, ks, "int4_gemm")), 0.0f);
  for (int64_t mi = 0; mi < a.m; ++mi)
    for (int64_t j = 0; j < a.k; ++j) {
      const int64_t b = j / kBlock * kBlock, t = j - b;
      xs[mi * ks + b + (t & 1) * kLanes + (t >> 1)] = a.x[mi * a.k + j];
    }
  return xs;
}

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }
std::string s(int64_t v) { return std::to_string(v); }

void check_array(const char* name, const AlignedArray& arr, DType dtype, int64_t count) {
  if (arr.dtype() != dtype)
    type_error(std::string("int4_gemm: ") + name + " must be " + dtype_name(dtype) + ", got " +
               dtype_name(arr.dtype()));
  if (static_cast<int64_t>(arr.size()) != count)
    value_error(std::string("int4_gemm: ") + name + " has " + s(arr.size()) +
                " elements, expected " + s(count));
}

void int4_gemm_py(const AlignedArray& x, const AlignedArray& codes, const AlignedArray& scales,
                  const AlignedArray& zeros, AlignedArray& out, int64_t m, int64_t n, int64_t k,
                  int64_t group) {
  if (m < 0 || n < 0 || k < 1)
    value_error("int4_gemm: need m >= 0, n >= 0, k >= 1, got m=" + s(m) + " n=" + s(n) +
                " k=" + s(k));
  if (group < 8 || group % 8 != 0 || group > (int64_t(1) << 30))
    value_error("int4_gemm: group must be a positive multiple of 8, got " + s(group));
  const int64_t kb = checked_add(k, 1, "int4_gemm") / 2;
  const int64_t ng = checked_add(k, group - 1, "int4_gemm") / group;
  check_array("x", x, DType::kFloat32, checked_mul(m, k, "int4_gemm x"));
  check_array("codes", codes, DType::kUint8, checked_mul(n, kb, "int4_gemm codes"));
  check_array("scales", scales, DType::kFloat32, checked_mul(n, ng, "int4_gemm scales"));
  check_array("zeros", zeros, DType::kUint8, checked_mul(n, ng, "int4_gemm zeros"));
  check_array("out", out, DType::kFloat32, checked_mul(m, n, "int4_gemm out"));
  const uint8_t* zp = zeros.data<uint8_t>();
  for (int64_t i = 0; i < n * ng; ++i)
    if (zp[i] > 15) value_error("int4_gemm: zero point " + s(zp[i]) + " at " + s(i) +
                                " is outside [0, 15]");
  Int4GemmArgs a{x.data<float>(), codes.data<uint8_t>(), scales.data<float>(), zp,
                 out.data<float>(), m, n, k, group};
  py::gil_scoped_release release;
  int4_gemm(a);
}

}  // namespace

Int4Isa int4_default_isa() {
#if NEEDLE_INT4_X86
  if (has_avx2_fma()) return Int4Isa::kAvx2;
#endif
  return Int4Isa::kScalar;
}

const char* int4_isa_name(Int4Isa isa) { return isa == Int4Isa::kAvx2 ? "avx2" : "scalar"; }

void int4_gemm_rows(const Int4GemmArgs& a, Int4Isa isa, int64_t n0, int64_t n1) {
#if NEEDLE_INT4_X86
  if (isa == Int4Isa::kAvx2 && a.group % kBlock == 0) {
    const std::vector<float> xs = split_even_odd(a);
    return rows_avx2(a, xs.data(), n0, n1);
  }
#endif
  rows_scalar(a, n0, n1);
}

void int4_gemm(const Int4GemmArgs& a) {
  const Int4Isa isa = int4_default_isa();
  constexpr int64_t kRows = 64;  // rows per task: a multiple of the 4-row vector block
  const int64_t blocks = (a.n + kRows - 1) / kRows;
  const bool parallel = double(a.m) * double(a.n) * double(a.k) >= 16.0 * kParallelMinElements &&
                        blocks > 1;
#if NEEDLE_INT4_X86
  if (isa == Int4Isa::kAvx2 && a.group % kBlock == 0) {
    const std::vector<float> xs = split_even_odd(a);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t b = 0; b < blocks; ++b)
      rows_avx2(a, xs.data(), b * kRows, std::min(a.n, (b + 1) * kRows));
    return;
  }
#endif
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < blocks; ++b) rows_scalar(a, b * kRows, std::min(a.n, (b + 1) * kRows));
}

void register_int4_ops(py::module_& m) {
  m.def("int4_gemm", &int4_gemm_py, py::arg("x"), py::arg("codes"), py::arg("scales"),
        py::arg("zeros"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("group"),
        "out[m, n] = x[m, k] @ W^T for group-wise int4 weights W [n, k]: codes uint8\n"
        "[n, ceil(k/2)] (two per byte, even k in the low nibble), scales float32 and zeros\n"
        "uint8 [n, ceil(k/group)]. Bit-exact with reference.int4_gemm_reference.");
  m.def("_int4_gemm_isa", [] { return std::string(int4_isa_name(int4_default_isa())); },
        "The int4 kernel path in use now ('avx2' or 'scalar'; NEEDLE_ISA=scalar forces it).");
}

}  // namespace cpu
}  // namespace needle
