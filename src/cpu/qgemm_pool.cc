// See qgemm_pool.h.
#include "qgemm_pool.h"

#include <atomic>
#include <mutex>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace needle {
namespace cpu {
namespace {

// Held by the one caller whose items use the team; concurrent callers run alone rather than
// start a second team on the same cores.
std::mutex g_busy;

void run_alone(int64_t items, const std::function<void(int64_t)>& fn) {
  for (int64_t i = 0; i < items; ++i) fn(i);
}

}  // namespace

void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
#ifdef _OPENMP
  if (threads > 1 && items > 1 && !omp_in_parallel()) {
    std::unique_lock<std::mutex> own(g_busy, std::try_to_lock);
    if (own.owns_lock()) {
      std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(static_cast<int>(threads < items ? threads : items))
      for (;;) {
        const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
        if (i >= items) break;
        fn(i);
      }
      return;
    }
  }
#else
  (void)threads;
#endif
  run_alone(items, fn);
}

}  // namespace cpu
}  // namespace needle
