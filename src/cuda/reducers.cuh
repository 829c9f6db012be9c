// Reducers of the CUDA executor (host+device: the kernels and their host emulation share them).
// One output row's accumulator, fed one sub-tile of kSubTile inner indices at a time (the lanes
// past `nv` are masked). The semantics (state layout, tie rules, NaN and infinity handling,
// empty rows) are those of src/reductions.h. Across sub-tiles the state is an array of doubles
// (indices exact up to 2^53, sums in double); within a sub-tile the reducers keep what they
// need in registers and sum in the compute dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda/device_program.h"
#include "cuda/tile_interpreter.h"
#include "ops.h"

namespace jaxkeops::cuda {

// Writes the outputs of one row: put(k, i, v) stores v into element i of output k's row.
template <class T>
struct RowWriter {
  const DevCall* call;
  int64_t row;  // flat (batch, outer) row

  JAXKEOPS_HD void put(int k, int64_t i, double v) const {
    const DevOutput& o = call->outs[k];
    const int64_t at = row * o.width + i;
    switch (static_cast<OutType>(o.type)) {
      case OutType::kValue: static_cast<T*>(o.data)[at] = static_cast<T>(v); break;
      case OutType::kS32: static_cast<int32_t*>(o.data)[at] = static_cast<int32_t>(v); break;
      case OutType::kS64: static_cast<int64_t*>(o.data)[at] = static_cast<int64_t>(v); break;
    }
  }
};

JAXKEOPS_HD inline double dev_inf() { return std::numeric_limits<double>::infinity(); }
JAXKEOPS_HD inline double dev_nan() { return std::numeric_limits<double>::quiet_NaN(); }

template <bool B>
struct Flag {
  static constexpr bool value = B;
};

// Calls f(Flag<masked>, Flag<r0 varies>, Flag<r1 varies>): the lane loops of a sub-tile
// specialised on whether it is partial and whether the result registers vary over it.
template <class T, class F>
JAXKEOPS_HD inline void with_lanes(int nv, const View<T>& r0, const View<T>& r1, const F& f) {
  const bool full = nv == S;
  if (r0.vary && r1.vary) {
    if (full) f(Flag<false>(), Flag<true>(), Flag<true>()); else f(Flag<true>(), Flag<true>(), Flag<true>());
  } else if (r0.vary) {
    if (full) f(Flag<false>(), Flag<true>(), Flag<false>()); else f(Flag<true>(), Flag<true>(), Flag<false>());
  } else if (r1.vary) {
    if (full) f(Flag<false>(), Flag<false>(), Flag<true>()); else f(Flag<true>(), Flag<false>(), Flag<true>());
  } else {
    if (full) f(Flag<false>(), Flag<false>(), Flag<false>()); else f(Flag<true>(), Flag<false>(), Flag<false>());
  }
}

// Element d of lane s of a result view, the lane stride known at compile time.
template <bool V, class T>
JAXKEOPS_HD inline T lane(const View<T>& v, int d, int s) {
  return v.p[d * v.ds + (V ? s : 0)];
}

// ---------------------------------------------------------------- Sum (accumulated in double)
struct SumOps {
  JAXKEOPS_HD static void init(const DevReduction& r, double* st) {
    for (int d = 0; d < r.dim; ++d) st[d] = 0.0;
  }
  // Per component: the sub-tile summed in T (registers), added to the double state.
  template <class T>
  JAXKEOPS_HD static void accumulate(const DevReduction& r, double* st, const View<T>& r0,
                                     const View<T>& r1, int64_t, int nv) {
    with_lanes(nv, r0, r1, [&](auto masked, auto v0, auto) {
      constexpr bool kMasked = decltype(masked)::value, kV0 = decltype(v0)::value;
      for (int d = 0; d < r.dim; ++d) {
        T acc = T(0);
#pragma unroll
        for (int s = 0; s < S; ++s)
          if (!kMasked || s < nv) acc += lane<kV0>(r0, d, s);
        st[d] += static_cast<double>(acc);
      }
    });
  }
  JAXKEOPS_HD static void combine(const DevReduction& r, double* a, const double* b) {
    for (int d = 0; d < r.dim; ++d) a[d] += b[d];
  }
  template <class W>
  JAXKEOPS_HD static void finalize(const DevReduction& r, const double* st, const W& w) {
    for (int d = 0; d < r.dim; ++d) w.put(0, d, st[d]);
  }
};

// ---------------------------------------------------------------- LogSumExp family
// state = [m, Σ exp(S - m), Σ exp(S - m) w_e (E, weighted kinds)], with a running maximum m.
struct ExpSumOps {
  JAXKEOPS_HD static bool weighted(const DevReduction& r) {
    return static_cast<ExpKind>(r.kind) != ExpKind::kLogSumExp;
  }
  JAXKEOPS_HD static void init(const DevReduction& r, double* st) {
    st[0] = -dev_inf();
    for (int k = 1; k < r.state_size; ++k) st[k] = 0.0;
  }
  // One sub-tile: its largest score rescales the state once (in double), then the exps are
  // taken in T against that maximum and summed in T. -inf scores are masked pairs, a +inf score
  // makes the row +inf (weights NaN), a NaN score makes the sums NaN: all independent of the
  // order, as in reductions.h.
  template <class T>
  JAXKEOPS_HD static void accumulate(const DevReduction& r, double* st, const View<T>& r0,
                                     const View<T>& r1, int64_t, int nv) {
    const double inf = dev_inf();
    if (st[0] == inf) return;  // already +inf: nothing changes it
    with_lanes(nv, r0, r1, [&](auto masked, auto v0, auto v1) {
      constexpr bool kMasked = decltype(masked)::value, kV0 = decltype(v0)::value,
                     kV1 = decltype(v1)::value;
      const T tinf = std::numeric_limits<T>::infinity();
      T mx = -tinf;
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const T x = lane<kV0>(r0, 0, s);
        if (!kMasked || s < nv) mx = x > mx ? x : mx;  // NaN never raises the maximum
      }
      if (mx == tinf) {
        st[0] = inf;
        st[1] = 1.0;
        for (int k = 2; k < r.state_size; ++k) st[k] = dev_nan();
        return;
      }
      if (static_cast<double>(mx) > st[0]) {
        const double scale = opfn::exp_(st[0] - static_cast<double>(mx));  // 0 when m is -inf
        for (int k = 1; k < r.state_size; ++k) st[k] *= scale;
        st[0] = static_cast<double>(mx);
      }
      const T m = static_cast<T>(st[0]);  // exact: a T score or -inf
      T w[S];
      bool keep[S];
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const T x = lane<kV0>(r0, 0, s);
        keep[s] = (!kMasked || s < nv) && x != -tinf;
        w[s] = keep[s] ? opfn::exp_(static_cast<T>(x - m)) : T(0);
      }
      if (static_cast<ExpKind>(r.kind) != ExpKind::kLogSumExpWeight) {
        T acc = T(0);
#pragma unroll
        for (int s = 0; s < S; ++s) acc += w[s];
        st[1] += static_cast<double>(acc);
      }
      if (weighted(r)) {
        for (int e = 0; e < r.e; ++e) {
          T acc = T(0);
#pragma unroll
          for (int s = 0; s < S; ++s)
            if (keep[s]) acc += w[s] * lane<kV1>(r1, e, s);
          st[2 + e] += static_cast<double>(acc);
        }
      }
    });
  }
  JAXKEOPS_HD static void combine(const DevReduction& r, double* a, const double* b) {
    const double inf = dev_inf();
    // A NaN score (NaN sums, whatever the maximum) makes the row NaN, wherever the chunks fall.
    bool a_nan = false, b_nan = false;
    for (int k = 0; k < r.state_size; ++k) {
      a_nan |= a[k] != a[k];
      b_nan |= b[k] != b[k];
    }
    if (a_nan || b_nan) {
      if (!a_nan)
        for (int k = 0; k < r.state_size; ++k) a[k] = b[k];
      return;
    }
    if (b[0] == -inf || a[0] == inf) return;
    if (b[0] == inf || a[0] == -inf) {
      for (int k = 0; k < r.state_size; ++k) a[k] = b[k];
      return;
    }
    const double m = a[0] > b[0] ? a[0] : b[0];
    const double sa = opfn::exp_(a[0] - m), sb = opfn::exp_(b[0] - m);
    a[0] = m;
    for (int k = 1; k < r.state_size; ++k) a[k] = a[k] * sa + b[k] * sb;
  }
  template <class W>
  JAXKEOPS_HD static void finalize(const DevReduction& r, const double* st, const W& w) {
    const double m = st[0], inf = dev_inf();
    switch (static_cast<ExpKind>(r.kind)) {
      case ExpKind::kLogSumExp: w.put(0, 0, m == inf ? m : m + opfn::log_(st[1])); break;
      case ExpKind::kLogSumExpWeight:
        for (int e = 0; e < r.e; ++e) w.put(0, e, m == -inf ? -inf : m + opfn::log_(st[2 + e]));
        break;
      case ExpKind::kSumSoftMaxWeight:
        for (int e = 0; e < r.e; ++e) w.put(0, e, st[2 + e] / st[1]);
        break;
    }
  }
};

