// CUDA executor: a tile-at-a-time register interpreter, one thread per output row. The kernels
// and their launch, instantiated per dtype by executor_f32.cu and executor_f64.cu (two
// translation units: they compile in parallel).
//
// A block holds `block` consecutive output rows of one batch problem and walks one chunk of the
// inner axis in j tiles. Instructions are hoisted by role, as on the CPU:
//   param  once per batch problem (param_kernel, before the main kernel)
//   outer  once per thread (its row), into the thread's register file
//   inner  once per j tile, each lane by one thread of the block, into the tile (shared memory)
//   pair   per sub-tile of kSubTile j (tile_interpreter.h: each instruction dispatched once for
//          the whole sub-tile), then the reducer accumulates the sub-tile (reducers.cuh)
// The per-thread code is host+device (tile_interpreter.h, reducers.cuh, thread_steps.h): the
// CPU module runs it as a host emulation of these kernels (emulation.cc), tested in CI.
// Every thread of a block runs the same tile loop, so the barriers and control flow are uniform
// across a warp; only rows past n_outer skip the pair work.
//
// Split reduction: when batch x row blocks cannot fill the GPU (e.g. M = 100, N = 10^6), the
// inner axis is cut into `n_splits` chunks handled by different blocks; each writes its partial
// reducer state to the workspace and combine_kernel merges them in inner order (ties keep the
// lowest index) and writes the outputs. Everything is enqueued on XLA's stream, without any
// synchronisation.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/device_program.h"
#include "cuda/reducers.cuh"
#include "cuda/thread_steps.h"
#include "cuda/tile_interpreter.h"
#include "ops.h"
#include "program.h"

namespace jaxkeops::cuda {
namespace {

template <class T>
__global__ void param_kernel(const __grid_constant__ DevProgram p,
                             const __grid_constant__ DevCall c, const __grid_constant__ DevGrid g) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= c.batch_count) return;
  Frame<T> f{};
  f.base[kParam] = static_cast<T*>(g.params) + b * p.param_size;
  f.stride[kParam] = 1;
  f.b = b;
  run_phase<T>(p, c, f, kParam);
}

template <class T, class Ops>
__global__ void reduce_kernel(const __grid_constant__ DevProgram p,
                              const __grid_constant__ DevReduction red,
                              const __grid_constant__ DevCall c,
                              const __grid_constant__ DevGrid g) {
  extern __shared__ __align__(16) unsigned char smem[];
  // 32-bit: the workspace budget bounds the slots (and every storage) far below 2^31.
  const int32_t n_slots = int32_t(gridDim.x * blockDim.x);
  const int32_t slot = int32_t(blockIdx.x * blockDim.x + threadIdx.x);

  // The pair program, pre-decoded on the host, copied to shared memory once per block.
  const PairInstr* prog = p.pair;
  if (g.prog_smem > 0) {
    const int32_t* src = reinterpret_cast<const int32_t*>(p.pair);
    int32_t* dst = reinterpret_cast<int32_t*>(smem);
    const int words = p.n_pair * int(sizeof(PairInstr) / sizeof(int32_t));
    for (int k = threadIdx.x; k < words; k += blockDim.x) dst[k] = src[k];
    prog = reinterpret_cast<const PairInstr*>(smem);
    __syncthreads();
  }
  T* tile = g.inner ? static_cast<T*>(g.inner) + int64_t(blockIdx.x) * p.inner_size * g.tile
                    : reinterpret_cast<T*>(smem + g.prog_smem);
  double local_state[kLocalState];
  double* st = red.state_size <= kLocalState ? local_state : g.state + int64_t(slot) * red.state_size;
  T pair_local[kPairLocalElems<T> * kSubTile];
  const bool has_inner = p.phase_begin[kInner + 1] > p.phase_begin[kInner];

  PairCtx<T> pc;
  pc.base[kOuter] = static_cast<const T*>(g.file) + slot;
  pc.ds[kParam] = 1;
  pc.ds[kOuter] = n_slots;
  pc.ds[kInner] = g.tile;
  pc.pr = g.pair ? static_cast<T*>(g.pair) + slot * kSubTile : pair_local;
  pc.pr_ds = g.pair ? n_slots * kSubTile : kSubTile;
  pc.base[kPair] = pc.pr;
  pc.ds[kPair] = pc.pr_ds;

  Frame<T> f{};
  f.stride[kParam] = 1;
  f.base[kOuter] = static_cast<T*>(g.file) + slot;
  f.stride[kOuter] = n_slots;
  f.stride[kInner] = g.tile;

  for (int64_t item = blockIdx.x; item < g.n_items; item += gridDim.x) {
    const WorkItem w = work_item(g, c, item);
    f.b = w.b;
    f.base[kParam] = static_cast<T*>(g.params) + w.b * p.param_size;
    pc.base[kParam] = f.base[kParam];
    f.row = w.row_block * blockDim.x + threadIdx.x;
    const bool valid = f.row < c.n_outer;

    if (valid) run_phase<T>(p, c, f, kOuter);
    Ops::init(red, st);
    const int64_t r0 = w.row_block * blockDim.x;
    for_each_span(c, w.j0, w.j1, r0, r0 + blockDim.x, [&](int64_t j0, int64_t j1, Span rows) {
      const bool active = valid && f.row >= rows.begin && f.row < rows.end;
      for (int64_t t0 = j0; t0 < j1; t0 += g.tile) {
        const int nv = int(min(int64_t(g.tile), j1 - t0));
        if (has_inner) {
          __syncthreads();  // the previous tile is consumed
          for (int l = threadIdx.x; l < nv; l += blockDim.x) {
            f.base[kInner] = tile + l;
            f.j = t0 + l;
            run_phase<T>(p, c, f, kInner);
          }
          __syncthreads();
        }
        if (active) pair_tile<T, Ops>(p, prog, red, pc, tile, nv, t0, st);
      }
    });
    if (valid) finish_row<T, Ops>(red, c, g, w, f.row, st);
  }
}

