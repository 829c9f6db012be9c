// The per-thread bodies of the fused kernels, host and device. A block of `kThreads` threads
// owns a block of output rows; for each tile of inner points it stages the tile (cooperatively,
// `stage`), then every thread runs `tile` over it, then (end of its split of the inner axis)
// `finish` writes the outputs, or the partial state that `combine_row` merges later. The CUDA
// kernels (src/cuda/fused.cu) run these with real threads and shared memory; the host emulation
// (ffi_fused_cpu.cc) runs the same calls thread after thread, in the same order per thread.
//
// Two bodies:
//   HotRows     compile-time score, φ kind, D and reducer; R rows per thread, the inner tile
//               staged in shared memory as rows of W values [y_0..y_{D-1}, extra, pad] where
//               extra is V_j0 (pre-scaled) or Z_j0, so that one vector load serves R rows.
//   GenericRow  runtime score, φ (programs too), factor and D, one row per thread, CH value
//               components per pass; reads the inner operands in place (no staging).
#pragma once

#include <cstdint>
#include <type_traits>

#include "fast_math.h"
#include "fused/accumulators.h"
#include "fused/fused_call.h"
#include "fused/pair_math.h"

namespace jaxkeops::fused {

template <class T>
struct Problem {
  const T *x, *y, *c, *u, *v, *ao, *ai, *z;
  int64_t b;  // device batch index (outputs and state rows)
};

template <class T>
JAXKEOPS_HD inline Problem<T> problem_of(const FusedCall& call, int64_t b) {
  auto at = [&](int k) { return static_cast<const T*>(call.in[k]) + batch_offset(call, k, b); };
  return {at(kX), at(kY), at(kC), at(kU), at(kV), at(kAO), at(kAI), at(kZ), b};
}

// A work item: (batch problem, chunk of value components, row block, split of the inner axis).
struct WorkItem {
  int64_t b, row_block, split;
  int32_t chunk;
};

JAXKEOPS_HD inline WorkItem work_item(const FusedCall& call, int64_t item) {
  uint32_t rest = static_cast<uint32_t>(item);  // < kMaxIndex (checked by the handlers)
  const uint32_t splits = static_cast<uint32_t>(call.n_splits);
  const uint32_t row_blocks = static_cast<uint32_t>(call.row_blocks);
  const uint32_t chunks = static_cast<uint32_t>(call.n_chunks);
  WorkItem w;
  w.split = rest % splits;
  rest /= splits;
  w.row_block = rest % row_blocks;
  rest /= row_blocks;
  w.chunk = static_cast<int32_t>(rest % chunks);
  w.b = rest / chunks;
  return w;
}

// Row r of the combine pass: (problem, chunk, output row).
struct CombineRow {
  int64_t b, row;
  int32_t chunk;
};

JAXKEOPS_HD inline CombineRow combine_row_of(const FusedCall& call, int64_t r) {
  uint32_t rest = static_cast<uint32_t>(r);  // < kMaxIndex (checked by the handlers)
  const uint32_t n_outer = static_cast<uint32_t>(call.n_outer);
  const uint32_t chunks = static_cast<uint32_t>(call.n_chunks);
  CombineRow c;
  c.row = rest % n_outer;
  rest /= n_outer;
  c.chunk = static_cast<int32_t>(rest % chunks);
  c.b = rest / chunks;
  return c;
}

// The state slot of output row `row` of problem b, split s.
JAXKEOPS_HD inline double* state_slot(const FusedCall& call, int64_t b, int64_t row, int64_t s) {
  return call.state + ((b * call.n_outer + row) * call.n_splits + s) * call.state_size;
}

// Tiles [first, end) of a split.
JAXKEOPS_HD inline void split_tiles(const FusedCall& call, int64_t split, int64_t* first,
                                    int64_t* end) {
  const int64_t n_tiles = static_cast<uint32_t>(call.n_inner + call.tile - 1) /
                          static_cast<uint32_t>(call.tile);  // n_inner < 2^31
  *first = split * call.tiles_per_split;
  const int64_t e = *first + call.tiles_per_split;
  *end = e < n_tiles ? e : n_tiles;
}

template <class Acc>
struct IsKMin : std::false_type {};
template <class T, int CH>
struct IsKMin<KMinAcc<T, CH>> : std::true_type {};

template <class Acc>
struct IsMinMax : std::false_type {};
template <class T, int CH, bool IsMax>
struct IsMinMax<MinMaxAcc<T, CH, IsMax>> : std::true_type {};

// Shared by both bodies: initial state, end of a split, and the merge of split states.
template <class T, class Acc>
struct RowState {
  JAXKEOPS_HD static void init(Acc& acc, const FusedCall& call, int64_t b, int64_t row,
                               int64_t split, int c0, int nc, bool active) {
    if constexpr (IsKMin<Acc>::value) {
      if (!active) {
        // NaN: `v <= threshold` never holds, an idle row never inserts.
        for (int c = 0; c < int(sizeof(acc.threshold) / sizeof(T)); ++c)
          acc.threshold[c] = detail::quiet_nan<T>();
        return;
      }
      acc.bind(state_slot(call, b, row, split), call.k, call.value_dim, c0);
      acc.init_lists(nc);
    } else {
      acc.init();
    }
  }

