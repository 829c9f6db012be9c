// Device reducers: one output row's accumulator, fed one inner index at a time. The semantics
// (state layout, tie rules, NaN and infinity handling, empty rows) are those of src/reductions.h;
// the CPU reducers there work on tiles of lanes, these on single values, so they are separate
// code with the same state layout. State is an array of doubles (indices exact up to 2^53).
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/device_program.h"
#include "ops.h"

namespace jaxkeops::cuda {

// Writes the outputs of one row: put(k, i, v) stores v into element i of output k's row.
template <class T>
struct RowWriter {
  const DevCall* call;
  int64_t row;  // flat (batch, outer) row

  __device__ void put(int k, int64_t i, double v) const {
    const DevOutput& o = call->outs[k];
    const int64_t at = row * o.width + i;
    switch (static_cast<OutType>(o.type)) {
      case OutType::kValue: static_cast<T*>(o.data)[at] = static_cast<T>(v); break;
      case OutType::kS32: static_cast<int32_t*>(o.data)[at] = static_cast<int32_t>(v); break;
      case OutType::kS64: static_cast<int64_t*>(o.data)[at] = static_cast<int64_t>(v); break;
    }
  }
};

__device__ inline double dev_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ inline double dev_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// ---------------------------------------------------------------- Sum (accumulated in double)
struct SumOps {
  __device__ static void init(const DevReduction& r, double* st) {
    for (int d = 0; d < r.dim; ++d) st[d] = 0.0;
  }
  template <class V>
  __device__ static void accumulate(const DevReduction& r, double* st, const V& v, int64_t) {
    for (int d = 0; d < r.dim; ++d) st[d] += static_cast<double>(v(0, d));
  }
  __device__ static void combine(const DevReduction& r, double* a, const double* b) {
    for (int d = 0; d < r.dim; ++d) a[d] += b[d];
  }
  template <class W>
  __device__ static void finalize(const DevReduction& r, const double* st, const W& w) {
    for (int d = 0; d < r.dim; ++d) w.put(0, d, st[d]);
  }
};

// ---------------------------------------------------------------- LogSumExp family
// state = [m, Σ exp(S - m), Σ exp(S - m) w_e (E, weighted kinds)], with a running maximum m.
struct ExpSumOps {
  __device__ static bool weighted(const DevReduction& r) {
    return static_cast<ExpKind>(r.kind) != ExpKind::kLogSumExp;
  }
  __device__ static void init(const DevReduction& r, double* st) {
    st[0] = -dev_inf();
    for (int k = 1; k < r.state_size; ++k) st[k] = 0.0;
  }
  template <class V>
  __device__ static void accumulate(const DevReduction& r, double* st, const V& v, int64_t) {
    using T = decltype(v(0, 0));
    const double inf = dev_inf();
    if (st[0] == inf) return;  // already +inf: nothing changes it
    const T s = v(0, 0);
    if (static_cast<double>(s) == -inf) return;  // masked pair
    if (static_cast<double>(s) == inf) {
      st[0] = inf;
      st[1] = 1.0;
      for (int k = 2; k < r.state_size; ++k) st[k] = dev_nan();
      return;
    }
    if (static_cast<double>(s) > st[0]) {
      const double scale = exp(st[0] - static_cast<double>(s));  // 0 when m is -inf
      for (int k = 1; k < r.state_size; ++k) st[k] *= scale;
      st[0] = static_cast<double>(s);
    }
    // exp in the compute dtype, sums in double (as the CPU executor).
    const T w = opfn::exp_(static_cast<T>(s - static_cast<T>(st[0])));
    if (static_cast<ExpKind>(r.kind) != ExpKind::kLogSumExpWeight) st[1] += static_cast<double>(w);
    if (weighted(r))
      for (int e = 0; e < r.e; ++e) st[2 + e] += static_cast<double>(w) * static_cast<double>(v(1, e));
  }
  __device__ static void combine(const DevReduction& r, double* a, const double* b) {
    const double inf = dev_inf();
    if (b[0] == -inf || a[0] == inf) return;
    if (b[0] == inf || a[0] == -inf) {
      for (int k = 0; k < r.state_size; ++k) a[k] = b[k];
      return;
    }
    const double m = a[0] > b[0] ? a[0] : b[0];
    const double sa = exp(a[0] - m), sb = exp(b[0] - m);
    a[0] = m;
    for (int k = 1; k < r.state_size; ++k) a[k] = a[k] * sa + b[k] * sb;
  }
  template <class W>
  __device__ static void finalize(const DevReduction& r, const double* st, const W& w) {
    const double m = st[0], inf = dev_inf();
    switch (static_cast<ExpKind>(r.kind)) {
      case ExpKind::kLogSumExp: w.put(0, 0, m == inf ? m : m + log(st[1])); break;
      case ExpKind::kLogSumExpWeight:
        for (int e = 0; e < r.e; ++e) w.put(0, e, m == -inf ? -inf : m + log(st[2 + e]));
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
  __device__ static bool better(const DevReduction& r, double a, double b) {
    return r.is_max ? a > b : a < b;
  }
  __device__ static void init(const DevReduction& r, double* st) {
    for (int d = 0; d < r.dim; ++d) {
      st[d] = r.is_max ? -dev_inf() : dev_inf();
      st[r.dim + d] = -1.0;
    }
  }
  template <class V>
  __device__ static void accumulate(const DevReduction& r, double* st, const V& v, int64_t j) {
    for (int d = 0; d < r.dim; ++d) {
      const double x = static_cast<double>(v(0, d));
      if (x == x && (st[r.dim + d] < 0 || better(r, x, st[d]))) {
        st[d] = x;
        st[r.dim + d] = static_cast<double>(j);
      }
    }
  }
  __device__ static void combine(const DevReduction& r, double* a, const double* b) {
    for (int d = 0; d < r.dim; ++d) {
      if (b[r.dim + d] >= 0 && (a[r.dim + d] < 0 || better(r, b[d], a[d]))) {
        a[d] = b[d];
        a[r.dim + d] = b[r.dim + d];
      }
    }
  }
  template <class W>
  __device__ static void finalize(const DevReduction& r, const double* st, const W& w) {
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
  __device__ static void init(const DevReduction& r, double* st) {
    const int64_t n = int64_t(r.k) * r.dim;
    for (int64_t s = 0; s < n; ++s) {
      st[s] = dev_inf();
      st[n + s] = -1.0;
    }
  }
  template <class V>
  __device__ static void accumulate(const DevReduction& r, double* st, const V& v, int64_t j) {
    const int K = r.k;
    const int64_t n = int64_t(K) * r.dim;
    for (int d = 0; d < r.dim; ++d) {
      const double x = static_cast<double>(v(0, d));
      double* vals = st + int64_t(d) * K;
      double* idx = st + n + int64_t(d) * K;
      if (x != x) continue;
      if (idx[K - 1] >= 0 && !(x < vals[K - 1])) continue;
      int s = K - 1;  // insertion: empty slots and larger values move one place right
      while (s > 0 && (idx[s - 1] < 0 || vals[s - 1] > x)) {
        vals[s] = vals[s - 1];
        idx[s] = idx[s - 1];
        --s;
      }
      vals[s] = x;
      idx[s] = static_cast<double>(j);
    }
  }
  // Merge of two sorted buffers in place (b covers higher inner indices: a first on ties).
  // Walks from the top so that a's entries are moved before they are overwritten.
  __device__ static void combine(const DevReduction& r, double* a, const double* b) {
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
  __device__ static void finalize(const DevReduction& r, const double* st, const W& w) {
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
