// Weight-only int4 matrix products of the CPU backend (docs/ARCHITECTURE.md, "Weight-only
// int4"): y [m, n] = x [m, k] @ W^T with W [n, k] stored as packed 4-bit codes, one float32
// scale and one zero point per group of `group` values of a row. Built for batch-1
// generation (m = 1, a memory-bound matrix-vector product): the codes are unpacked in
// registers and never expanded into a float weight matrix.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

namespace needle {
namespace cpu {

struct Int4GemmArgs {
  const float* x;          // [m, k] float32
  const uint8_t* codes;    // [n, ceil(k / 2)], code j in the low nibble of byte j/2 if j even
  const float* scales;     // [n, groups]
  const uint8_t* zeros;    // [n, groups], each in [0, 15]
  float* out;              // [m, n]
  int64_t m, n, k, group;  // group: a positive multiple of 8; groups = ceil(k / group)
};

enum class Int4Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The exact float32 order of reference.int4_gemm_reference (8 + 8 partial sums per group,
// then a fixed tree, then y += s * sum), on the given path; rows [n0, n1) only. The AVX2
// and AVX-512 paths serve group sizes that are multiples of 16 (32, 64, 128, ...); other
// group sizes run the scalar loop (same bits). AVX-512 works on eight channels at a time
// (one row of x: unpacked in registers; several: through a tile shared by the rows); the
// last n % 8 channels run the AVX2 code.
void int4_gemm_rows(const Int4GemmArgs& a, Int4Isa isa, int64_t n0, int64_t n1);
// All rows, split over the backend's threads when the matrix is large. isa: the best path
// NEEDLE_ISA and the CPU allow (AVX-512, AVX2 or scalar).
void int4_gemm(const Int4GemmArgs& a);
Int4Isa int4_default_isa();
const char* int4_isa_name(Int4Isa isa);

// Adds int4_gemm and _int4_gemm_isa to the CPU module.
void register_int4_ops(pybind11::module_& m);

}  // namespace cpu
}  // namespace needle