  JAXKEOPS_HD static void finish(const Acc& acc, const FusedCall& call, int64_t b, int64_t row,
                                 int64_t split, int c0, int nc) {
    const int64_t out_row = b * call.n_outer + row;
    if constexpr (IsKMin<Acc>::value) {
      if (call.n_splits == 1) acc.write(call, out_row, nc);  // else the lists are the state
    } else if (call.n_splits == 1) {
      acc.write(call, out_row, c0, nc);
    } else {
      acc.store(state_slot(call, b, row, split), c0, nc, call.value_dim);
    }
  }

  // Merges the splits of one row (in inner order) and writes its outputs.
  JAXKEOPS_HD static void combine_row(const FusedCall& call, int64_t b, int64_t row, int c0,
                                      int nc) {
    const int64_t out_row = b * call.n_outer + row;
    if constexpr (IsKMin<Acc>::value) {
      Acc acc;
      acc.bind(state_slot(call, b, row, 0), call.k, call.value_dim, c0);
      for (int64_t s = 1; s < call.n_splits; ++s) acc.merge_state(state_slot(call, b, row, s), nc);
      acc.write(call, out_row, nc);
    } else {
      Acc acc, later;
      acc.load(state_slot(call, b, row, 0), c0, nc, call.value_dim);
      for (int64_t s = 1; s < call.n_splits; ++s) {
        later.load(state_slot(call, b, row, s), c0, nc, call.value_dim);
        acc.merge(later, nc);
      }
      acc.write(call, out_row, c0, nc);
    }
  }
};

// ---------------------------------------------------------------- the generic bodies

// Programs: whether φ may be a program (its op table brings CUDA's sin/cos, whose reduction of
// huge arguments keeps a small array on the stack; the other kernels have no stack frame).
template <class T, class Acc, int CH, bool Programs>
struct GenericRow {
  using Accumulator = Acc;
  static constexpr int kRowsPerThread = 1;
  static constexpr bool kStaged = false;
  static constexpr int W = 1;  // staged values per inner point (none: a dummy tile)
  // CUDA __launch_bounds__ minimum blocks per SM: up to 128 registers (ptxas's own choice
  // spills in float64).
  static constexpr int kMinBlocks = 4;

  Acc acc;
  int64_t row;
  bool active;
  int c0, nc;

  JAXKEOPS_HD void begin(const FusedCall& call, const Problem<T>& p, const WorkItem& w,
                         int thread, int n_threads) {
    row = w.row_block * n_threads + thread;
    active = row < call.n_outer;
    c0 = w.chunk * CH;
    nc = call.value_dim - c0 < CH ? call.value_dim - c0 : CH;
    RowState<T, Acc>::init(acc, call, p.b, row, w.split, c0, nc, active);
  }

  JAXKEOPS_HD static void stage(const FusedCall&, const Problem<T>&, T*, int64_t, int, int, int) {}

