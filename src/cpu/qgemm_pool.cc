// See qgemm_pool.h.
#include "qgemm_pool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <pthread.h>
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

  // Held around fork() (see before_fork), so no helper is inside the pool's critical section.
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }

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
// queue behind it. It also guards g_pool.
std::mutex g_busy;
Pool* g_pool = nullptr;  // created on first use; never destroyed (no thread joins at exit)

// fork() copies only the forking thread: a child would inherit helpers_ entries for threads
// that do not exist (so no helper ever joins it) and possibly a mutex held by one of them
// forever. Around a fork the forking thread therefore holds both locks, so no call is inside
// the pool; the child forgets the old pool (leaked: its std::thread objects cannot be
// destroyed) and builds a new one on its first parallel call.
void before_fork() {
  g_busy.lock();
  if (g_pool) g_pool->lock();
}
void after_fork_in_parent() {
  if (g_pool) g_pool->unlock();
  g_busy.unlock();
}
void after_fork_in_child() {
  g_pool = nullptr;
  g_busy.unlock();
}
const int g_fork_handlers = pthread_atfork(before_fork, after_fork_in_parent,
                                           after_fork_in_child);

}  // namespace

void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
  bool nested = false;
#ifdef _OPENMP
  nested = omp_in_parallel();
#endif
  if (threads > 1 && items > 1 && !nested) {
    std::unique_lock<std::mutex> own(g_busy, std::try_to_lock);
    if (own.owns_lock()) {
      if (!g_pool) g_pool = new Pool;
      g_pool->run(items, static_cast<int>(threads < items ? threads : items), fn);
      return;
    }
  }
  run_alone(items, fn);
}

}  // namespace cpu
}  // namespace needle
