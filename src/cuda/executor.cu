// CUDA executor: a register interpreter, one thread per output row.
//
// A block holds `block` consecutive output rows of one batch problem and walks one chunk of the
// inner axis in j tiles. Instructions are hoisted by role, as on the CPU:
//   param  once per batch problem (param_kernel, before the main kernel)
//   outer  once per thread (its row), into the thread's register file
//   inner  once per j tile, each lane by one thread of the block, into the tile (shared memory)
//   pair   per (row, j), then the reducer accumulates the result registers
// Every thread of a block runs the same tile loop, so the barriers and control flow are uniform
// across a warp; only rows past n_outer skip the pair work.
//
// Split reduction: when batch x row blocks cannot fill the GPU (e.g. M = 100, N = 10^6), the
// inner axis is cut into `n_splits` chunks handled by different blocks; each writes its partial
// reducer state to the workspace and combine_kernel merges them in inner order (ties keep the
// lowest index) and writes the outputs. Everything is enqueued on XLA's stream, without any
// synchronisation.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/device_program.h"
#include "cuda/reducers.cuh"
#include "ops.h"
#include "program.h"

namespace jaxkeops::cuda {
namespace {

// State of small reducers lives in registers/local memory; larger ones in the workspace.
constexpr int kLocalState = 32;

// How a thread addresses registers: element d of register r is base[role][(off + d) * stride].
// base[kInner] moves with the lane being computed or consumed.
template <class T>
struct Frame {
  T* base[4];
  int64_t stride[4];
  int64_t b;    // batch problem (device-resolved part)
  int64_t row;  // outer index
  int64_t j;    // inner index
};

template <class T>
__device__ __forceinline__ T& reg_at(const DevProgram& p, const Frame<T>& f, int r, int d) {
  const DevReg g = p.regs[r];
  return f.base[g.role][int64_t(g.offset + d) * f.stride[g.role]];
}

__device__ __forceinline__ int64_t batch_offset(const DevCall& c, int k, int64_t b) {
  int64_t off = 0;
  for (int d = c.batch_rank - 1; d >= 0; --d) {
    off += (b % c.batch_dims[d]) * c.in_stride[k][d];
    b /= c.batch_dims[d];
  }
  return off;
}

// ---------------------------------------------------------------- op kernels (one lane)

template <class T, class F>
__device__ __forceinline__ void unary(const DevProgram& p, const Frame<T>& f, const DevInstr& in,
                                      int od) {
  const int ad = p.regs[in.args[0]].dim;
  for (int d = 0; d < od; ++d)
    reg_at(p, f, in.out, d) = F::apply(reg_at(p, f, in.args[0], ad == 1 ? 0 : d));
}

template <class T, class F>
__device__ __forceinline__ void binary(const DevProgram& p, const Frame<T>& f, const DevInstr& in,
                                       int od) {
  const int ad = p.regs[in.args[0]].dim, bd = p.regs[in.args[1]].dim;
  for (int d = 0; d < od; ++d)
    reg_at(p, f, in.out, d) = F::apply(reg_at(p, f, in.args[0], ad == 1 ? 0 : d),
                                       reg_at(p, f, in.args[1], bd == 1 ? 0 : d));
}

template <class T, class F>
__device__ __forceinline__ void ternary(const DevProgram& p, const Frame<T>& f,
                                        const DevInstr& in, int od) {
  const int ad = p.regs[in.args[0]].dim, bd = p.regs[in.args[1]].dim,
            cd = p.regs[in.args[2]].dim;
  for (int d = 0; d < od; ++d)
    reg_at(p, f, in.out, d) = F::apply(reg_at(p, f, in.args[0], ad == 1 ? 0 : d),
                                       reg_at(p, f, in.args[1], bd == 1 ? 0 : d),
                                       reg_at(p, f, in.args[2], cd == 1 ? 0 : d));
}

// Runs the instructions of one role for the frame's current (batch, row, j).
// Not inlined: one copy of the interpreter per dtype instead of one per kernel.
template <class T>
__device__ __noinline__ void run_phase(const DevProgram& p, const DevCall& c, const Frame<T>& f,
                                       int role) {
  for (int i = p.phase_begin[role]; i < p.phase_begin[role + 1]; ++i) {
    const DevInstr in = p.instrs[i];
    const int od = p.regs[in.out].dim;
    switch (static_cast<Op>(in.opcode)) {
#define JK_UNARY(name, code, keops) \
  case Op::name: unary<T, opfn::name>(p, f, in, od); break;
      JAXKEOPS_UNARY_ELEMENTWISE_OPS(JK_UNARY)
#undef JK_UNARY
#define JK_BINARY(name, code, keops) \
  case Op::name: binary<T, opfn::name>(p, f, in, od); break;
      JAXKEOPS_BINARY_ELEMENTWISE_OPS(JK_BINARY)
#undef JK_BINARY
#define JK_TERNARY(name, code, keops) \
  case Op::name: ternary<T, opfn::name>(p, f, in, od); break;
      JAXKEOPS_TERNARY_ELEMENTWISE_OPS(JK_TERNARY)
#undef JK_TERNARY
      case Op::Var: {
        const T* src = static_cast<const T*>(c.inputs[in.ip0]) + batch_offset(c, in.ip0, f.b);
        const int64_t at = role == kOuter ? f.row : role == kInner ? f.j : 0;
        for (int d = 0; d < od; ++d) reg_at(p, f, in.out, d) = src[at * od + d];
        break;
      }
      case Op::Const:
        for (int d = 0; d < od; ++d) reg_at(p, f, in.out, d) = static_cast<T>(p.consts[in.aux + d]);
        break;
      case Op::Pow:
        for (int d = 0; d < od; ++d)
          reg_at(p, f, in.out, d) = opfn::int_pow(reg_at(p, f, in.args[0], d), in.ip0);
        break;
      case Op::Round: {
        const T scale = static_cast<T>(pow(10.0, double(in.ip0)));
        for (int d = 0; d < od; ++d) {
          const T x = reg_at(p, f, in.args[0], d);
          reg_at(p, f, in.out, d) = in.ip0 == 0 ? opfn::round_half_away(x)
                                                : opfn::round_half_away(x * scale) / scale;
        }
        break;
      }
      case Op::Sum:
      case Op::SqNorm2: {
        const bool sq = in.opcode == int32_t(Op::SqNorm2);
        const int ad = p.regs[in.args[0]].dim;
        T acc = T(0);
        for (int d = 0; d < ad; ++d) {
          const T x = reg_at(p, f, in.args[0], d);
          acc = d == 0 ? (sq ? x * x : x) : acc + (sq ? x * x : x);
        }
        reg_at(p, f, in.out, 0) = acc;
        break;
      }
      case Op::Scalprod:
      case Op::SqDist: {
        const bool dist = in.opcode == int32_t(Op::SqDist);
        const int ad = p.regs[in.args[0]].dim;
        T acc = T(0);
        for (int d = 0; d < ad; ++d) {
          const T x = reg_at(p, f, in.args[0], d), y = reg_at(p, f, in.args[1], d);
          const T t = dist ? (x - y) * (x - y) : x * y;
          acc = d == 0 ? t : acc + t;
        }
        reg_at(p, f, in.out, 0) = acc;
        break;
      }
      case Op::Min:
      case Op::Max:
      case Op::ArgMin:
      case Op::ArgMax: {
        const bool is_max = in.opcode == int32_t(Op::Max) || in.opcode == int32_t(Op::ArgMax);
        const bool is_arg = in.opcode == int32_t(Op::ArgMin) || in.opcode == int32_t(Op::ArgMax);
        const int ad = p.regs[in.args[0]].dim;
        T best = reg_at(p, f, in.args[0], 0), index = T(0);
        for (int d = 1; d < ad; ++d) {
          const T v = reg_at(p, f, in.args[0], d);
          const bool better = is_max ? v > best : v < best;
          best = better ? v : best;
          index = better ? T(d) : index;
        }
        reg_at(p, f, in.out, 0) = is_arg ? index : best;
        break;
      }
      case Op::OneHot: {
        const T x = reg_at(p, f, in.args[0], 0);
        for (int d = 0; d < od; ++d)
          reg_at(p, f, in.out, d) = opfn::trunc_(x + T(0.5)) == T(d) ? T(1) : T(0);
        break;
      }
      case Op::Extract:
        for (int d = 0; d < od; ++d) reg_at(p, f, in.out, d) = reg_at(p, f, in.args[0], in.ip0 + d);
        break;
      case Op::ExtractT: {
        const int ad = p.regs[in.args[0]].dim;
        for (int d = 0; d < od; ++d) {
          const int src = d - in.ip0;
          reg_at(p, f, in.out, d) = (src < 0 || src >= ad) ? T(0) : reg_at(p, f, in.args[0], src);
        }
        break;
      }
      case Op::Concat: {
        const int ad = p.regs[in.args[0]].dim;
        for (int d = 0; d < od; ++d)
          reg_at(p, f, in.out, d) =
              d < ad ? reg_at(p, f, in.args[0], d) : reg_at(p, f, in.args[1], d - ad);
        break;
      }
      case Op::TensorDot: {
        // Terms sorted by output index, covering every output: the first one assigns.
        const int32_t* t = p.terms + 3 * int64_t(in.aux);
        for (int32_t k = 0; k < in.n_aux; ++k, t += 3) {
          const T prod = reg_at(p, f, in.args[0], t[1]) * reg_at(p, f, in.args[1], t[2]);
          T& o = reg_at(p, f, in.out, t[0]);
          o = (k == 0 || t[-3] != t[0]) ? prod : o + prod;
        }
        break;
      }
    }
  }
}

// ---------------------------------------------------------------- kernels

// Workspace pointers of a launch.
struct DevGrid {
  void* params;    // batch_count x param_size (T)
  void* file;      // grid*block threads x file_size (T), element-major: coalesced
  void* inner;     // grid x inner_size x tile (T) when the tile is not in shared memory
  double* state;   // grid*block x state_size when the state does not fit kLocalState
  double* partial; // batch_count x n_outer x n_splits x state_size
  int64_t row_blocks, n_splits, range, n_items;
  int32_t tile;
};

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

template <class Ops>
struct OpsTag {};

template <class T, class Ops>
__global__ void reduce_kernel(const __grid_constant__ DevProgram p,
                              const __grid_constant__ DevReduction red,
                              const __grid_constant__ DevCall c,
                              const __grid_constant__ DevGrid g) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t n_slots = int64_t(gridDim.x) * blockDim.x;
  const int64_t slot = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  T* tile = g.inner ? static_cast<T*>(g.inner) + int64_t(blockIdx.x) * p.inner_size * g.tile
                    : reinterpret_cast<T*>(smem);
  double local_state[kLocalState];
  double* st = red.state_size <= kLocalState ? local_state : g.state + slot * red.state_size;
  const bool has_inner = p.phase_begin[kInner + 1] > p.phase_begin[kInner];

