// The steps of one thread of the CUDA executor's reduce kernel, host+device, shared by the
// kernels (kernels.cuh) and their host emulation (emulation.cc): the workspace of a launch, the
// work item decomposition, the pair work over one j tile and the end of a row.
#pragma once

#include <cstdint>

#include "cuda/device_program.h"
#include "cuda/reducers.cuh"
#include "cuda/tile_interpreter.h"

namespace jaxkeops::cuda {

// Workspace pointers of a launch.
struct DevGrid {
  void* params;    // batch_count x param_size (T)
  void* file;      // grid*block threads x file_size (T), element-major: coalesced
  void* inner;     // grid x inner_size x tile (T) when the tile is not in shared memory
  void* pair;      // pair registers when they exceed kPairLocalBytes: element e of lane s of
                   // thread `slot` at [(e * n_slots + slot) * kSubTile + s] (T); else null
  double* state;   // grid*block x state_size when the state does not fit kLocalState
  double* partial; // batch_count x n_outer x n_splits x state_size
  int64_t row_blocks, n_splits, range, n_items;
  int32_t tile;
  int32_t prog_smem;  // bytes of the pair program in shared memory (0: read from global)
};

// The workspace pointers of a launch planned by plan_launch, inside the workspace `ws` (host).
inline DevGrid grid_in_workspace(const LaunchPlan& plan, char* ws) {
  DevGrid g{};
  g.params = ws + plan.off_params;
  g.file = ws + plan.off_file;
  g.inner = plan.inner_in_global ? ws + plan.off_inner : nullptr;
  g.pair = plan.pair_in_global ? ws + plan.off_pair : nullptr;
  g.state = reinterpret_cast<double*>(ws + plan.off_state);
  g.partial = reinterpret_cast<double*>(ws + plan.off_partial);
  g.row_blocks = plan.row_blocks;
  g.n_splits = plan.n_splits;
  g.range = plan.range;
  g.n_items = plan.n_items;
  g.tile = plan.tile;
  g.prog_smem = int32_t(plan.prog_smem);
  return g;
}

// One work item: (batch problem, row block, chunk of the inner axis).
struct WorkItem {
  int64_t b, row_block, j0, j1, split;
};

JAXKEOPS_HD inline WorkItem work_item(const DevGrid& g, const DevCall& c, int64_t item) {
  WorkItem w;
  w.split = item % g.n_splits;
  const int64_t rest = item / g.n_splits;
  w.row_block = rest % g.row_blocks;
  w.b = rest / g.row_blocks;
  w.j0 = w.split * g.range;
  w.j1 = c.n_inner < w.j0 + g.range ? c.n_inner : w.j0 + g.range;
  return w;
}

// The pair phase and the reducer over the first nv lanes of a j tile (starting at inner index
// t0), one sub-tile at a time.
template <class T, class Ops>
JAXKEOPS_HD inline void pair_tile(const DevProgram& p, const PairInstr* prog,
                                  const DevReduction& red, PairCtx<T> c, const T* tile, int nv,
                                  int64_t t0, double* st) {
  for (int l0 = 0; l0 < nv; l0 += S) {
    c.base[kInner] = tile + l0;
    run_pair_subtile(prog, p.n_pair, c, p.terms);
    const View<T> r0 = view_of(c, p.result_args[0]);
    const View<T> r1 = view_of(c, p.result_args[1]);
    Ops::accumulate(red, st, r0, r1, t0 + l0, nv - l0 < S ? nv - l0 : S);
  }
}

// The end of a row's chunk: its outputs, or its partial state for combine.
template <class T, class Ops>
JAXKEOPS_HD inline void finish_row(const DevReduction& red, const DevCall& c, const DevGrid& g,
                                   const WorkItem& w, int64_t row, const double* st) {
  const int64_t flat_row = w.b * c.n_outer + row;
  if (g.n_splits == 1) {
    Ops::finalize(red, st, RowWriter<T>{&c, flat_row});
  } else {
    double* out = g.partial + (flat_row * g.n_splits + w.split) * red.state_size;
    for (int k = 0; k < red.state_size; ++k) out[k] = st[k];
  }
}

// Merges the partial states of one row in inner order and writes its outputs.
template <class T, class Ops>
JAXKEOPS_HD inline void combine_row(const DevReduction& red, const DevCall& c, const DevGrid& g,
                                    int64_t flat_row) {
  double* acc = g.partial + flat_row * g.n_splits * red.state_size;
  for (int64_t s = 1; s < g.n_splits; ++s) Ops::combine(red, acc, acc + s * red.state_size);
  Ops::finalize(red, acc, RowWriter<T>{&c, flat_row});
}

}  // namespace jaxkeops::cuda
