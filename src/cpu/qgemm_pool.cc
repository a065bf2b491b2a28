// See qgemm_pool.h.
#include "qgemm_pool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace needle {
namespace cpu {
namespace {

void run_alone(int64_t items, const std::function<void(int64_t)>& fn) {
  for (int64_t i = 0; i < items; ++i) fn(i);
}

// Helper threads that sleep on a condition variable between calls. A call publishes its job,
// wakes the helpers and works through the items itself; when the items are gone it waits only
// for helpers that are inside an item. A helper that had not started by then (its core busy
// with other work) finds no job when it does run, so a descheduled helper never delays a call.
class Pool {
 public:
  void run(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (static_cast<int>(helpers_.size()) < threads - 1)
        helpers_.emplace_back([this] { helper(); });
      fn_ = &fn;
      items_ = items;
      next_.store(0, std::memory_order_relaxed);
      wanted_ = threads - 1;
      joined_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    for (int64_t i = next_.fetch_add(1); i < items; i = next_.fetch_add(1)) fn(i);
    std::unique_lock<std::mutex> lk(mu_);
    fn_ = nullptr;  // helpers that wake from now on find nothing to do
    idle_.wait(lk, [this] { return active_ == 0; });
  }

 private:
  void helper() {
    std::unique_lock<std::mutex> lk(mu_);
    uint64_t seen = 0;
    for (;;) {
      wake_.wait(lk, [&] { return generation_ != seen && fn_ != nullptr; });
      seen = generation_;
      if (joined_ >= wanted_) continue;  // this call asked for fewer threads
      ++joined_;
      ++active_;
      const std::function<void(int64_t)>* fn = fn_;
      const int64_t items = items_;
      lk.unlock();
      for (int64_t i = next_.fetch_add(1); i < items; i = next_.fetch_add(1)) (*fn)(i);
      lk.lock();
      if (--active_ == 0) idle_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::vector<std::thread> helpers_;  // never joined: the pool lives as long as the process
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t items_ = 0;
  std::atomic<int64_t> next_{0};
  int wanted_ = 0, joined_ = 0, active_ = 0;
  uint64_t generation_ = 0;
};

// Held by the one caller whose items use the pool; concurrent callers run alone rather than
// queue behind it.
std::mutex g_busy;

}  // namespace

void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
  bool nested = false;
#ifdef _OPENMP
  nested = omp_in_parallel();
#endif
  if (threads > 1 && items > 1 && !nested) {
    std::unique_lock<std::mutex> own(g_busy, std::try_to_lock);
    if (own.owns_lock()) {
      static Pool* pool = new Pool;  // leaked on purpose: no thread joins at process exit
      pool->run(items, static_cast<int>(threads < items ? threads : items), fn);
      return;
    }
  }
  run_alone(items, fn);
}

}  // namespace cpu
}  // namespace needle
