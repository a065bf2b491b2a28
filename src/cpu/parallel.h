// Thread count shared by the CPU backend's OpenMP loops (set_num_threads / get_num_threads).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace needle {
namespace cpu {

// Loops shorter than this many elements run on one thread: below it the fork/join costs more
// than the work (elementwise float32 runs at several elements per nanosecond).
constexpr int64_t kParallelMinElements = int64_t(1) << 16;

// The number of threads OpenMP loops use (1 when built without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Sets the thread count of later OpenMP loops; n must be >= 1.
inline void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: need n >= 1, got " + std::to_string(n));
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

}  // namespace cpu
}  // namespace needle
