// Weight-only int4 GEMV/GEMM kernels (see int4_gemv.h) and their Python binding.
//
// Both paths compute, for every output (row m, channel n), exactly
//     for each group g:  p[0..7] = 0;  p[t % 8] += float(u - z) * x[k]   (t = k - g * group)
//                        sum = ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7))
//                        y += s[n, g] * sum
// with separate float32 multiplies and adds (this file is compiled with -ffp-contract=off,
// and the vector path is built for AVX2 without FMA), so they agree bit for bit with each
// other and with the numpy reference.
#include "int4_gemv.h"

#include <algorithm>
#include <cstring>
#include <string>

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

inline int code_at(const uint8_t* row, int64_t j) {
  const uint8_t b = row[j >> 1];
  return (j & 1) ? (b >> 4) : (b & 0x0F);
}

inline float tree_sum(const float* p) {
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

// Adds the codes [t0, len) of one group (scalar order) into the lanes p.
inline void group_tail(float* p, const uint8_t* row, const float* x, int64_t k0, int64_t t0,
                       int64_t len, int z) {
  for (int64_t t = t0; t < len; ++t)
    p[t % kLanes] = p[t % kLanes] + static_cast<float>(code_at(row, k0 + t) - z) * x[k0 + t];
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
        float p[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
        group_tail(p, row, x, k0, 0, len, a.zeros[n * ng + g]);
        y = y + a.scales[n * ng + g] * tree_sum(p);
      }
      a.out[mi * a.n + n] = y;
    }
  }
}

#if NEEDLE_INT4_X86
#pragma GCC diagnostic ignored "-Wpsabi"

// R output channels at once: independent accumulators hide the add latency, and one load of
// x serves all of them. Codes go byte -> 8 int32 lanes with a variable shift and a mask.
template <int R>
__attribute__((target("avx2"))) void block_avx2(const Int4GemmArgs& a, int64_t n) {
  const int64_t kb = (a.k + 1) / 2, ng = (a.k + a.group - 1) / a.group;
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i mask = _mm256_set1_epi32(0x0F);
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = a.codes + (n + r) * kb;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    const float* x = a.x + mi * a.k;
    float y[R];
    for (int r = 0; r < R; ++r) y[r] = 0.0f;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t k0 = g * a.group, len = std::min(a.group, a.k - k0), full = len / kLanes * kLanes;
      __m256i z[R];
      __m256 acc[R];
      for (int r = 0; r < R; ++r) {
        z[r] = _mm256_set1_epi32(a.zeros[(n + r) * ng + g]);
        acc[r] = _mm256_setzero_ps();
      }
      for (int64_t t = 0; t < full; t += kLanes) {
        const __m256 xv = _mm256_loadu_ps(x + k0 + t);
        const int64_t byte = (k0 + t) >> 1;
        for (int r = 0; r < R; ++r) {
          int32_t packed;
          std::memcpy(&packed, rows[r] + byte, 4);
          __m256i u = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(packed), shifts), mask);
          const __m256 w = _mm256_cvtepi32_ps(_mm256_sub_epi32(u, z[r]));
          acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(w, xv));
        }
      }
      for (int r = 0; r < R; ++r) {
        alignas(32) float p[kLanes];
        _mm256_store_ps(p, acc[r]);
        if (full < len) group_tail(p, rows[r], x, k0, full, len, a.zeros[(n + r) * ng + g]);
        y[r] = y[r] + a.scales[(n + r) * ng + g] * tree_sum(p);
      }
    }
    for (int r = 0; r < R; ++r) a.out[mi * a.n + n + r] = y[r];
  }
}

void rows_avx2(const Int4GemmArgs& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) block_avx2<4>(a, n);
  for (; n < n1; ++n) block_avx2<1>(a, n);
}
#endif

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
  if (isa == Int4Isa::kAvx2) return rows_avx2(a, n0, n1);
#endif
  rows_scalar(a, n0, n1);
}

void int4_gemm(const Int4GemmArgs& a) {
  const Int4Isa isa = int4_default_isa();
  constexpr int64_t kBlock = 64;  // rows per task: a multiple of the 4-row vector block
  const int64_t blocks = (a.n + kBlock - 1) / kBlock;
  const bool parallel = double(a.m) * double(a.n) * double(a.k) >= 16.0 * kParallelMinElements &&
                        blocks > 1;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < blocks; ++b)
    int4_gemm_rows(a, isa, b * kBlock, std::min(a.n, (b + 1) * kBlock));
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
