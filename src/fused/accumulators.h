// Per-row reducer state of the fused kernels, in registers (host and device): one accumulator
// per output row and pass over CH value components (CH compile-time, nc <= CH of them valid).
// Semantics are those of src/reductions.h (empty-axis values, NaN and tie rules); sums run in T
// within a tile and in double across tiles.
//
// Interface (the per-thread bodies are written against it):
//   init(...)                              empty state
//   pair(phi, psi, nc, j)                  one pair: φ and the CH components of Ψ
//   end_tile(nc)                           after each tile of inner points
//   store(st, c0, nc, dim) / load(...)     to / from the double state of a split (layout below)
//   merge(later, nc)                       a covers a lower inner range than `later`
//   write(call, row, c0, nc)               final outputs of one row
// State layouts (doubles per row and split; chunk c0 owns components [c0, c0 + nc)):
//   Sum [dim]; ExpSum [m, denominator, numerators (dim)]; MinMax [value (dim), index (dim)];
//   KMin [values (dim x K), indices (dim x K)] (the K-min lists always live there).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "fast_math.h"
#include "fused/fused_call.h"

namespace jaxkeops::fused {

namespace detail {

template <class T>
JAXKEOPS_HD inline T infinity() {
  return std::numeric_limits<T>::infinity();
}

template <class T>
JAXKEOPS_HD inline T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

// The largest T below x (x itself for -inf and NaN): "v <= next_below(k)" is "v < k". Bit
// arithmetic, not nextafter: a libm call would give the kernels a stack frame.
template <class T>
JAXKEOPS_HD inline T next_below(T x) {
  using Bits = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  if (x != x || x == -infinity<T>()) return x;
  if (x == T(0)) return -std::numeric_limits<T>::denorm_min();
  const Bits b = jaxkeops::detail::bit_cast<Bits>(x);
  return jaxkeops::detail::bit_cast<T>(x > T(0) ? b - 1 : b + 1);
}

JAXKEOPS_HD inline double log_double(double x) {
#ifdef __CUDA_ARCH__
  return ::log(x);
#else
  return std::log(x);
#endif
}

}  // namespace detail

// Output k of the call, row `row` (flat over the launch's batch problems), element `pos`.
template <class T>
JAXKEOPS_HD inline void write_value(const FusedCall& call, int k, int64_t row, int64_t pos,
                                    double v) {
  static_cast<T*>(call.out[k])[row * call.out_width[k] + pos] = static_cast<T>(v);
}

JAXKEOPS_HD inline void write_index(const FusedCall& call, int k, int64_t row, int64_t pos,
                                    int64_t idx) {
  if (call.out_type[k] == int32_t(OutType::kS32))
    static_cast<int32_t*>(call.out[k])[row * call.out_width[k] + pos] = static_cast<int32_t>(idx);
  else
    static_cast<int64_t*>(call.out[k])[row * call.out_width[k] + pos] = idx;
}

// ---------------------------------------------------------------- Sum

template <class T, int CH>
struct SumAcc {
  T tile[CH];
  double total[CH];

  JAXKEOPS_HD void init() {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      tile[c] = T(0);
      total[c] = 0.0;
    }
  }

  JAXKEOPS_HD void pair(T phi, const T* psi, int, int32_t) {
#pragma unroll
    for (int c = 0; c < CH; ++c) tile[c] += phi * psi[c];
  }

  JAXKEOPS_HD void end_tile(int) {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      total[c] += static_cast<double>(tile[c]);
      tile[c] = T(0);
    }
  }

  JAXKEOPS_HD void store(double* st, int c0, int nc, int) const {
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (c < nc) st[c0 + c] = total[c];
  }

  JAXKEOPS_HD void load(const double* st, int c0, int nc, int) {
    init();
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (c < nc) total[c] = st[c0 + c];
  }

  JAXKEOPS_HD void merge(const SumAcc& b, int) {
#pragma unroll
    for (int c = 0; c < CH; ++c) total[c] += b.total[c];
  }

  JAXKEOPS_HD void write(const FusedCall& call, int64_t row, int c0, int nc) const {
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (c < nc) write_value<T>(call, 0, row, c0 + c, total[c]);
  }
};

// ---------------------------------------------------------------- LogSumExp family

