// Launch planning of the CUDA executor: grid, tiles, split of the inner axis, workspace layout.
// Host code shared by the CUDA module and its host emulation (which plans as for an H100).
#include <algorithm>
#include <string>

#include "cuda/device_program.h"

namespace jaxkeops::cuda {
namespace {

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

bool plan_launch(const DevProgram& prog, const DevReduction& red, const DevCall& call,
                 int sm_count, size_t elem_size, LaunchPlan* plan, std::string* error) {
  LaunchPlan& pl = *plan;
  const int64_t M = call.n_outer, N = call.n_inner, S = red.state_size;
  if (S > kMaxStateDoubles) {
    *error = "jaxkeops CUDA executor: the reduction needs " + std::to_string(S) +
             " doubles of state per output row (KMin: 2 * K * dim), above the GPU limit of " +
             std::to_string(kMaxStateDoubles) + "; use a smaller K or run on CPU";
    return false;
  }
  sm_count = std::max(sm_count, 1);
  pl.block = 128;
  pl.row_blocks = (M + pl.block - 1) / pl.block;
  const int64_t base_items = call.batch_count * pl.row_blocks;

  // Shared memory (48 KiB): the pre-decoded pair program when it takes at most 16 KiB (else it is
  // read from global memory), then the j tile, as wide as the block while its inner registers
  // fit. Tile widths are multiples of the sub-tile.
  constexpr size_t kSmem = 48 * 1024;
  const size_t prog_bytes = (size_t(prog.n_pair) * sizeof(PairInstr) + 15) / 16 * 16;
  pl.prog_smem = prog_bytes <= 16 * 1024 ? prog_bytes : 0;
  const size_t tile_room = kSmem - pl.prog_smem;
  const size_t lane_bytes = size_t(prog.inner_size) * elem_size;
  pl.tile = 128;
  while (pl.tile > kSubTile && lane_bytes * pl.tile > tile_room) pl.tile /= 2;
  pl.inner_in_global = lane_bytes * pl.tile > tile_room;
  pl.smem = pl.prog_smem + (pl.inner_in_global ? 0 : lane_bytes * pl.tile);
  // Pair registers: in the thread's local memory up to kPairLocalBytes, else in the workspace.
  const size_t pair_bytes = size_t(prog.pair_size) * kSubTile * elem_size;
  pl.pair_in_global = pair_bytes > size_t(kPairLocalBytes);

  // Split the inner axis when the rows alone cannot fill the GPU; chunks stay >= 4 tiles.
  const int64_t target = int64_t(sm_count) * 8;
  pl.n_splits = 1;
  // (Block-sparse calls are not split: a block walks its clusters' ranges, not a chunk.)
  if (N > 0 && base_items < target && !call.has_ranges) {
    const int64_t want = (target + base_items - 1) / base_items;
    const int64_t by_size = std::max<int64_t>(1, N / (4 * int64_t(pl.tile)));
    pl.n_splits = std::min(want, by_size);
  }
  constexpr size_t kPartialBudget = size_t(256) << 20;
  auto set_range = [&] {
    const int64_t per = (N + pl.n_splits - 1) / std::max<int64_t>(pl.n_splits, 1);
    pl.range = std::max<int64_t>((per + pl.tile - 1) / pl.tile * pl.tile, pl.tile);
    pl.n_splits = N > 0 ? (N + pl.range - 1) / pl.range : 1;
  };
  set_range();
  while (pl.n_splits > 1 &&
         size_t(call.batch_count * M * pl.n_splits * S) * sizeof(double) > kPartialBudget) {
    pl.n_splits = (pl.n_splits + 1) / 2;
    set_range();
  }
  pl.n_items = base_items * pl.n_splits;

  // Resident blocks: enough to fill the GPU, fewer when the per-thread workspace is large.
  constexpr size_t kWorkspaceBudget = size_t(512) << 20;
  const size_t per_block = size_t(pl.block) * size_t(prog.file_size) * elem_size +
                           (S > kLocalState ? size_t(pl.block) * S * sizeof(double) : 0) +
                           (pl.inner_in_global ? lane_bytes * pl.tile : 0) +
                           (pl.pair_in_global ? size_t(pl.block) * pair_bytes : 0);
  int64_t grid = std::min<int64_t>(std::max<int64_t>(pl.n_items, 1), int64_t(sm_count) * 16);
  if (per_block > 0)
    grid = std::min<int64_t>(grid, std::max<int64_t>(1, int64_t(kWorkspaceBudget / per_block)));
  pl.grid = grid;

  size_t at = 0;
  pl.off_params = at;
  at += align_up(size_t(call.batch_count) * prog.param_size * elem_size);
  pl.off_file = at;
  at += align_up(size_t(grid) * pl.block * prog.file_size * elem_size);
  pl.off_inner = at;
  if (pl.inner_in_global) at += align_up(size_t(grid) * lane_bytes * pl.tile);
  pl.off_pair = at;
  if (pl.pair_in_global) at += align_up(size_t(grid) * pl.block * pair_bytes);
  pl.off_state = at;
  if (S > kLocalState) at += align_up(size_t(grid) * pl.block * S * sizeof(double));
  pl.off_partial = at;
  if (pl.n_splits > 1) at += align_up(size_t(call.batch_count * M * pl.n_splits * S) * sizeof(double));
  pl.bytes = std::max<size_t>(at, 256);
  return true;
}

}  // namespace jaxkeops::cuda
