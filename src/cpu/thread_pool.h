// A persistent pool of std::threads for the CPU executor (XLA's intra-op pool may run tasks
// inline, so the executor never blocks on it).
#pragma once

#include <cstdint>
#include <functional>

namespace jaxkeops::cpu {

// Total parallelism: the calling thread plus the pool's workers (= hardware concurrency).
int num_threads();

// Runs fn(0), ..., fn(n - 1), spread over the pool's workers and the calling thread (which takes
// work too), and returns when all are done. Safe to call concurrently from several threads and
// from inside fn: a caller only ever waits for items that a running thread has already claimed.
// Returns false if some fn threw (the other items still run).
bool parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace jaxkeops::cpu
