#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace jaxkeops::cpu {
namespace {

// The caller's floating-point control state (x86: MXCSR, i.e. rounding mode and flush-to-zero /
// denormals-are-zero, which XLA sets on its threads) is applied to workers while they run the
// caller's items, so results never depend on which thread computed them.
struct FpEnv {
#if defined(__SSE__)
  unsigned int csr = _mm_getcsr();
#endif
};

class ScopedFpEnv {
 public:
  explicit ScopedFpEnv(const FpEnv& env) {
#if defined(__SSE__)
    saved_ = _mm_getcsr();
    if (saved_ != env.csr) _mm_setcsr(env.csr);
#endif
  }
  ~ScopedFpEnv() {
#if defined(__SSE__)
    if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
#endif
  }

 private:
  unsigned int saved_ = 0;
};

struct Job {
  FpEnv fp_env;
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::condition_variable cv;

  // Claims and runs items until none is left.
  void work() {
    ScopedFpEnv scoped(fp_env);
    for (;;) {
      int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) return;
      try {
        (*fn)(i);
      } catch (...) {
        failed.store(true, std::memory_order_relaxed);
      }
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
  bool exhausted() const { return next.load(std::memory_order_relaxed) >= n; }
};

class Pool {
 public:
  explicit Pool(int n_threads) : active_(n_threads - 1) {}

  // The threads of one call: the caller plus the active workers.
  int size() const { return active_.load(std::memory_order_relaxed) + 1; }

  // Workers are only ever added, and only when a job needs them (so that a count lowered at
  // import never starts the default's threads). A worker whose index is at or beyond the active
  // count sleeps instead of taking jobs: lowering the count needs no thread to be joined.
  int resize(int n_threads) {
    std::lock_guard<std::mutex> lock(mu_);
    const int previous = active_.load(std::memory_order_relaxed) + 1;
    active_.store(n_threads - 1, std::memory_order_relaxed);
    cv_.notify_all();
    return previous;
  }

  bool run(int64_t n, const std::function<void(int64_t)>& fn) {
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const int active = active_.load(std::memory_order_relaxed);
      while (static_cast<int>(workers_.size()) < active) {
        const int index = static_cast<int>(workers_.size());
        workers_.emplace_back([this, index] { loop(index); });
      }
      jobs_.push_back(job);
    }
    cv_.notify_all();
    job->work();
    remove(job);
    {
      std::unique_lock<std::mutex> lock(job->mu);
      job->cv.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == job->n; });
    }
    return !job->failed.load();
  }

 private:
  void remove(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(jobs_.begin(), jobs_.end(), job);
    if (it != jobs_.end()) jobs_.erase(it);
  }

  void loop(int index) {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] {
          return index < active_.load(std::memory_order_relaxed) && !jobs_.empty();
        });
        job = jobs_.front();
      }
      job->work();
      remove(job);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> jobs_;
  std::vector<std::thread> workers_;
  std::atomic<int> active_{0};  // workers allowed to take jobs (num_threads() - 1)
};

Pool& pool() {
  // Never destroyed: workers block forever on the queue and die with the process.
  static Pool* p = [] {
    unsigned hc = std::thread::hardware_concurrency();
    return new Pool(hc > 1 ? static_cast<int>(hc) : 1);
  }();
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

int set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: the thread count must be >= 1");
  return pool().resize(n);
}

bool parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return true;
  if (n == 1 || pool().size() == 1) {
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) {
      try {
        fn(i);
      } catch (...) {
        ok = false;
      }
    }
    return ok;
  }
  return pool().run(n, fn);
}

}  // namespace jaxkeops::cpu