  // φ and the CH components of Ψ of pair (row, j).
  JAXKEOPS_HD void pair_terms(const FusedCall& call, const Problem<T>& p, int64_t j, T* phi,
                              T* psi) const {
    const int32_t D = call.D;
    const T* x = p.x + row * D;
    const T* y = p.y + j * D;
    const T s = score_runtime(call.score, x, y, D, p.c);
    T a = T(1);
    if (call.NA > 0) {
      const T* ao = p.ao + row * call.NA;
      const T* ai = p.ai + j * call.NA;
      a = T(0);
      for (int32_t k = 0; k < call.NA; ++k) a += ao[k] * ai[k];
    }
    T f;
    if (Programs && call.phi == kProgram) {
      const PhiInputs<T> in{s, a, p.u + row * call.NU, p.v + j * call.NV, p.c};
      f = run_phi_program(call.program, call.n_instr, in);
    } else {
      if (call.phi == kOne) {
        f = T(1);
      } else {
        T t = p.c[affine_coefficient_index(call.score, D)] * s;
        if (call.NU > 0) t += p.u[row * call.NU];
        if (call.NV > 0) t += p.v[j * call.NV];
        f = call.phi == kExpAffine ? opfn::exp_(t) : t;
      }
      if (call.NA > 0) f *= a;  // validated: Sum only
    }
    *phi = f;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      T q = T(0);
      if (c < nc) {
        if (call.factor == kFactorZ)
          q = p.z[j * call.E + c0 + c];
        else if (call.factor == kFactorDiff)
          q = x[c0 + c] - y[c0 + c];
        else
          q = T(1);
      }
      psi[c] = q;
    }
  }

  JAXKEOPS_HD void tile(const FusedCall& call, const Problem<T>& p, const T*, int64_t j0, int n) {
    if (!active) return;
    for (int l = 0; l < n; ++l) {  // ---- generic inner loop
      T phi, psi[CH];
      pair_terms(call, p, j0 + l, &phi, psi);
      acc.pair(phi, psi, nc, static_cast<int32_t>(j0 + l));
    }
    if constexpr (IsMinMax<Acc>::value) {
      if (acc.needs_rescan(nc)) {
        for (int l = 0; l < n; ++l) {
          T phi, psi[CH];
          pair_terms(call, p, j0 + l, &phi, psi);
          acc.rescan_pair(phi, psi, nc, static_cast<int32_t>(j0 + l));
        }
      }
    }
    acc.end_tile(nc);
  }

  JAXKEOPS_HD void finish(const FusedCall& call, const Problem<T>& p, const WorkItem& w) const {
    if (active) RowState<T, Acc>::finish(acc, call, p.b, row, w.split, c0, nc);
  }
};

// ---------------------------------------------------------------- the hot bodies

// What the extra slot of a staged inner row holds.
enum class Extra : int32_t { kV = 0, kZ = 1 };

// Staged row width: D values and the extra slot, padded for one 8- or 16-byte-aligned load.
template <int DC>
inline constexpr int kStagedWidth = DC + 1 <= 2 ? 2 : DC + 1 <= 4 ? 4 : 8;

// Loads W consecutive T of an aligned staged row with vector loads.
template <int W, class T>
JAXKEOPS_HD inline void load_row(const T* p, T* r) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same<T, float>::value && W % 4 == 0) {
#pragma unroll
    for (int k = 0; k < W; k += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + k);
      r[k] = q.x; r[k + 1] = q.y; r[k + 2] = q.z; r[k + 3] = q.w;
    }
    return;
  } else if constexpr (W % 2 == 0) {
    using V2 = typename std::conditional<std::is_same<T, float>::value, float2, double2>::type;
#pragma unroll
    for (int k = 0; k < W; k += 2) {
      const V2 q = *reinterpret_cast<const V2*>(p + k);
      r[k] = q.x; r[k + 1] = q.y;
    }
    return;
  }
#endif
#pragma unroll
  for (int k = 0; k < W; ++k) r[k] = p[k];
}

