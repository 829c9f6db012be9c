// The reduction table of the native executors (codes match jaxkeops/reductions.py; the extension
// exports reduction_table() and a test checks both agree).
//
// A reducer turns the values of the formula over the inner axis into one output row per outer
// index. Its interface (the executors are written against it, not against Sum):
//
//   struct Reducer {
//     // Validation of the program's reduction part (called once at decode time):
//     static bool check(const std::vector<int32_t>& params,
//                       const std::vector<int32_t>& result_dims, std::string* error);
//     explicit Reducer(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims);
//     int64_t out_dim() const;       // output row width
//     int64_t state_size() const;    // doubles of accumulator state per output row
//     void init(double* state) const;
//     // `n_valid` lanes of the result values; value of result k, dim d, lane l is
//     // v[k].ptr[d * v[k].dim_stride + l * LaneStride] (LaneStride 0: same value on every lane).
//     // `inner_base` is the inner index of lane 0 (for arg-reductions).
//     template <int LaneStride, class T>
//     void accumulate(double* state, const ResultView<T>* v, int64_t n_valid, int64_t inner_base) const;
//     // a covers a lower inner range than b (ties keep a's index).
//     void combine(double* a, const double* b) const;
//     template <class T> void finalize(const double* state, T* out_row) const;
//   };
//
// State is a flat array of doubles (indices of arg-reductions are exact in a double up to 2^53).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

// X(Name, code, "name")
#define JAXKEOPS_REDUCTIONS(X) X(Sum, 0, "Sum")

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

// Sum over the inner axis, accumulated in double.
struct SumReducer {
  static bool check(const std::vector<int32_t>& params, const std::vector<int32_t>& result_dims,
                    std::string* error) {
    if (!params.empty()) {
      *error = "reduction Sum takes no reduction parameters, got " + std::to_string(params.size());
      return false;
    }
    if (result_dims.size() != 1) {
      *error = "reduction Sum takes exactly 1 result register, got " +
               std::to_string(result_dims.size());
      return false;
    }
    return true;
  }

  SumReducer(const std::vector<int32_t>&, const std::vector<int32_t>& result_dims)
      : dim_(result_dims[0]) {}

  int64_t out_dim() const { return dim_; }
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
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t l = 0; l < n_valid; ++l) s += static_cast<double>(p[l]);
        state[d] += s;
      }
    }
  }

  void combine(double* a, const double* b) const {
    for (int64_t d = 0; d < dim_; ++d) a[d] += b[d];
  }

  template <class T>
  void finalize(const double* state, T* out_row) const {
    for (int64_t d = 0; d < dim_; ++d) out_row[d] = static_cast<T>(state[d]);
  }

 private:
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
  switch (code) {
    case static_cast<int32_t>(Reduction::Sum):
      f(ReducerTag<SumReducer>{});
      return true;
    default:
      return false;
  }
}

}  // namespace jaxkeops
