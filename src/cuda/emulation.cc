// The FFI target "jaxkeops_reduce_gpu_emulation" for platform "cpu": the CUDA executor's kernels
// run on the host, one block at a time with its threads emulated in a loop, through the same
// per-thread code (tile_interpreter.h, reducers.cuh, thread_steps.h), the same launch plan (as
// for an H100: 132 SMs) and the same tile, sub-tile and split order. It takes exactly the
// operands and attributes of "jaxkeops_reduce". Tests use it to check the GPU code without a GPU;
// it is single-threaded and not meant for real work.
#include "cuda/emulation.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "call_layout.h"
#include "cuda/device_program.h"
#include "cuda/host_program.h"
#include "cuda/reducers.cuh"
#include "cuda/thread_steps.h"
#include "cuda/tile_interpreter.h"
#include "program.h"
#include "xla/ffi/api/ffi.h"

namespace jaxkeops::cuda {
namespace {

constexpr int kEmulatedSMs = 132;  // an H100 SXM: decides the grid and the split reduction

// One launch of param_kernel, reduce_kernel and (split) combine_kernel, block after block.
template <class T, class Ops>
void run_launch(const DevProgram& p, const DevReduction& red, const DevCall& c,
                const LaunchPlan& plan, char* ws) {
  const DevGrid g = grid_in_workspace(plan, ws);

  for (int64_t b = 0; b < c.batch_count; ++b) {  // param_kernel
    Frame<T> f{};
    f.base[kParam] = static_cast<T*>(g.params) + b * p.param_size;
    f.stride[kParam] = 1;
    f.b = b;
    run_phase<T>(p, c, f, kParam);
  }

  const int block = plan.block;
  const int32_t n_slots = int32_t(plan.grid) * block;
  // The block's shared memory: the pair program (a copy, as the kernel makes), then the tile.
  std::vector<PairInstr> prog(p.pair, p.pair + p.n_pair);
  std::vector<T> smem_tile(size_t(p.inner_size) * g.tile);
  std::vector<double> local_states(size_t(block) * kLocalState);
  std::vector<T> pair_local(size_t(kPairLocalElems<T>) * kSubTile);
  const bool has_inner = p.phase_begin[kInner + 1] > p.phase_begin[kInner];

  for (int64_t item = 0; item < g.n_items; ++item) {
    const int32_t blk = int32_t(item % plan.grid);  // items are strided over resident blocks
    T* tile = g.inner ? static_cast<T*>(g.inner) + int64_t(blk) * p.inner_size * g.tile
                      : smem_tile.data();
    const WorkItem w = work_item(g, c, item);
    T* params = static_cast<T*>(g.params) + w.b * p.param_size;
    auto state_of = [&](int t) {
      const int32_t slot = blk * block + t;
      return red.state_size <= kLocalState ? local_states.data() + size_t(t) * kLocalState
                                           : g.state + int64_t(slot) * red.state_size;
    };
    auto row_of = [&](int t) { return w.row_block * block + t; };

    for (int t = 0; t < block; ++t) {  // outer phase and reducer init, per thread
      const int32_t slot = blk * block + t;
      if (row_of(t) < c.n_outer) {
        Frame<T> f{};
        f.base[kParam] = params;
        f.stride[kParam] = 1;
        f.base[kOuter] = static_cast<T*>(g.file) + slot;
        f.stride[kOuter] = n_slots;
        f.b = w.b;
        f.row = row_of(t);
        run_phase<T>(p, c, f, kOuter);
      }
      Ops::init(red, state_of(t));
    }
    const int64_t r0 = w.row_block * block;
    for_each_span(c, w.j0, w.j1, r0, r0 + block, [&](int64_t j0, int64_t j1, Span rows) {
    for (int64_t t0 = j0; t0 < j1; t0 += g.tile) {
      const int nv = int(std::min<int64_t>(g.tile, j1 - t0));
      if (has_inner) {
        for (int l = 0; l < nv; ++l) {  // lane l by thread l % block
          Frame<T> f{};
          f.base[kParam] = params;
          f.stride[kParam] = 1;
          f.base[kInner] = tile + l;
          f.stride[kInner] = g.tile;
          f.b = w.b;
          f.j = t0 + l;
          run_phase<T>(p, c, f, kInner);
        }
      }
      for (int t = 0; t < block; ++t) {
        if (row_of(t) >= c.n_outer || row_of(t) < rows.begin || row_of(t) >= rows.end) continue;
        const int32_t slot = blk * block + t;
        PairCtx<T> pc;
        pc.base[kParam] = params;
        pc.base[kOuter] = static_cast<const T*>(g.file) + slot;
        pc.ds[kParam] = 1;
        pc.ds[kOuter] = n_slots;
        pc.ds[kInner] = g.tile;
        pc.pr = g.pair ? static_cast<T*>(g.pair) + slot * kSubTile : pair_local.data();
        pc.pr_ds = g.pair ? n_slots * kSubTile : kSubTile;
        pc.base[kPair] = pc.pr;
        pc.ds[kPair] = pc.pr_ds;
        pair_tile<T, Ops>(p, prog.data(), red, pc, tile, nv, t0, state_of(t));
      }
    }
    });
    for (int t = 0; t < block; ++t)
      if (row_of(t) < c.n_outer) finish_row<T, Ops>(red, c, g, w, row_of(t), state_of(t));
  }
  if (g.n_splits > 1)
    for (int64_t r = 0; r < c.batch_count * c.n_outer; ++r) combine_row<T, Ops>(red, c, g, r);
}

template <class T>
void run_family(const DevProgram& p, const DevReduction& red, const DevCall& c,
                const LaunchPlan& plan, char* ws) {
  switch (static_cast<Family>(red.family)) {
    case Family::kSum: return run_launch<T, SumOps>(p, red, c, plan, ws);
    case Family::kExpSum: return run_launch<T, ExpSumOps>(p, red, c, plan, ws);
    case Family::kMinMax: return run_launch<T, MinMaxOps>(p, red, c, plan, ws);
    case Family::kKMin: return run_launch<T, KMinOps>(p, red, c, plan, ws);
  }
}

// Programs decoded and compacted once, keyed by their bytes.
std::shared_ptr<const HostProgram> cached_program(std::string_view bytes, std::string* error) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, std::shared_ptr<const HostProgram>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(std::string(bytes));
  if (it != cache->end()) return it->second;
  auto hp = std::make_shared<HostProgram>();
  if (!decode_program(bytes.data(), bytes.size(), &hp->prog, error)) return nullptr;
  if (!build_host_program(hp.get(), error)) return nullptr;
  cache->emplace(std::string(bytes), hp);
  return hp;
}

ffi::Error invalid(std::string msg) {
  return ffi::Error::InvalidArgument("jaxkeops_reduce_gpu_emulation: " + std::move(msg));
}

ffi::Error emulate_impl(ffi::RemainingArgs args, ffi::RemainingRets rets,
                        std::string_view program, int64_t n_inner) {
  std::string error;
  std::shared_ptr<const HostProgram> hp = cached_program(program, &error);
  if (!hp) return invalid(error);
  if (hp->prog.inputs.size() > size_t(kMaxInputs))
    return invalid("the call has " + std::to_string(hp->prog.inputs.size()) +
                   " operands, more than the CUDA executor's limit of " +
                   std::to_string(kMaxInputs));
  CallLayout layout;
  error = check_call(hp->prog, hp->outputs, args, rets, n_inner, &layout);
  if (!error.empty()) return invalid(error);
  if (layout.n_outer == 0 || layout.batch.count() == 0) return ffi::Error::Success();
  int64_t host_count = 1;
  const DevCall call = describe_call(*hp, layout, layout.n_inner, &host_count);
  const DevProgram dprog = program_at(*hp, hp->blob.data());
  LaunchPlan plan;
  if (!plan_launch(dprog, hp->red, call, kEmulatedSMs, layout.value_bytes(), &plan, &error))
    return invalid(error);
  std::vector<double> workspace((plan.bytes + sizeof(double) - 1) / sizeof(double));
  char* ws = reinterpret_cast<char*>(workspace.data());
  for (int64_t h = 0; h < host_count; ++h) {
    const DevCall c = launch_call(*hp, layout, call, h);
    if (c.n_outer <= 0 || c.batch_count <= 0) continue;
    if (layout.dtype == ffi::DataType::F32) run_family<float>(dprog, hp->red, c, plan, ws);
    else run_family<double>(dprog, hp->red, c, plan, ws);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxkeops::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxkeops_reduce_gpu_emulation, jaxkeops::cuda::emulate_impl,
                              xla::ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<int64_t>("n_inner"));