// S score, PhiK kAffine or kExpAffine, DC = D, R rows per thread, Acc with one component,
// X the extra slot. The affine argument is t = C·s + U_i0 + extra, in exp units (scaled by
// ScaledExp<T>::kScale, folded into C, U and the staged V) when it feeds an exp.
template <class T, int S, int PhiK, int DC, int R, class Acc, Extra X>
struct HotRows {
  using Accumulator = Acc;
  static constexpr int kRowsPerThread = R;
  static constexpr bool kStaged = true;
  static constexpr int W = kStagedWidth<DC>;
  static constexpr bool kExpSum = !std::is_same<Acc, SumAcc<T, 1>>::value && !IsKMin<Acc>::value;
  // Exp units where t feeds an exp: the exp-affine φ, or an exp-sum reducer of affine scores.
  static constexpr bool kScaled = PhiK == kExpAffine || kExpSum;
  static constexpr T kFold = kScaled ? ScaledExp<T>::kScale : T(1);
  // CUDA __launch_bounds__ minimum blocks per SM: up to 128 registers in float (65536 / (128
  // threads x 4 blocks)), 255 in float64; ptxas's own choice for the unrolled blocks spills,
  // and so do 80 registers in float and 128 in float64 (fast_exp's polynomial).
  static constexpr int kMinBlocks = sizeof(T) == 4 ? 4 : 2;
  // Pairs unrolled in the blocks of 32 of the sums and logsumexp: all of them in float, 4 in
  // float64 (twice the registers per value: 32 spill).
  static constexpr int kUnroll = sizeof(T) == 4 ? 32 : 4;

  T x[R][DC];
  T u[R];
  Acc acc[R];
  int64_t row[R];
  T coef;

