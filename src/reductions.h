// The reduction table of the native executors (codes match jaxkeops/reductions.py; the extension
// exports reduction_table() and a test checks both agree).
//
// A reducer turns the values of the program's result registers over the inner axis into one or
// more output rows per outer index. Its interface (the executors are written against it):
//
//   struct Reducer {
//     // Validation of the program's reduction part (called once at decode time):
//     static bool check(const std::vector<int32_t>& params,
//                       const std::vector<int32_t>& result_dims, std::string* error);
//     Reducer(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims);
//     std::vector<OutputInfo> outputs() const;  // per output: row shape, value or index
//     int64_t state_size() const;               // doubles of accumulator state per output row
//     void init(double* state) const;
//     // `n_valid` lanes of the result values; value of result k, dim d, lane l is
//     // v[k].ptr[d * v[k].dim_stride + l * LaneStride] (LaneStride 0: same value on every lane).
//     // `inner_base` is the inner index of lane 0 (for arg-reductions).
//     template <int LaneStride, class T>
//     void accumulate(double* state, const ResultView<T>* v, int64_t n_valid,
//                     int64_t inner_base) const;
//     // a covers a lower inner range than b (ties keep a's index).
//     void combine(double* a, const double* b) const;
//     // The outputs of one row, concatenated, in double (indices are exact integers); the
//     // executor converts each to its buffer's dtype.
//     void finalize(const double* state, double* out_row) const;
//   };
//
// State is a flat array of doubles (indices are exact in a double up to 2^53; -1 means "none
// yet"). Inner ranges are visited in increasing index order within a work item, so strict
// comparisons give ties to the lowest index, as KeOps does.
//
// Values on an empty inner axis (init then finalize): Sum 0, LogSumExp -inf, Min +inf,
// Max -inf, arg indices -1, SumSoftMaxWeight NaN (0/0).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "fast_math.h"

// X(Name, code, "name")
#define JAXKEOPS_REDUCTIONS(X)                \
  X(Sum, 0, "Sum")                            \
  X(LogSumExp, 1, "LogSumExp")                \
  X(LogSumExpWeight, 2, "LogSumExpWeight")    \
  X(SumSoftMaxWeight, 3, "SumSoftMaxWeight")  \
  X(Min, 4, "Min")                            \
  X(ArgMin, 5, "ArgMin")                      \
  X(Min_ArgMin, 6, "Min_ArgMin")              \
  X(Max, 7, "Max")                            \
  X(ArgMax, 8, "ArgMax")                      \
  X(Max_ArgMax, 9, "Max_ArgMax")              \
  X(KMin, 10, "KMin")                         \
  X(ArgKMin, 11, "ArgKMin")                   \
  X(KMin_ArgKMin, 12, "KMin_ArgKMin")

