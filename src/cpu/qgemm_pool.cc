// See qgemm_pool.h.
//
// Protocol. The caller publishes a Job (job_ + a new generation_), works through the items
// itself, retires the job (job_ = nullptr) and then waits only while users_ > 0, i.e. while
// a helper is inside the job. A helper announces itself (users_++) *before* it reads job_, and
// the caller reads users_ *after* clearing job_ (both sequentially consistent), so a helper
// either sees the job and is waited for, or sees nullptr and leaves it alone. Helpers that
// are asleep or not scheduled are never waited for.
#include "qgemm_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace needle {
namespace cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// After a job a helper keeps polling this long before it sleeps, so back-to-back calls (a
// network's layers) find it awake instead of paying a futex wake-up each. Kept short: on a
// 2-core machine a spinning helper takes the core other thread pools (OpenMP) want next.
constexpr auto kSpin = std::chrono::microseconds(50);

class Pool {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: helpers may outlive static destructors
    return *pool;
  }

  void run(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> own(busy_, std::try_to_lock);
    if (threads <= 1 || items <= 1 || !own.owns_lock()) {
      for (int64_t i = 0; i < items; ++i) fn(i);
      return;
    }
    Job job;
    job.fn = &fn;
    job.items = items;
    job.slots.store(threads - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      while (static_cast<int>(helpers_.size()) < threads - 1)
        helpers_.emplace_back([this] { helper_loop(); });
      job_.store(&job);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    work(job);
    job_.store(nullptr);  // no helper can enter the job from now on
    for (int spins = 0; users_.load() != 0; ++spins) {
      if (spins < 4096)
        cpu_relax();
      else
        std::this_thread::yield();
    }
  }

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t items = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int> slots{0};  // helpers that may still join
  };

  static void work(Job& job) {
    for (;;) {
      const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job.items) return;
      (*job.fn)(i);
    }
  }

  void helper_loop() {
    uint64_t seen = generation_.load();
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int spins = 0; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        cpu_relax();
        if ((spins & 255) == 255 && std::chrono::steady_clock::now() - t0 > kSpin) {
          std::unique_lock<std::mutex> lk(m_);
          wake_.wait(lk, [&] { return generation_.load() != seen; });
          break;
        }
      }
      seen = generation_.load();
      users_.fetch_add(1);
      Job* job = job_.load();
      if (job != nullptr && job->slots.fetch_sub(1) > 0) work(*job);
      users_.fetch_sub(1);
    }
  }

  Pool() = default;

  std::mutex busy_;  // held by the one caller whose job the helpers serve
  std::mutex m_;     // guards helpers_ and the sleep/wake of helpers
  std::condition_variable wake_;
  std::vector<std::thread> helpers_;
  std::atomic<Job*> job_{nullptr};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> users_{0};
};

}  // namespace

void parallel_items(int64_t items, int threads, const std::function<void(int64_t)>& fn) {
  Pool::instance().run(items, threads, fn);
}

}  // namespace cpu
}  // namespace needle