  JAXKEOPS_HD void begin(const FusedCall& call, const Problem<T>& p, const WorkItem& w,
                         int thread, int n_threads) {
    coef = p.c[0] * kFold;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      row[r] = w.row_block * (int64_t(n_threads) * R) + thread + int64_t(r) * n_threads;
      const bool active = row[r] < call.n_outer;
#pragma unroll
      for (int d = 0; d < DC; ++d) x[r][d] = active ? p.x[row[r] * DC + d] : T(0);
      u[r] = active && call.NU > 0 ? p.u[row[r] * call.NU] * kFold : T(0);
      RowState<T, Acc>::init(acc[r], call, p.b, row[r], w.split, 0, 1, active);
    }
  }

  // Staged row e of the tile at j0 (threads share the rows e = thread, thread + n_threads, ...).
  JAXKEOPS_HD static void stage(const FusedCall& call, const Problem<T>& p, T* tile, int64_t j0,
                                int n, int thread, int n_threads) {
    for (int e = thread; e < n; e += n_threads) {
      const int64_t j = j0 + e;
      T* dst = tile + e * W;
#pragma unroll
      for (int d = 0; d < DC; ++d) dst[d] = p.y[j * DC + d];
      T extra = T(0);
      if constexpr (X == Extra::kZ)
        extra = p.z[j];  // E == 1
      else if (call.NV > 0)
        extra = p.v[j * call.NV] * kFold;
      dst[DC] = extra;
#pragma unroll
      for (int d = DC + 1; d < W; ++d) dst[d] = T(0);
    }
  }

  // One staged inner row against the R rows (sums).
  JAXKEOPS_HD void pair(const T* staged_row) {
    T y[W];
    load_row<W>(staged_row, y);
    const T extra = y[DC];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const T t = argument(r, y);
      const T f = PhiK == kExpAffine ? ScaledExp<T>::exp(t) : t;
      acc[r].tile[0] += X == Extra::kZ ? f * extra : f;
    }
  }

  // The affine argument of row r and staged row y.
  JAXKEOPS_HD T argument(int r, const T* y) const {
    const T s = score_fixed<S, DC>(x[r], y, static_cast<const T*>(nullptr));
    return coef * s + (X == Extra::kV ? u[r] + y[DC] : u[r]);
  }

  JAXKEOPS_HD void tile(const FusedCall&, const Problem<T>&, const T* staged, int64_t j0, int n) {
    const int32_t jb = static_cast<int32_t>(j0);
    if constexpr (IsKMin<Acc>::value) {
      tile_kmin(staged, jb, n);
    } else if constexpr (kExpSum) {
      tile_expsum(staged, n);
    } else {
      for (int l0 = 0; l0 < n; l0 += 32) {
        const T* base = staged + l0 * W;
        if (n - l0 >= 32) {
          // ---- hot inner loop (sums): one staged row serves R rows.
#pragma unroll kUnroll
          for (int l = 0; l < 32; ++l) pair(base + l * W);
        } else {
          for (int l = 0; l < n - l0; ++l) pair(base + l * W);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r].end_tile(1);
  }

  // K-min: the hot loop only compares with the threshold and marks candidates in a 32-bit mask
  // per row; the insertions run afterwards from one place (inlining them at every unrolled
  // pair would cost registers and code), re-checked against the then current threshold, which
  // only ever decreases.
  JAXKEOPS_HD void tile_kmin(const T* staged, int32_t jb, int n) {
    for (int l0 = 0; l0 < n; l0 += 32) {
      uint32_t mask[R];
#pragma unroll
      for (int r = 0; r < R; ++r) mask[r] = 0;
      const T* base = staged + l0 * W;
      if (n - l0 >= 32) {
        // ---- hot inner loop (K-min)
#pragma unroll
        for (int l = 0; l < 32; ++l) {
          T y[W];
          load_row<W>(base + l * W, y);
#pragma unroll
          for (int r = 0; r < R; ++r)
            mask[r] |= argument(r, y) <= acc[r].threshold[0] ? (1u << l) : 0u;
        }
      } else {
        for (int l = 0; l < n - l0; ++l) {
          T y[W];
          load_row<W>(base + l * W, y);
#pragma unroll
          for (int r = 0; r < R; ++r)
            mask[r] |= argument(r, y) <= acc[r].threshold[0] ? (1u << l) : 0u;
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        while (mask[r] != 0u) {
          const int l = lowest_bit(mask[r]);
          mask[r] &= mask[r] - 1u;
          T y[W];
          load_row<W>(base + l * W, y);
          acc[r].take(0, argument(r, y), jb + l0 + l);
        }
      }
    }
  }

  JAXKEOPS_HD void fast_expsum_pair(const T* staged_row, const T* limit, bool& over) {
    T y[W];
    load_row<W>(staged_row, y);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const T t = argument(r, y);
      over |= t > limit[r];
      acc[r].add_fast(t);
    }
  }

  // Logsumexp: blocks of 32 pairs per row summed against the current maximum m without moving
  // it (ExpSumAcc::add_fast); a score above m + slack anywhere in the block (also the first
  // scores, m starting at the lowest T, and +inf) redoes the block exactly with push(), which
  // moves m. So the rescale and its test leave the hot loop: one compare per pair remains.
  JAXKEOPS_HD void tile_expsum(const T* staged, int n) {
    for (int l0 = 0; l0 < n; l0 += 32) {
      const int nb = n - l0 < 32 ? n - l0 : 32;
      const T* base = staged + l0 * W;
      T saved[R], limit[R];
      bool over = false;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        saved[r] = acc[r].den_tile;
        limit[r] = acc[r].slack_limit();
      }
      if (nb == 32) {
        // ---- hot inner loop (logsumexp)
#pragma unroll kUnroll
        for (int l = 0; l < 32; ++l) fast_expsum_pair(base + l * W, limit, over);
      } else {
        for (int l = 0; l < nb; ++l) fast_expsum_pair(base + l * W, limit, over);
      }
      if (over) {
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r].den_tile = saved[r];
        for (int l = 0; l < nb; ++l) {
          T y[W];
          load_row<W>(base + l * W, y);
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r].push(argument(r, y), static_cast<const T*>(nullptr));
        }
      }
    }
  }

  JAXKEOPS_HD static int lowest_bit(uint32_t m) {
#ifdef __CUDA_ARCH__
    return __ffs(m) - 1;
#else
    return __builtin_ctz(m);
#endif
  }

  JAXKEOPS_HD void finish(const FusedCall& call, const Problem<T>& p, const WorkItem& w) const {
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (row[r] < call.n_outer) RowState<T, Acc>::finish(acc[r], call, p.b, row[r], w.split, 0, 1);
  }
};

}  // namespace jaxkeops::fused