// Running maximum m of the scores (in Exp's units: score * Exp::kScale), sums of exp(S - m)
// relative to it, rescaled only when m moves. m starts at the lowest finite T, so that -inf
// scores (masked pairs) add exp(-inf) = 0 and never need a test; a +inf score makes m +inf,
// which fixes the result (finalize); NaN scores make the sums NaN.
template <class T, int CH, class Exp, ExpKind Kind>
struct ExpSumAcc {
  static constexpr bool kWeighted = Kind != ExpKind::kLogSumExp;
  static constexpr bool kDenominator = Kind != ExpKind::kLogSumExpWeight;
  static constexpr int NW = kWeighted ? CH : 1;

  T m;
  T den_tile;
  double den;
  T num_tile[NW];
  double num[NW];

  JAXKEOPS_HD void init() {
    m = std::numeric_limits<T>::lowest();
    den_tile = T(0);
    den = 0.0;
#pragma unroll
    for (int c = 0; c < NW; ++c) {
      num_tile[c] = T(0);
      num[c] = 0.0;
    }
  }

  // A new maximum: everything summed so far is relative to the old one.
  JAXKEOPS_HD void rebase(T score) {
    const T f = Exp::exp_ftz(m - score);
    den_tile *= f;
    den *= static_cast<double>(f);
#pragma unroll
    for (int c = 0; c < NW; ++c) {
      num_tile[c] *= f;
      num[c] *= static_cast<double>(f);
    }
    m = score;
  }

  // `score` already in Exp's units.
  JAXKEOPS_HD void push(T score, const T* w) {
    if (score > m) rebase(score);
    const T e = Exp::exp_ftz(score - m);
    if constexpr (kDenominator) den_tile += e;
    if constexpr (kWeighted) {
#pragma unroll
      for (int c = 0; c < CH; ++c) num_tile[c] += e * w[c];
    }
  }

  JAXKEOPS_HD void pair(T phi, const T* psi, int, int32_t) { push(phi * Exp::kScale, psi); }

  // The hot bodies' fast path (denominator only): terms exp(S - m) with m left where it is, as
  // long as S <= m + kSlack, so that terms stay below 2^kSlack and the sums far from overflow;
  // the caller checks `score > slack_limit()` and redoes the block with push() when it holds.
  static constexpr T kSlack = T(64);
  JAXKEOPS_HD T slack_limit() const { return m + kSlack; }
  JAXKEOPS_HD void add_fast(T score) { den_tile += Exp::exp_ftz(score - m); }

  JAXKEOPS_HD void end_tile(int) {
    den += static_cast<double>(den_tile);
    den_tile = T(0);
#pragma unroll
    for (int c = 0; c < NW; ++c) {
      num[c] += static_cast<double>(num_tile[c]);
      num_tile[c] = T(0);
    }
  }

  JAXKEOPS_HD void store(double* st, int c0, int nc, int) const {
    if (c0 == 0) {  // every chunk has the same m and denominator: chunk 0 writes them
      st[0] = static_cast<double>(m);
      st[1] = den;
    }
    if constexpr (kWeighted) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
        if (c < nc) st[2 + c0 + c] = num[c];
    }
  }

  JAXKEOPS_HD void load(const double* st, int c0, int nc, int) {
    init();
    m = static_cast<T>(st[0]);  // exact: it was a T
    den = st[1];
    if constexpr (kWeighted) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
        if (c < nc) num[c] = st[2 + c0 + c];
    }
  }

  JAXKEOPS_HD void merge(const ExpSumAcc& b, int) {
    const T top = m > b.m ? m : b.m;
    if (top == detail::infinity<T>()) {
      m = top;  // fixes the result (finalize)
      return;
    }
    const double fa = Exp::exp_double(double(m) - double(top));
    const double fb = Exp::exp_double(double(b.m) - double(top));
    den = den * fa + b.den * fb;
#pragma unroll
    for (int c = 0; c < NW; ++c) num[c] = num[c] * fa + b.num[c] * fb;
    m = top;
  }

  JAXKEOPS_HD void write(const FusedCall& call, int64_t row, int c0, int nc) const {
    const bool inf = m == detail::infinity<T>();
    const double shift = static_cast<double>(m) * Exp::kInvScale;
    if constexpr (Kind == ExpKind::kLogSumExp) {
      write_value<T>(call, 0, row, 0, inf ? double(m) : shift + detail::log_double(den));
    } else {
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        if (c >= nc) continue;
        double r;
        if (inf)
          r = detail::quiet_nan<double>();
        else if constexpr (Kind == ExpKind::kLogSumExpWeight)
          r = shift + detail::log_double(num[c]);  // NaN when negative, -inf when 0
        else
          r = num[c] / den;  // 0/0 = NaN on an empty axis
        write_value<T>(call, 0, row, c0 + c, r);
      }
    }
  }
};

