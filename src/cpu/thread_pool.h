// A persistent pool of std::threads for the CPU executor (XLA's intra-op pool may run tasks
// inline, so the executor never blocks on it).
#pragma once

#include <cstdint>
#include <functional>

namespace jaxkeops::cpu {

// Total parallelism of one call: the calling thread plus the pool's active workers. Hardware
// concurrency unless set_num_threads changed it (jaxkeops/cpu_threads.py applies the
// JAXKEOPS_NUM_THREADS environment variable with it when jaxkeops is imported).
int num_threads();

// Sets num_threads() to n >= 1 (1: every call runs on the thread XLA calls it from) and returns
// the previous value. Takes effect for the calls that start afterwards; workers beyond n - 1
// finish the job they are on and then sleep. Throws std::invalid_argument if n < 1.
int set_num_threads(int n);

// Runs fn(0), ..., fn(n - 1), spread over the pool's workers and the calling thread (which takes
// work too), and returns when all are done. Safe to call concurrently from several threads and
// from inside fn: a caller only ever waits for items that a running thread has already claimed.
// Returns false if some fn threw (the other items still run).
bool parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace jaxkeops::cpu
