// Block-sparse reductions (KeOps's ranges, see jaxkeops/ranges.py): which inner ranges each
// cluster of outer rows interacts with. The lowering passes the half of KeOps's 6-tuple that the
// reduction's axis reads as three int32 operands after the program's inputs:
//   clusters     (C, 2)  outer rows [start, end) of cluster c (disjoint)
//   slice_ends   (C,)    cluster c reads inner_ranges[slice_ends[c-1] : slice_ends[c]]
//   inner_ranges (R, 2)  inner indices [start, end)
// Outer rows outside every cluster interact with nothing (the reduction's empty value).
// Host and device code: the executors walk these lists; the checks below run on the host.
#pragma once

#include <cstdint>
#include <string>

#include "fast_math.h"  // JAXKEOPS_HD

namespace jaxkeops {

constexpr int kRangesOperands = 3;

struct BlockRanges {
  const int32_t* clusters = nullptr;
  const int32_t* slice_ends = nullptr;
  const int32_t* inner_ranges = nullptr;
  int64_t n_clusters = 0;
  int64_t n_inner_ranges = 0;

  JAXKEOPS_HD int64_t first_range(int64_t c) const { return c == 0 ? 0 : slice_ends[c - 1]; }
};

// The values of host-side ranges against the grid; "" when valid, else what is wrong.
inline std::string check_block_ranges(const BlockRanges& r, int64_t n_outer, int64_t n_inner) {
  auto pair = [](const int32_t* p, int64_t k) {
    return "[" + std::to_string(p[2 * k]) + ", " + std::to_string(p[2 * k + 1]) + ")";
  };
  int64_t previous_end = 0;
  for (int64_t c = 0; c < r.n_clusters; ++c) {
    const int32_t a = r.clusters[2 * c], b = r.clusters[2 * c + 1];
    if (a < 0 || a > b || b > n_outer)
      return "ranges: outer cluster " + std::to_string(c) + " is " + pair(r.clusters, c) +
             ", expected 0 <= start <= end <= " + std::to_string(n_outer);
    const int32_t s = r.slice_ends[c];
    if (s < previous_end || s > r.n_inner_ranges)
      return "ranges: slice end " + std::to_string(s) + " of cluster " + std::to_string(c) +
             " is not in [" + std::to_string(previous_end) + ", " +
             std::to_string(r.n_inner_ranges) + "] (slice ends are cumulative)";
    previous_end = s;
  }
  for (int64_t t = 0; t < r.n_inner_ranges; ++t) {
    const int32_t a = r.inner_ranges[2 * t], b = r.inner_ranges[2 * t + 1];
    if (a < 0 || a > b || b > n_inner)
      return "ranges: inner range " + std::to_string(t) + " is " + pair(r.inner_ranges, t) +
             ", expected 0 <= start <= end <= " + std::to_string(n_inner);
  }
  return "";
}

}  // namespace jaxkeops