// ---------------------------------------------------------------- Min / Max and arg versions

// The best value and the lowest inner index that reaches it, per component. Strict comparisons
// visit j in increasing order, so ties keep the lowest index and NaN never wins. A component
// whose values so far are all the initial ±inf (or NaN) still has no index: the body rescans
// that tile for the first ±inf (`needs_rescan`, off the hot path), as reductions.h picks it.
template <class T, int CH, bool IsMax>
struct MinMaxAcc {
  T best[CH];
  int32_t idx[CH];

  JAXKEOPS_HD static bool better(T a, T b) { return IsMax ? a > b : a < b; }
  JAXKEOPS_HD static T worst() { return IsMax ? -detail::infinity<T>() : detail::infinity<T>(); }

  JAXKEOPS_HD void init() {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      best[c] = worst();
      idx[c] = -1;
    }
  }

  JAXKEOPS_HD void take(int c, T v, int32_t j) {
    const bool b = better(v, best[c]);
    best[c] = b ? v : best[c];
    idx[c] = b ? j : idx[c];
  }

  JAXKEOPS_HD void pair(T phi, const T* psi, int, int32_t j) {
#pragma unroll
    for (int c = 0; c < CH; ++c) take(c, phi * psi[c], j);
  }

  JAXKEOPS_HD bool needs_rescan(int nc) const {
    bool any = false;
#pragma unroll
    for (int c = 0; c < CH; ++c) any |= c < nc && idx[c] < 0;
    return any;
  }

  // Second pass over a tile where some component found nothing better than ±inf.
  JAXKEOPS_HD void rescan_pair(T phi, const T* psi, int, int32_t j) {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const T v = phi * psi[c];
      if (idx[c] < 0 && v == worst()) idx[c] = j;
    }
  }

  JAXKEOPS_HD void end_tile(int) {}

  JAXKEOPS_HD void store(double* st, int c0, int nc, int dim) const {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      if (c >= nc) continue;
      st[c0 + c] = static_cast<double>(best[c]);
      st[dim + c0 + c] = static_cast<double>(idx[c]);
    }
  }

  JAXKEOPS_HD void load(const double* st, int c0, int nc, int dim) {
    init();
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      if (c >= nc) continue;
      best[c] = static_cast<T>(st[c0 + c]);
      idx[c] = static_cast<int32_t>(st[dim + c0 + c]);
    }
  }

  JAXKEOPS_HD void merge(const MinMaxAcc& b, int) {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      if (b.idx[c] >= 0 && (idx[c] < 0 || better(b.best[c], best[c]))) {
        best[c] = b.best[c];
        idx[c] = b.idx[c];
      }
    }
  }

  JAXKEOPS_HD void write(const FusedCall& call, int64_t row, int c0, int nc) const {
    const int idx_out = call.pick == int32_t(Pick::kBoth) ? 1 : 0;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      if (c >= nc) continue;
      if (call.pick != int32_t(Pick::kIndex))
        write_value<T>(call, 0, row, c0 + c, static_cast<double>(best[c]));
      if (call.pick != int32_t(Pick::kValue)) write_index(call, idx_out, row, c0 + c, idx[c]);
    }
  }
};

// ---------------------------------------------------------------- K-min and arg-K-min

// The K smallest values per component, ascending, equal values in ascending index order. The
// lists live in the call's state buffer (doubles, reductions.h's layout); a register keeps the
// admission threshold: +inf while the list has a free slot (every non-NaN value enters), else
// the largest T below the K-th value, so that the hot test is one `v <= threshold` and the
// insertion runs out of line.
template <class T, int CH>
struct KMinAcc {
  T threshold[CH];
  double* st;  // this row's (and split's) state
  int32_t K, dim, c0;