// ---------------------------------------------------------------- Min / Max and arg versions
// state = [value (D), index (D)]; index -1 while nothing was seen; NaN skipped; strict
// comparisons in increasing inner order keep the lowest index on ties.
struct MinMaxOps {
  JAXKEOPS_HD static bool better(const DevReduction& r, double a, double b) {
    return r.is_max ? a > b : a < b;
  }
  JAXKEOPS_HD static void init(const DevReduction& r, double* st) {
    for (int d = 0; d < r.dim; ++d) {
      st[d] = r.is_max ? -dev_inf() : dev_inf();
      st[r.dim + d] = -1.0;
    }
  }
  // Per component, the best value and its index in registers over the sub-tile.
  template <class T>
  JAXKEOPS_HD static void accumulate(const DevReduction& r, double* st, const View<T>& r0,
                                     const View<T>& r1, int64_t j0, int nv) {
    with_lanes(nv, r0, r1, [&](auto masked, auto v0, auto) {
      constexpr bool kMasked = decltype(masked)::value, kV0 = decltype(v0)::value;
      for (int d = 0; d < r.dim; ++d) {
        T best = static_cast<T>(st[d]);  // exact: a T value or an infinity
        int found = -1;                  // lane of the new best, -1: none in this sub-tile
        bool have = st[r.dim + d] >= 0;
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const T x = lane<kV0>(r0, d, s);
          const bool take = (!kMasked || s < nv) && x == x &&
                            (!have || (r.is_max ? x > best : x < best));
          best = take ? x : best;
          found = take ? s : found;
          have = have || take;
        }
        if (found >= 0) {
          st[d] = static_cast<double>(best);
          st[r.dim + d] = static_cast<double>(j0 + found);
        }
      }
    });
  }
  JAXKEOPS_HD static void combine(const DevReduction& r, double* a, const double* b) {
    for (int d = 0; d < r.dim; ++d) {
      if (b[r.dim + d] >= 0 && (a[r.dim + d] < 0 || better(r, b[d], a[d]))) {
        a[d] = b[d];
        a[r.dim + d] = b[r.dim + d];
      }
    }
  }
  template <class W>
  JAXKEOPS_HD static void finalize(const DevReduction& r, const double* st, const W& w) {
    const Pick pick = static_cast<Pick>(r.pick);
    for (int d = 0; d < r.dim; ++d) {
      if (pick == Pick::kIndex) {
        w.put(0, d, st[r.dim + d]);
      } else {
        w.put(0, d, st[d]);
        if (pick == Pick::kBoth) w.put(1, d, st[r.dim + d]);
      }
    }
  }
};

