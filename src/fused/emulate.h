// Host emulation of the fused kernels: the CUDA grid of src/cuda/fused.cu run on the CPU, block
// after block, with the same per-thread code (kernel_body.h) in the same order per thread: the
// tile staged once per block, then every thread's pass over it; split states merged afterwards
// in inner order. Correctness, not speed: it exists so that the kernels' math runs in CI.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/thread_pool.h"
#include "fused/dispatch.h"
#include "fused/kernel_body.h"

namespace jaxkeops::fused {

// The grid of one launch (call already planned for Body).
template <class T, class Body>
void emulate_launch(const FusedCall& call) {
  using Acc = typename Body::Accumulator;
  const int64_t n_items = call.batch_count * call.n_chunks * call.row_blocks * call.n_splits;
  cpu::parallel_for(n_items, [&](int64_t item) {
    const WorkItem w = work_item(call, item);
    const Problem<T> p = problem_of<T>(call, w.b);
    std::vector<T> staged(kTile * 8);
    std::vector<Body> threads(kThreads);
    for (int t = 0; t < kThreads; ++t) threads[t].begin(call, p, w, t, kThreads);
    int64_t first, end;
    split_tiles(call, w.split, &first, &end);
    for (int64_t tile = first; tile < end; ++tile) {
      const int64_t j0 = tile * call.tile;
      const int n = int(call.n_inner - j0 < call.tile ? call.n_inner - j0 : call.tile);
      for (int t = 0; t < kThreads; ++t) Body::stage(call, p, staged.data(), j0, n, t, kThreads);
      for (int t = 0; t < kThreads; ++t) threads[t].tile(call, p, staged.data(), j0, n);
    }
    for (int t = 0; t < kThreads; ++t) threads[t].finish(call, p, w);
  });
  if (call.n_splits > 1) {
    const int64_t rows = call.batch_count * call.n_chunks * call.n_outer;
    cpu::parallel_for(rows, [&](int64_t r) {
      const CombineRow cr = combine_row_of(call, r);
      const int c0 = cr.chunk * call.chunk;
      const int nc = call.value_dim - c0 < call.chunk ? call.value_dim - c0 : call.chunk;
      RowState<T, Acc>::combine_row(call, cr.b, cr.row, c0, nc);
    });
  }
}

}  // namespace jaxkeops::fused