namespace jaxkeops {

enum class Reduction : int32_t {
#define JAXKEOPS_RED_ENUM(name, code, str) name = code,
  JAXKEOPS_REDUCTIONS(JAXKEOPS_RED_ENUM)
#undef JAXKEOPS_RED_ENUM
};

struct ReductionInfo {
  const char* name;
  int32_t code;
};

inline constexpr ReductionInfo kReductionInfos[] = {
#define JAXKEOPS_RED_INFO(name, code, str) {str, code},
    JAXKEOPS_REDUCTIONS(JAXKEOPS_RED_INFO)
#undef JAXKEOPS_RED_INFO
};

template <class T>
struct ResultView {
  const T* ptr;
  int64_t dim_stride;
};

// One output of a reduction: per outer row an array of shape `dims` (row-major), either values
// (the input dtype) or indices (int32 or int64).
struct OutputInfo {
  std::vector<int64_t> dims;
  bool is_index;
  int64_t width() const {
    int64_t w = 1;
    for (int64_t d : dims) w *= d;
    return w;
  }
};

namespace detail {

inline bool check_shape(const char* name, const std::vector<int32_t>& params, size_t n_params,
                        const std::vector<int32_t>& result_dims, size_t n_results,
                        std::string* error) {
  if (params.size() != n_params) {
    *error = std::string("reduction ") + name + " takes " + std::to_string(n_params) +
             " reduction parameter(s), got " + std::to_string(params.size());
    return false;
  }
  if (result_dims.size() != n_results) {
    *error = std::string("reduction ") + name + " takes exactly " + std::to_string(n_results) +
             " result register(s), got " + std::to_string(result_dims.size());
    return false;
  }
  return true;
}

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// Σ_{l < n} term(l) in double, kept in 32 independent partial sums (several vector registers:
// the add latency does not serialise the loop) combined by a fixed tree, so that the result
// does not depend on the machine.
inline constexpr int64_t kLaneSumWidth = 32;

template <class Term>
inline double lane_sum(int64_t n, Term&& term) {
  constexpr int64_t W = kLaneSumWidth;
  static_assert(W == 32, "the final tree below is written for 32 partial sums");
  double acc[W] = {};
  int64_t l = 0;
  for (; l + W <= n; l += W)
#pragma omp simd
    for (int64_t k = 0; k < W; ++k) acc[k] += static_cast<double>(term(l + k));
  for (int64_t k = 0; l + k < n; ++k) acc[k] += static_cast<double>(term(l + k));
#pragma omp simd
  for (int64_t k = 0; k < 8; ++k) acc[k] = (acc[k] + acc[k + 16]) + (acc[k + 8] + acc[k + 24]);
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace detail

// ---------------------------------------------------------------- Sum

// Sum over the inner axis: each tile is summed in double, so a float32 sum of 10^6 terms keeps
// float64-level accuracy (the CPU executor's row-block path for s * v with v of dim >= 16 sums
// each tile in T instead, as a matrix product does, and the tiles in double).
struct SumReducer {
  static bool check(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims,
                    std::string* error) {
    return detail::check_shape("Sum", params, 0, result_dims, 1, error);
  }

  SumReducer(const std::vector<int32_t>&, const std::vector<int32_t>& result_dims)
      : dim_(result_dims[0]) {}

  std::vector<OutputInfo> outputs() const { return {{{dim_}, false}}; }
  int64_t state_size() const { return dim_; }

  void init(double* state) const {
    for (int64_t d = 0; d < dim_; ++d) state[d] = 0.0;
  }

  template <int LaneStride, class T>
  void accumulate(double* state, const ResultView<T>* v, int64_t n_valid, int64_t) const {
    for (int64_t d = 0; d < dim_; ++d) {
      const T* p = v[0].ptr + d * v[0].dim_stride;
      if constexpr (LaneStride == 0) {
        state[d] += static_cast<double>(p[0]) * static_cast<double>(n_valid);
      } else {
        state[d] += detail::lane_sum(n_valid, [p](int64_t l) { return p[l]; });
      }
    }
  }

  void combine(double* a, const double* b) const {
    for (int64_t d = 0; d < dim_; ++d) a[d] += b[d];
  }

  // For executors that sum products s_l v_l themselves (the CPU executor's row-block path for a
  // formula s * v): the coefficients of a tile are the n_valid scalars s as they are, and the
  // tile's Σ_l s_l v_l (dim_ values, summed in T) arrive through add_numerators.
  template <class T>
  bool tile_weights(double*, const T* s, int64_t n_valid, T* w) const {
    std::copy_n(s, n_valid, w);
    return true;
  }

  template <class T>
  void add_numerators(double* state, const T* sums) const {
    for (int64_t d = 0; d < dim_; ++d) state[d] += static_cast<double>(sums[d]);
  }

  void finalize(const double* state, double* out_row) const {
    for (int64_t d = 0; d < dim_; ++d) out_row[d] = state[d];
  }

 private:
  int64_t dim_;
};

// ---------------------------------------------------------------- LogSumExp family

// Sums of exp(S) with a running maximum m: state = [m, Σ exp(S - m), Σ exp(S - m) w_e (E)].
// Scores of any magnitude neither overflow nor underflow; -inf scores (masked pairs) add
// nothing. Kind selects what is tracked and output:
//   LogSumExp         S (dim 1)          -> m + log Σ exp(S - m)                  (1)
//   LogSumExpWeight   S (dim 1), w (E)   -> m + log Σ exp(S - m) w  (NaN if Σ<0) (E)
//   SumSoftMaxWeight  S (dim 1), w (E)   -> Σ exp(S - m) w / Σ exp(S - m)         (E)
// A +inf score gives +inf (LogSumExp) or NaN (the weighted kinds).
enum class ExpKind { kLogSumExp, kLogSumExpWeight, kSumSoftMaxWeight };

template <ExpKind Kind>
struct ExpSumReducer {
  static constexpr bool kWeighted = Kind != ExpKind::kLogSumExp;
  static constexpr bool kDenominator = Kind != ExpKind::kLogSumExpWeight;
  static constexpr const char* kName = Kind == ExpKind::kLogSumExp         ? "LogSumExp"
                                       : Kind == ExpKind::kLogSumExpWeight ? "LogSumExpWeight"
                                                                           : "SumSoftMaxWeight";

  static bool check(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims,
                    std::string* error) {
    if (!detail::check_shape(kName, params, 0, result_dims, kWeighted ? 2 : 1, error))
      return false;
    if (result_dims[0] != 1) {
      *error = std::string("reduction ") + kName +
               " needs a scalar score (result 0 of dim 1), got dim " +
               std::to_string(result_dims[0]);
      return false;
    }
    return true;
  }

  ExpSumReducer(const std::vector<int32_t>&, const std::vector<int32_t>& result_dims)
      : e_(kWeighted ? result_dims[1] : 1) {}

  std::vector<OutputInfo> outputs() const { return {{{e_}, false}}; }
  // [m, denominator, numerators (E, weighted kinds only)]
  int64_t state_size() const { return 2 + (kWeighted ? e_ : 0); }

  void init(double* state) const {
    state[0] = -detail::kInf;
    for (int64_t k = 1; k < state_size(); ++k) state[k] = 0.0;
  }

  template <int LaneStride, class T>
  void accumulate(double* state, const ResultView<T>* v, int64_t n_valid, int64_t) const {
    constexpr int64_t LS = LaneStride;
    const T* s = v[0].ptr;
    if (!rebase<LS>(state, s, n_valid)) return;
    const T shift = static_cast<T>(state[0]);  // exact: m is one of the T scores
    // exp(S - m) of a block of lanes, then the sums (in double) that use it.
    constexpr int64_t kBlock = 256;
    alignas(64) T w[kBlock];
    for (int64_t l0 = 0; l0 < n_valid; l0 += kBlock) {
      const int64_t nb = n_valid - l0 < kBlock ? n_valid - l0 : kBlock;
      const T* sb = s + l0 * LS;
#pragma omp simd
      for (int64_t l = 0; l < nb; ++l) w[l] = fast_exp(static_cast<T>(sb[l * LS] - shift));
      if constexpr (kDenominator)
        state[1] += detail::lane_sum(nb, [&w](int64_t l) { return w[l]; });
      if constexpr (kWeighted) {
        for (int64_t e = 0; e < e_; ++e) {
          const T* we = v[1].ptr + e * v[1].dim_stride + l0 * LS;
          state[2 + e] += detail::lane_sum(nb, [&w, we](int64_t l) {
            return static_cast<double>(w[l]) * static_cast<double>(we[l * LS]);
          });
        }
      }
    }
  }

  // For executors that sum the weighted numerators themselves (the CPU executor's row-block
  // path, a matrix product over the rows of a chunk): the rest of accumulate for a tile of
  // n_valid lane-dense scores. Writes the weights w[l] = exp(S_l - m) and returns true when the
  // tile adds to the numerators, which add_numerators then receives as Σ_l w_l v_l (e_ values);
  // when false, w is left as it was.
  template <class T>
  bool tile_weights(double* state, const T* s, int64_t n_valid, T* w) const {
    static_assert(kWeighted, "only the weighted kinds have numerators");
    if (!rebase<1>(state, s, n_valid)) return false;
    const T shift = static_cast<T>(state[0]);
#pragma omp simd
    for (int64_t l = 0; l < n_valid; ++l) w[l] = fast_exp(static_cast<T>(s[l] - shift));
    if constexpr (kDenominator)
      state[1] += detail::lane_sum(n_valid, [w](int64_t l) { return w[l]; });
    return true;
  }

  template <class T>
  void add_numerators(double* state, const T* sums) const {
    for (int64_t e = 0; e < e_; ++e) state[2 + e] += static_cast<double>(sums[e]);
  }

  void combine(double* a, const double* b) const {
    if (a[0] != a[0]) return;  // NaN (a NaN score) wins over everything
    if (b[0] != b[0] || b[0] == -detail::kInf || a[0] == detail::kInf) {
      if (b[0] != b[0])
        for (int64_t k = 0; k < state_size(); ++k) a[k] = b[k];
      return;
    }
    if (b[0] == detail::kInf || a[0] == -detail::kInf) {
      for (int64_t k = 0; k < state_size(); ++k) a[k] = b[k];
      return;
    }
    const double m = a[0] > b[0] ? a[0] : b[0];
    const double sa = std::exp(a[0] - m), sb = std::exp(b[0] - m);
    a[0] = m;
    for (int64_t k = 1; k < state_size(); ++k) a[k] = a[k] * sa + b[k] * sb;
  }

  void finalize(const double* state, double* out_row) const {
    const double m = state[0];
    if constexpr (Kind == ExpKind::kLogSumExp) {
      out_row[0] = m == detail::kInf ? m : m + std::log(state[1]);
    } else if constexpr (Kind == ExpKind::kLogSumExpWeight) {
      // An empty or fully masked row: Σ = 0, log 0 = -inf (and m = -inf).
      for (int64_t e = 0; e < e_; ++e)
        out_row[e] = m == -detail::kInf ? -detail::kInf : m + std::log(state[2 + e]);
    } else {
      for (int64_t e = 0; e < e_; ++e) out_row[e] = state[2 + e] / state[1];
    }
  }

 private:
  // Moves m up to the tile's largest score, rescaling the sums. False when the tile adds
  // nothing: every score is -inf (masked), or m is (or becomes) +inf or NaN, which fixes the
  // result. A NaN score makes the row NaN (m and the sums NaN), as jax.nn.logsumexp, wherever
  // the tile boundaries fall.
  template <int LS, class T>
  bool rebase(double* state, const T* s, int64_t n_valid) const {
    double& m = state[0];
    if (m == detail::kInf || m != m) return false;  // +inf or NaN: nothing changes it
    T tile_max = -std::numeric_limits<T>::infinity();
    int nan_seen = 0;
#pragma omp simd reduction(max : tile_max) reduction(| : nan_seen)
    for (int64_t l = 0; l < n_valid; ++l) {
      tile_max = s[l * LS] > tile_max ? s[l * LS] : tile_max;
      nan_seen |= s[l * LS] != s[l * LS];
    }
    if (nan_seen) {
      for (int64_t k = 0; k < state_size(); ++k) state[k] = std::numeric_limits<double>::quiet_NaN();
      return false;
    }
    if (tile_max == -std::numeric_limits<T>::infinity()) return false;  // all masked
    if (tile_max == std::numeric_limits<T>::infinity()) {
      m = detail::kInf;
      state[1] = 1.0;
      for (int64_t e = 0; e < (kWeighted ? e_ : 0); ++e)
        state[2 + e] = std::numeric_limits<double>::quiet_NaN();
      return false;
    }
    if (tile_max > m) {
      const double scale = std::exp(m - double(tile_max));  // 0 when m is -inf
      for (int64_t k = 1; k < state_size(); ++k) state[k] *= scale;
      m = tile_max;
    }
    return true;
  }

  int64_t e_;
};

// Reducers that offer tile_weights / add_numerators (see SumReducer and ExpSumReducer).
template <class R>
struct HasTileWeights : std::false_type {};
template <>
struct HasTileWeights<SumReducer> : std::true_type {};
template <>
struct HasTileWeights<ExpSumReducer<ExpKind::kLogSumExpWeight>> : std::true_type {};
template <>
struct HasTileWeights<ExpSumReducer<ExpKind::kSumSoftMaxWeight>> : std::true_type {};


// ---------------------------------------------------------------- Min / Max and arg versions

// Per component: the best value and the lowest inner index that reaches it.
// state = [value (D), index (D)], index -1 while nothing was seen. NaN values are skipped.
enum class PickOutputs { kValue, kIndex, kBoth };

template <bool IsMax, PickOutputs Out>
struct MinMaxReducer {
  static constexpr const char* kName =
      IsMax ? (Out == PickOutputs::kValue   ? "Max"
               : Out == PickOutputs::kIndex ? "ArgMax"
                                            : "Max_ArgMax")
            : (Out == PickOutputs::kValue   ? "Min"
               : Out == PickOutputs::kIndex ? "ArgMin"
                                            : "Min_ArgMin");

  static bool check(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims,
                    std::string* error) {
    return detail::check_shape(kName, params, 0, result_dims, 1, error);
  }

  MinMaxReducer(const std::vector<int32_t>&, const std::vector<int32_t>& result_dims)
      : dim_(result_dims[0]) {}

  std::vector<OutputInfo> outputs() const {
    if constexpr (Out == PickOutputs::kValue) return {{{dim_}, false}};
    if constexpr (Out == PickOutputs::kIndex) return {{{dim_}, true}};
    return {{{dim_}, false}, {{dim_}, true}};
  }
  int64_t state_size() const { return 2 * dim_; }

  template <class T>
  static bool better(T a, T b) {
    return IsMax ? a > b : a < b;
  }

  void init(double* state) const {
    for (int64_t d = 0; d < dim_; ++d) {
      state[d] = IsMax ? -detail::kInf : detail::kInf;
      state[dim_ + d] = -1.0;
    }
  }

  template <int LaneStride, class T>
  void accumulate(double* state, const ResultView<T>* v, int64_t n_valid,
                  int64_t inner_base) const {
    constexpr int64_t LS = LaneStride;
    for (int64_t d = 0; d < dim_; ++d) {
      const T* p = v[0].ptr + d * v[0].dim_stride;
      // Best of the tile (NaN never wins a comparison, so it is skipped) ...
      T best = IsMax ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
      if constexpr (IsMax) {
#pragma omp simd reduction(max : best)
        for (int64_t l = 0; l < n_valid; ++l) best = p[l * LS] > best ? p[l * LS] : best;
      } else {
#pragma omp simd reduction(min : best)
        for (int64_t l = 0; l < n_valid; ++l) best = p[l * LS] < best ? p[l * LS] : best;
      }
      // ... and, only when it improves on the state, the first lane that reaches it.
      if (state[dim_ + d] >= 0 && !better(static_cast<double>(best), state[d])) continue;
      for (int64_t l = 0; l < n_valid; ++l) {
        if (p[l * LS] == best) {
          state[d] = best;
          state[dim_ + d] = static_cast<double>(inner_base + l);
          break;
        }
      }
    }
  }

  void combine(double* a, const double* b) const {
    for (int64_t d = 0; d < dim_; ++d) {
      if (b[dim_ + d] >= 0 && (a[dim_ + d] < 0 || better(b[d], a[d]))) {
        a[d] = b[d];
        a[dim_ + d] = b[dim_ + d];
      }
    }
  }

  void finalize(const double* state, double* out_row) const {
    if constexpr (Out != PickOutputs::kIndex)
      for (int64_t d = 0; d < dim_; ++d) out_row[d] = state[d];
    if constexpr (Out != PickOutputs::kValue) {
      double* idx = out_row + (Out == PickOutputs::kBoth ? dim_ : 0);
      for (int64_t d = 0; d < dim_; ++d) idx[d] = state[dim_ + d];
    }
  }

 private:
  int64_t dim_;
};

// ---------------------------------------------------------------- K-min and arg-K-min

// Per component, the K smallest values in ascending order with their inner indices (equal
// values keep ascending index order). state = [values (D × K), indices (D × K)], an empty slot
// has index -1 (and value +inf). Outputs are laid out (K, D). NaN values are skipped.
template <PickOutputs Out>
struct KMinReducer {
  static constexpr const char* kName =
      Out == PickOutputs::kValue ? "KMin" : Out == PickOutputs::kIndex ? "ArgKMin" : "KMin_ArgKMin";
  // Bound on K × D so that garbage cannot request absurd state allocations.
  static constexpr int64_t kMaxSlots = int64_t(1) << 24;

  static bool check(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims,
                    std::string* error) {
    if (!detail::check_shape(kName, params, 1, result_dims, 1, error)) return false;
    if (params[0] < 1 || int64_t(params[0]) * result_dims[0] > kMaxSlots) {
      *error = std::string("reduction ") + kName + ": K = " + std::to_string(params[0]) +
               " (expected 1 <= K and K * dim <= " + std::to_string(kMaxSlots) + ")";
      return false;
    }
    return true;
  }

  KMinReducer(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims)
      : k_(params[0]), dim_(result_dims[0]) {}

  std::vector<OutputInfo> outputs() const {
    // KeOps' layout: (K,) for a scalar formula, (K, D) for a vector one.
    const std::vector<int64_t> dims = dim_ == 1 ? std::vector<int64_t>{k_}
                                                : std::vector<int64_t>{k_, dim_};
    if constexpr (Out == PickOutputs::kValue) return {{dims, false}};
    if constexpr (Out == PickOutputs::kIndex) return {{dims, true}};
    return {{dims, false}, {dims, true}};
  }
  int64_t state_size() const { return 2 * k_ * dim_; }

  void init(double* state) const {
    for (int64_t s = 0; s < k_ * dim_; ++s) {
      state[s] = detail::kInf;
      state[k_ * dim_ + s] = -1.0;
    }
  }

  template <int LaneStride, class T>
  void accumulate(double* state, const ResultView<T>* v, int64_t n_valid,
                  int64_t inner_base) const {
    constexpr int64_t LS = LaneStride;
    const int64_t K = k_;
    for (int64_t d = 0; d < dim_; ++d) {
      const T* p = v[0].ptr + d * v[0].dim_stride;
      double* vals = state + d * K;
      double* idx = state + k_ * dim_ + d * K;
      constexpr int64_t kBlock = 16;
      for (int64_t l0 = 0; l0 < n_valid; l0 += kBlock) {
        const int64_t nb = n_valid - l0 < kBlock ? n_valid - l0 : kBlock;
        const T* pb = p + l0 * LS;
        // Once the buffer is full most lanes are no candidate: test a block vectorised first.
        if (idx[K - 1] >= 0) {
          const T threshold = static_cast<T>(vals[K - 1]);  // exact: one of the T values
          int any = 0;
#pragma omp simd reduction(| : any)
          for (int64_t l = 0; l < nb; ++l) any |= pb[l * LS] < threshold;
          if (!any) continue;
        }
        for (int64_t l = 0; l < nb; ++l) {
          const double x = static_cast<double>(pb[l * LS]);
          if (x != x) continue;
          if (idx[K - 1] >= 0 && !(x < vals[K - 1])) continue;
          // Insertion: shift the empty slots and the larger values one place to the right.
          int64_t s = K - 1;
          while (s > 0 && (idx[s - 1] < 0 || vals[s - 1] > x)) {
            vals[s] = vals[s - 1];
            idx[s] = idx[s - 1];
            --s;
          }
          vals[s] = x;
          idx[s] = static_cast<double>(inner_base + l0 + l);
        }
      }
    }
  }

  // Merge of two sorted buffers; on equal values a's entries (lower indices) come first.
  void combine(double* a, const double* b) const {
    const int64_t K = k_;
    std::vector<double> vals(K), idx(K);
    for (int64_t d = 0; d < dim_; ++d) {
      double* av = a + d * K;
      double* ai = a + k_ * dim_ + d * K;
      const double* bv = b + d * K;
      const double* bi = b + k_ * dim_ + d * K;
      int64_t ia = 0, ib = 0;
      for (int64_t s = 0; s < K; ++s) {
        const bool a_ok = ia < K && ai[ia] >= 0;
        const bool b_ok = ib < K && bi[ib] >= 0;
        if (a_ok && (!b_ok || av[ia] <= bv[ib])) {
          vals[s] = av[ia];
          idx[s] = ai[ia++];
        } else if (b_ok) {
          vals[s] = bv[ib];
          idx[s] = bi[ib++];
        } else {
          vals[s] = detail::kInf;
          idx[s] = -1.0;
        }
      }
      for (int64_t s = 0; s < K; ++s) {
        av[s] = vals[s];
        ai[s] = idx[s];
      }
    }
  }

  void finalize(const double* state, double* out_row) const {
    const int64_t K = k_;
    for (int64_t d = 0; d < dim_; ++d) {
      for (int64_t s = 0; s < K; ++s) {
        if constexpr (Out != PickOutputs::kIndex) out_row[s * dim_ + d] = state[d * K + s];
        if constexpr (Out != PickOutputs::kValue)
          out_row[(Out == PickOutputs::kBoth ? K * dim_ : 0) + s * dim_ + d] =
              state[k_ * dim_ + d * K + s];
      }
    }
  }

 private:
  int64_t k_;
  int64_t dim_;
};

// Maps a reduction code to its reducer type: dispatch_reduction(code, [&](auto tag) {...})
// where decltype(tag)::type is the reducer. Returns false for an unknown code.
template <class R>
struct ReducerTag {
  using type = R;
};

template <class F>
bool dispatch_reduction(int32_t code, F&& f) {
  switch (static_cast<Reduction>(code)) {
    case Reduction::Sum: f(ReducerTag<SumReducer>{}); return true;
    case Reduction::LogSumExp: f(ReducerTag<ExpSumReducer<ExpKind::kLogSumExp>>{}); return true;
    case Reduction::LogSumExpWeight:
      f(ReducerTag<ExpSumReducer<ExpKind::kLogSumExpWeight>>{});
      return true;
    case Reduction::SumSoftMaxWeight:
      f(ReducerTag<ExpSumReducer<ExpKind::kSumSoftMaxWeight>>{});
      return true;
    case Reduction::Min: f(ReducerTag<MinMaxReducer<false, PickOutputs::kValue>>{}); return true;
    case Reduction::ArgMin: f(ReducerTag<MinMaxReducer<false, PickOutputs::kIndex>>{}); return true;
    case Reduction::Min_ArgMin:
      f(ReducerTag<MinMaxReducer<false, PickOutputs::kBoth>>{});
      return true;
    case Reduction::Max: f(ReducerTag<MinMaxReducer<true, PickOutputs::kValue>>{}); return true;
    case Reduction::ArgMax: f(ReducerTag<MinMaxReducer<true, PickOutputs::kIndex>>{}); return true;
    case Reduction::Max_ArgMax:
      f(ReducerTag<MinMaxReducer<true, PickOutputs::kBoth>>{});
      return true;
    case Reduction::KMin: f(ReducerTag<KMinReducer<PickOutputs::kValue>>{}); return true;
    case Reduction::ArgKMin: f(ReducerTag<KMinReducer<PickOutputs::kIndex>>{}); return true;
    case Reduction::KMin_ArgKMin: f(ReducerTag<KMinReducer<PickOutputs::kBoth>>{}); return true;
  }
  return false;
}

// The outputs of a decoded (validated) program's reduction.
inline std::vector<OutputInfo> reduction_outputs(int32_t code, const std::vector<int32_t>& params,
                                                 const std::vector<int32_t>& result_dims) {
  std::vector<OutputInfo> outs;
  dispatch_reduction(code, [&](auto tag) {
    using R = typename decltype(tag)::type;
    outs = R(params, result_dims).outputs();
  });
  return outs;
}

}  // namespace jaxkeops
