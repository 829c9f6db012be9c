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

// Block-sparse calls (block_ranges.h): a block of rows walks, for each cluster meeting its rows,
// that cluster's inner ranges; its threads whose row is in the cluster do the pair work. Bounds
// are clamped to the grid: ranges values are not checked on the device.
struct Span {
  int64_t begin, end;
};

JAXKEOPS_HD inline int64_t clamp_to(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

// Rows [begin, end) of cluster k.
JAXKEOPS_HD inline Span cluster_rows(const DevCall& c, int64_t k) {
  const int64_t a = clamp_to(c.ranges.clusters[2 * k], 0, c.n_outer);
  return {a, clamp_to(c.ranges.clusters[2 * k + 1], a, c.n_outer)};
}

// Cluster k's inner ranges: positions [begin, end) in ranges.inner_ranges.
JAXKEOPS_HD inline Span cluster_slice(const DevCall& c, int64_t k) {
  const int64_t n = c.ranges.n_inner_ranges;
  const int64_t a = clamp_to(c.ranges.first_range(k), 0, n);
  return {a, clamp_to(c.ranges.slice_ends[k], a, n)};
}

// Inner indices [begin, end) of inner range t.
JAXKEOPS_HD inline Span inner_span(const DevCall& c, int64_t t) {
  const int64_t a = clamp_to(c.ranges.inner_ranges[2 * t], 0, c.n_inner);
  return {a, clamp_to(c.ranges.inner_ranges[2 * t + 1], a, c.n_inner)};
}

// Calls visit(j0, j1, in_cluster) for each inner span a block of rows [r0, r1) reduces over:
// the whole chunk [w.j0, w.j1) when dense (every row in), else each inner range of each cluster
// meeting the rows, with in_cluster(row) saying which rows it belongs to. The same calls for
// every thread of the block (uniform control flow).
template <class Visit>
JAXKEOPS_HD inline void for_each_span(const DevCall& c, int64_t j0, int64_t j1, int64_t r0,
                                      int64_t r1, Visit&& visit) {
  if (!c.has_ranges) {
    visit(j0, j1, Span{r0, r1});
    return;
  }
  for (int64_t k = 0; k < c.ranges.n_clusters; ++k) {
    const Span rows = cluster_rows(c, k);
    if (rows.end <= r0 || rows.begin >= r1) continue;
    const Span slice = cluster_slice(c, k);
    // Adjacent ranges (neighbouring clusters of the other axis) merge into one span.
    Span run{0, 0};
    for (int64_t t = slice.begin; t < slice.end; ++t) {
      const Span inner = inner_span(c, t);
      if (inner.end <= inner.begin) continue;
      if (run.end > run.begin && run.end == inner.begin) {
        run.end = inner.end;
        continue;
      }
      if (run.end > run.begin) visit(run.begin, run.end, rows);
      run = inner;
    }
    if (run.end > run.begin) visit(run.begin, run.end, rows);
  }
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