  Frame<T> f{};
  f.stride[kParam] = 1;
  f.base[kOuter] = f.base[kPair] = static_cast<T*>(g.file) + slot;
  f.stride[kOuter] = f.stride[kPair] = n_slots;
  f.stride[kInner] = g.tile;
  auto value = [&](int k, int d) -> T { return reg_at(p, f, p.results[k], d); };

  for (int64_t item = blockIdx.x; item < g.n_items; item += gridDim.x) {
    const int64_t s = item % g.n_splits;
    const int64_t rest = item / g.n_splits;
    const int64_t rb = rest % g.row_blocks;
    const int64_t b = rest / g.row_blocks;
    f.b = b;
    f.base[kParam] = static_cast<T*>(g.params) + b * p.param_size;
    f.row = rb * blockDim.x + threadIdx.x;
    const bool valid = f.row < c.n_outer;
    const int64_t j0 = s * g.range;
    const int64_t j1 = min(c.n_inner, j0 + g.range);

    if (valid) run_phase<T>(p, c, f, kOuter);
    Ops::init(red, st);
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
      if (valid) {
        for (int l = 0; l < nv; ++l) {
          f.base[kInner] = tile + l;
          f.j = t0 + l;
          run_phase<T>(p, c, f, kPair);
          Ops::accumulate(red, st, value, f.j);
        }
      }
    }
    if (!valid) continue;
    const int64_t flat_row = b * c.n_outer + f.row;
    if (g.n_splits == 1) {
      Ops::finalize(red, st, RowWriter<T>{&c, flat_row});
    } else {
      double* out = g.partial + (flat_row * g.n_splits + s) * red.state_size;
      for (int k = 0; k < red.state_size; ++k) out[k] = st[k];
    }
  }
}

