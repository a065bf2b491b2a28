// Argument rules of the int4 product, shared by the CPU binding (src/cpu/int4_gemv.cc), the
// CUDA binding (src/cuda/int4_ops.cu) and its host emulation (src/cuda/emulate.cu), so the
// three refuse the same operands with the same words.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "checked_size.h"

namespace needle {

struct Int4Dims {
  int64_t kb;  // code bytes per row, ceil(k / 2)
  int64_t ng;  // groups per row, ceil(k / group)
};

// Throws std::invalid_argument ("<op>: ...", Python's ValueError) unless m, n >= 0, k >= 1
// and group is a positive multiple of 8 (at most 2^30); the row sizes the operands must have.
inline Int4Dims int4_dims(const char* op, int64_t m, int64_t n, int64_t k, int64_t group) {
  if (m < 0 || n < 0 || k < 1)
    throw std::invalid_argument(std::string(op) + ": need m >= 0, n >= 0, k >= 1, got m=" +
                                std::to_string(m) + " n=" + std::to_string(n) +
                                " k=" + std::to_string(k));
  if (group < 8 || group % 8 != 0 || group > (int64_t(1) << 30))
    throw std::invalid_argument(std::string(op) + ": group must be a positive multiple of 8, "
                                "got " + std::to_string(group));
  return {checked_add(k, 1, op) / 2, checked_add(k, group - 1, op) / group};
}

// Throws std::invalid_argument naming the first zero point outside [0, 15] and its index.
inline void int4_check_zero_points(const char* op, const uint8_t* zeros, int64_t count) {
  // an OR over the whole array first (a loop the compiler vectorizes: this runs on every
  // call), the offending index only when there is one
  unsigned high = 0;
  for (int64_t i = 0; i < count; ++i) high |= zeros[i];
  if (high <= 15) return;
  for (int64_t i = 0; i < count; ++i)
    if (zeros[i] > 15)
      throw std::invalid_argument(std::string(op) + ": zero point " + std::to_string(zeros[i]) +
                                  " at " + std::to_string(i) + " is outside [0, 15]");
}

}  // namespace needle