  JAXKEOPS_HD void bind(double* state, int32_t k, int32_t d, int32_t first) {
    st = state;
    K = k;
    dim = d;
    c0 = first;
  }

  JAXKEOPS_HD double* vals(int c) const { return st + int64_t(c0 + c) * K; }
  JAXKEOPS_HD double* idxs(int c) const { return st + int64_t(dim) * K + int64_t(c0 + c) * K; }

  JAXKEOPS_HD void init_lists(int nc) {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      threshold[c] = detail::infinity<T>();
      if (c >= nc) continue;
      double* v = vals(c);
      double* ix = idxs(c);
      for (int32_t s = 0; s < K; ++s) {
        v[s] = detail::infinity<double>();
        ix[s] = -1.0;
      }
    }
  }

  JAXKEOPS_HD void refresh_threshold(int c) {
    const double* ix = idxs(c);
    threshold[c] = ix[K - 1] >= 0 ? detail::next_below(static_cast<T>(vals(c)[K - 1]))
                                  : detail::infinity<T>();
  }

  JAXKEOPS_HD void insert(int c, T value, int32_t j) {
    double* v = vals(c);
    double* ix = idxs(c);
    const double x = static_cast<double>(value);
    if (ix[K - 1] >= 0 && !(x < v[K - 1])) return;  // a tie with the K-th: it keeps its place
    int32_t s = K - 1;
    while (s > 0 && (ix[s - 1] < 0 || v[s - 1] > x)) {
      v[s] = v[s - 1];
      ix[s] = ix[s - 1];
      --s;
    }
    v[s] = x;
    ix[s] = static_cast<double>(j);
    refresh_threshold(c);
  }

  JAXKEOPS_HD void take(int c, T v, int32_t j) {
    if (v <= threshold[c]) insert(c, v, j);
  }

  JAXKEOPS_HD void pair(T phi, const T* psi, int nc, int32_t j) {
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (c < nc) take(c, phi * psi[c], j);
  }

  JAXKEOPS_HD void end_tile(int) {}

  // Merges the lists of a later split (`later`, same layout) into this row's, in place: the
  // K first of the two sorted lists, this one's entries first on equal values.
  JAXKEOPS_HD void merge_state(const double* later, int nc) {
    for (int c = 0; c < nc; ++c) {
      double* av = vals(c);
      double* ai = idxs(c);
      const double* bv = later + int64_t(c0 + c) * K;
      const double* bi = later + int64_t(dim) * K + int64_t(c0 + c) * K;
      // Forward: how many of the K first come from each list.
      int32_t na = 0, nb = 0;
      for (int32_t s = 0; s < K; ++s) {
        const bool a_ok = na < K && ai[na] >= 0;
        const bool b_ok = nb < K && bi[nb] >= 0;
        if (a_ok && (!b_ok || av[na] <= bv[nb]))
          ++na;
        else if (b_ok)
          ++nb;
        else
          break;
      }
      // Backward, in place: position w takes the larger of the two tails.
      int32_t ia = na - 1, ib = nb - 1;
      for (int32_t w = na + nb - 1; w >= 0; --w) {
        if (ib < 0 || (ia >= 0 && av[ia] > bv[ib])) {
          av[w] = av[ia];
          ai[w] = ai[ia];
          --ia;
        } else {
          av[w] = bv[ib];
          ai[w] = bi[ib];
          --ib;
        }
      }
    }
  }

  JAXKEOPS_HD void write(const FusedCall& call, int64_t row, int nc) const {
    const int idx_out = call.pick == int32_t(Pick::kBoth) ? 1 : 0;
    for (int c = 0; c < nc; ++c) {
      const double* v = vals(c);
      const double* ix = idxs(c);
      for (int32_t s = 0; s < K; ++s) {
        const int64_t pos = int64_t(s) * dim + c0 + c;
        if (call.pick != int32_t(Pick::kIndex)) write_value<T>(call, 0, row, pos, v[s]);
        if (call.pick != int32_t(Pick::kValue))
          write_index(call, idx_out, row, pos, static_cast<int64_t>(ix[s]));
      }
    }
  }
};

}  // namespace jaxkeops::fused