// Merges the partial states of each row in inner order and writes the outputs.
template <class T, class Ops>
__global__ void combine_kernel(const __grid_constant__ DevReduction red,
                               const __grid_constant__ DevCall c,
                               const __grid_constant__ DevGrid g) {
  const int64_t flat_row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (flat_row >= c.batch_count * c.n_outer) return;
  double* acc = g.partial + flat_row * g.n_splits * red.state_size;
  for (int64_t s = 1; s < g.n_splits; ++s) Ops::combine(red, acc, acc + s * red.state_size);
  Ops::finalize(red, acc, RowWriter<T>{&c, flat_row});
}

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

template <class T, class Ops>
std::string launch_family(const DevProgram& prog, const DevReduction& red, const DevCall& call,
                          const LaunchPlan& plan, void* workspace, cudaStream_t stream) {
  char* ws = static_cast<char*>(workspace);
  DevGrid g{};
  g.params = ws + plan.off_params;
  g.file = ws + plan.off_file;
  g.inner = plan.inner_in_global ? ws + plan.off_inner : nullptr;
  g.state = reinterpret_cast<double*>(ws + plan.off_state);
  g.partial = reinterpret_cast<double*>(ws + plan.off_partial);
  g.row_blocks = plan.row_blocks;
  g.n_splits = plan.n_splits;
  g.range = plan.range;
  g.n_items = plan.n_items;
  g.tile = plan.tile;

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

  // j tile: as wide as the block while the inner registers of a tile fit 48 KiB of shared memory.
  constexpr size_t kSmem = 48 * 1024;
  const size_t lane_bytes = size_t(prog.inner_size) * elem_size;
  pl.tile = 128;
  while (pl.tile > 16 && lane_bytes * pl.tile > kSmem) pl.tile /= 2;
  pl.inner_in_global = lane_bytes * pl.tile > kSmem;
  pl.smem = pl.inner_in_global ? 0 : lane_bytes * pl.tile;

  // Split the inner axis when the rows alone cannot fill the GPU; chunks stay >= 4 tiles.
  const int64_t target = int64_t(sm_count) * 8;
  pl.n_splits = 1;
  if (N > 0 && base_items < target) {
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
                           (pl.inner_in_global ? lane_bytes * pl.tile : 0);
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
  pl.off_state = at;
  if (S > kLocalState) at += align_up(size_t(grid) * pl.block * S * sizeof(double));
  pl.off_partial = at;
  if (pl.n_splits > 1) at += align_up(size_t(call.batch_count * M * pl.n_splits * S) * sizeof(double));
  pl.bytes = std::max<size_t>(at, 256);
  return true;
}

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

template std::string launch<float>(const DevProgram&, const DevReduction&, const DevCall&,
                                   const LaunchPlan&, void*, void*);
template std::string launch<double>(const DevProgram&, const DevReduction&, const DevCall&,
                                    const LaunchPlan&, void*, void*);

}  // namespace jaxkeops::cuda