// ---------------------------------------------------------------- K-min and arg-K-min
// Per component a sorted buffer of the K smallest values with their indices:
// state = [values (D x K), indices (D x K)], empty slots have index -1. Outputs are (K, D).
struct KMinOps {
  JAXKEOPS_HD static void init(const DevReduction& r, double* st) {
    const int64_t n = int64_t(r.k) * r.dim;
    for (int64_t s = 0; s < n; ++s) {
      st[s] = dev_inf();
      st[n + s] = -1.0;
    }
  }
  // Insertion into the sorted buffer of component d (state in memory).
  JAXKEOPS_HD static void insert(const DevReduction& r, double* st, int d, double x, int64_t j) {
    const int K = r.k;
    const int64_t n = int64_t(K) * r.dim;
    double* vals = st + int64_t(d) * K;
    double* idx = st + n + int64_t(d) * K;
    if (x != x) return;
    if (idx[K - 1] >= 0 && !(x < vals[K - 1])) return;
    int s = K - 1;  // insertion: empty slots and larger values move one place right
    while (s > 0 && (idx[s - 1] < 0 || vals[s - 1] > x)) {
      vals[s] = vals[s - 1];
      idx[s] = idx[s - 1];
      --s;
    }
    vals[s] = x;
    idx[s] = static_cast<double>(j);
  }
  template <class T>
  JAXKEOPS_HD static void accumulate(const DevReduction& r, double* st, const View<T>& r0,
                                     const View<T>&, int64_t j0, int nv) {
    for (int s = 0; s < nv; ++s)
      for (int d = 0; d < r.dim; ++d) insert(r, st, d, static_cast<double>(r0.at(d, s)), j0 + s);
  }
  // Merge of two sorted buffers in place (b covers higher inner indices: a first on ties).
  // Walks from the top so that a's entries are moved before they are overwritten.
  JAXKEOPS_HD static void combine(const DevReduction& r, double* a, const double* b) {
    const int K = r.k;
    const int64_t n = int64_t(K) * r.dim;
    for (int d = 0; d < r.dim; ++d) {
      double* av = a + int64_t(d) * K;
      double* ai = a + n + int64_t(d) * K;
      const double* bv = b + int64_t(d) * K;
      const double* bi = b + n + int64_t(d) * K;
      int na = 0, nb = 0;
      while (na < K && ai[na] >= 0) ++na;
      while (nb < K && bi[nb] >= 0) ++nb;
      // The merged buffer keeps the first K of the na + nb entries: count how many of each.
      int ta = 0, tb = 0;
      while (ta + tb < K && (ta < na || tb < nb)) {
        if (ta < na && (tb >= nb || av[ta] <= bv[tb])) ++ta; else ++tb;
      }
      // Fill from the last kept position down, merging backwards.
      int ia = ta - 1, ib = tb - 1;
      for (int s = ta + tb - 1; s >= 0; --s) {
        if (ib < 0 || (ia >= 0 && av[ia] > bv[ib])) {
          av[s] = av[ia];
          ai[s] = ai[ia];
          --ia;
        } else {
          av[s] = bv[ib];
          ai[s] = bi[ib];
          --ib;
        }
      }
      for (int s = ta + tb; s < K; ++s) {
        av[s] = dev_inf();
        ai[s] = -1.0;
      }
    }
  }
  template <class W>
  JAXKEOPS_HD static void finalize(const DevReduction& r, const double* st, const W& w) {
    const int K = r.k;
    const int64_t n = int64_t(K) * r.dim;
    const Pick pick = static_cast<Pick>(r.pick);
    for (int d = 0; d < r.dim; ++d) {
      for (int s = 0; s < K; ++s) {
        const int64_t at = int64_t(s) * r.dim + d;
        if (pick == Pick::kIndex) {
          w.put(0, at, st[n + int64_t(d) * K + s]);
        } else {
          w.put(0, at, st[int64_t(d) * K + s]);
          if (pick == Pick::kBoth) w.put(1, at, st[n + int64_t(d) * K + s]);
        }
      }
    }
  }
};

}  // namespace jaxkeops::cuda
