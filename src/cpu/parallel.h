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

// Loops shorter than this many elements run on one thread: below it waking the OpenMP team
// costs more than the work saves. The team waits passively (OMP_WAIT_POLICY=PASSIVE: a
// spinning team makes a loaded 2-core machine 5-10x slower), and waking a sleeping thread
// costs about 100 us on a 2-vCPU KVM guest (measured: a 2^16-element add took 8 us on one
// thread and 108 us on two; 2^20 elements, 427 us vs 345 us). Elementwise float32 runs at
// about 2.5 elements per nanosecond per thread.
constexpr int64_t kParallelMinElements = int64_t(1) << 20;

// The number of threads OpenMP loops use (1 when built without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The most threads set_num_threads accepts: far more than any machine's cores (oversubscribing
// a few times is allowed), far fewer than the teams whose per-thread stacks OpenMP cannot
// allocate (10^6 threads crash inside libgomp).
constexpr int kMaxThreads = 1024;

// Sets the thread count of later OpenMP loops; n must be in [1, kMaxThreads].
inline void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("set_num_threads: need 1 <= n <= " + std::to_string(kMaxThreads) +
                                ", got " + std::to_string(n));
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

}  // namespace cpu
}  // namespace needle