// Merges the partial states of each row in inner order and writes the outputs.
template <class T, class Ops>
__global__ void combine_kernel(const __grid_constant__ DevReduction red,
                               const __grid_constant__ DevCall c,
                               const __grid_constant__ DevGrid g) {
  const int64_t flat_row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (flat_row >= c.batch_count * c.n_outer) return;
  combine_row<T, Ops>(red, c, g, flat_row);
}

template <class T, class Ops>
std::string launch_family(const DevProgram& prog, const DevReduction& red, const DevCall& call,
                          const LaunchPlan& plan, void* workspace, cudaStream_t stream) {
  char* ws = static_cast<char*>(workspace);
  const DevGrid g = grid_in_workspace(plan, ws);

  if (prog.phase_begin[kParam + 1] > prog.phase_begin[kParam]) {
    const int threads = 64;
    const unsigned blocks = unsigned((call.batch_count + threads - 1) / threads);
    param_kernel<T><<<blocks, threads, 0, stream>>>(prog, call, g);
  }
  reduce_kernel<T, Ops><<<unsigned(plan.grid), plan.block, plan.smem, stream>>>(prog, red, call, g);
  if (plan.n_splits > 1) {
    const int threads = 128;
    const int64_t rows = call.batch_count * call.n_outer;
    combine_kernel<T, Ops><<<unsigned((rows + threads - 1) / threads), threads, 0, stream>>>(
        red, call, g);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return std::string("jaxkeops CUDA executor: kernel launch failed: ") + cudaGetErrorString(err);
  return "";
}

}  // namespace

template <class T>
std::string launch(const DevProgram& prog, const DevReduction& red, const DevCall& call,
                   const LaunchPlan& plan, void* workspace, void* stream) {
  if (call.n_outer <= 0 || call.batch_count <= 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (static_cast<Family>(red.family)) {
    case Family::kSum: return launch_family<T, SumOps>(prog, red, call, plan, workspace, s);
    case Family::kExpSum: return launch_family<T, ExpSumOps>(prog, red, call, plan, workspace, s);
    case Family::kMinMax: return launch_family<T, MinMaxOps>(prog, red, call, plan, workspace, s);
    case Family::kKMin: return launch_family<T, KMinOps>(prog, red, call, plan, workspace, s);
  }
  return "jaxkeops CUDA executor: unknown reduction family";
}

}  // namespace jaxkeops::cuda
