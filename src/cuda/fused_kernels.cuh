// The fused kernels' templates (CUDA only): one kernel per body of src/fused/kernel_body.h and
// the merge of split states. src/cuda/fused.cu instantiates them for every body the dispatcher
// (src/fused/dispatch.h) can choose.
#pragma once

#include <cstdint>

#include "fused/dispatch.h"
#include "fused/kernel_body.h"

namespace jaxkeops::cuda {

using namespace jaxkeops::fused;

// One block per work item (grid-stride over them): stage a tile, every thread consumes it.
template <class T, class Body>
__global__ void __launch_bounds__(kThreads, Body::kMinBlocks)
    jaxkeops_fused_kernel(const __grid_constant__ FusedCall call) {
  __shared__ __align__(16) T staged[kTile * Body::W];
  const int64_t n_items = call.batch_count * call.n_chunks * call.row_blocks * call.n_splits;
  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    const WorkItem w = work_item(call, item);
    const Problem<T> p = problem_of<T>(call, w.b);
    Body body;
    body.begin(call, p, w, threadIdx.x, kThreads);
    int64_t first, end;
    split_tiles(call, w.split, &first, &end);
    for (int64_t tile = first; tile < end; ++tile) {
      const int64_t j0 = tile * call.tile;
      const int n = int(call.n_inner - j0 < call.tile ? call.n_inner - j0 : call.tile);
      if constexpr (Body::kStaged) {
        __syncthreads();  // the previous tile is consumed
        Body::stage(call, p, staged, j0, n, threadIdx.x, kThreads);
        __syncthreads();
      }
      body.tile(call, p, staged, j0, n);
    }
    body.finish(call, p, w);
  }
}

// Merges the split states of each (problem, chunk, row), in inner order, and writes outputs.
template <class T, class Acc>
__global__ void __launch_bounds__(kThreads, 1)
    jaxkeops_fused_combine(const __grid_constant__ FusedCall call) {
  const int64_t rows = call.batch_count * call.n_chunks * call.n_outer;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    const CombineRow cr = combine_row_of(call, r);
    const int c0 = cr.chunk * call.chunk;
    const int nc = call.value_dim - c0 < call.chunk ? call.value_dim - c0 : call.chunk;
    RowState<T, Acc>::combine_row(call, cr.b, cr.row, c0, nc);
  }
}

}  // namespace jaxkeops::cuda
