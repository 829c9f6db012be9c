// The hot body of φ-program sums, host and device (the kernel families whose φ is not affine:
// Laplace, Cauchy, inverse multiquadric, Matérn, and the gradients of every family): score
// sqdist, compile-time D <= 4 and factor, R rows per thread, y_j tiles staged in shared memory as
// HotRows does, and the φ program run over register blocks of R x J pairs (phi_block.h).
//
// Staged inner row (W = 8 values): [y_0..y_{D-1}, V_j0, vec_0, vec_1, vec_2, pad] where vec is
// Z_j (factor Z, E <= 3) or AI_j (NA <= 3), zero beyond E or NA: a_ij = Σ_k AO_ik AI_jk and
// Ψ = Z_j run over all three with zeros (exact: the padding products are 0).
#pragma once

#include <cstdint>
#include <type_traits>

#include "fused/accumulators.h"
#include "fused/fused_call.h"
#include "fused/kernel_body.h"
#include "fused/pair_math.h"
#include "fused/phi_block.h"

namespace jaxkeops::fused {

inline constexpr int kPhiVec = 3;  // Z_j / AI_j values a staged row holds

// Value components of the φ-program body's reducer per factor (D for the difference).
template <int F, int DC>
inline constexpr int kPhiValueDim = F == kFactorDiff ? DC : F == kFactorZ ? kPhiVec : 1;

// F the factor (kFactorNone, kFactorZ, kFactorDiff), R rows per thread, J inner points per
// register block.
template <class T, int DC, int F, int R, int J>
struct HotPhiRows {
  static constexpr int VC = kPhiValueDim<F, DC>;
  using Accumulator = SumAcc<T, VC>;
  static constexpr int kRowsPerThread = R;
  static constexpr bool kStaged = true;
  static constexpr int W = 8;
  static constexpr int kVec = DC + 1;  // first value of Z_j / AI_j in a staged row
  static constexpr int B = R * J;      // pairs per register block
  // CUDA __launch_bounds__ minimum blocks per SM: up to 168 registers in float (4 would cap
  // them at 128, and a block of 8 pairs then spills), 255 in double. sm_90, ptxas 13.0: float
  // 2 x 4 pairs 126-156 registers, double 1 x 4 135-157, no spills.
  static constexpr int kMinBlocks = sizeof(T) == 4 ? 3 : 2;

  T x[R][DC];
  T u[R];
  T ao[R][kPhiVec];
  Accumulator acc[R];
  int64_t row[R];

  JAXKEOPS_HD void begin(const FusedCall& call, const Problem<T>& p, const WorkItem& w,
                         int thread, int n_threads) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      row[r] = w.row_block * (int64_t(n_threads) * R) + thread + int64_t(r) * n_threads;
      const bool active = row[r] < call.n_outer;
#pragma unroll
      for (int d = 0; d < DC; ++d) x[r][d] = active ? p.x[row[r] * DC + d] : T(0);
      u[r] = active && call.NU > 0 ? p.u[row[r] * call.NU] : T(0);
#pragma unroll
      for (int k = 0; k < kPhiVec; ++k)
        ao[r][k] = active && k < call.NA ? p.ao[row[r] * call.NA + k] : T(0);
      RowState<T, Accumulator>::init(acc[r], call, p.b, row[r], w.split, 0, call.value_dim,
                                     active);
    }
  }

  JAXKEOPS_HD static void stage(const FusedCall& call, const Problem<T>& p, T* tile, int64_t j0,
                                int n, int thread, int n_threads) {
    for (int e = thread; e < n; e += n_threads) {
      const int64_t j = j0 + e;
      T* dst = tile + e * W;
#pragma unroll
      for (int d = 0; d < DC; ++d) dst[d] = p.y[j * DC + d];
      dst[DC] = call.NV > 0 ? p.v[j * call.NV] : T(0);
#pragma unroll
      for (int k = 0; k < kPhiVec; ++k) {
        T q = T(0);
        if (F == kFactorZ && k < call.E) q = p.z[j * call.E + k];
        if (F != kFactorZ && k < call.NA) q = p.ai[j * call.NA + k];
        dst[kVec + k] = q;
      }
#pragma unroll
      for (int d = kVec + kPhiVec; d < W; ++d) dst[d] = T(0);
    }
  }

  JAXKEOPS_HD void tile(const FusedCall& call, const Problem<T>& p, const T* staged, int64_t,
                        int n) {
    // ---- hot inner loop (φ programs): one register block of R x J pairs per iteration.
    for (int l0 = 0; l0 < n; l0 += J) block(call, p, staged + l0 * W, n - l0 < J ? n - l0 : J);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r].end_tile(VC);
  }

  // Pairs (row r, inner point l0 + l) for l < nb: scores, the program, the reducer.
  JAXKEOPS_HD void block(const FusedCall& call, const Problem<T>& p, const T* base, int nb) {
    PhiBlockInputs<T, B, J> in;
    in.c = p.c;
    const bool has_a = call.NA > 0;
#pragma unroll
    for (int r = 0; r < R; ++r) in.u[r] = u[r];
#pragma unroll
    for (int l = 0; l < J; ++l) {
      T y[W];
      load_row<W>(base + (l < nb ? l : 0) * W, y);  // a valid row; its pairs are not summed
      in.v[l] = y[DC];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        in.s[r * J + l] = score_fixed<kSqDist, DC>(x[r], y, static_cast<const T*>(nullptr));
        T a = ao[r][0] * y[kVec];
#pragma unroll
        for (int k = 1; k < kPhiVec; ++k) a += ao[r][k] * y[kVec + k];
        in.a[r * J + l] = has_a ? a : T(1);
      }
    }
    PhiBlock<T, B, J> prog;
    prog.run(call.program, call.n_instr, in);
#pragma unroll
    for (int l = 0; l < J; ++l) {
      if (l >= nb) break;
      T y[W];
      load_row<W>(base + l * W, y);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const T phi = prog.r0[r * J + l];
#pragma unroll
        for (int c = 0; c < VC; ++c) {
          if constexpr (F == kFactorNone)
            acc[r].tile[c] += phi;
          else if constexpr (F == kFactorZ)
            acc[r].tile[c] += phi * y[kVec + c];
          else
            acc[r].tile[c] += phi * (x[r][c] - y[c]);
        }
      }
    }
  }

  JAXKEOPS_HD void finish(const FusedCall& call, const Problem<T>& p, const WorkItem& w) const {
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (row[r] < call.n_outer)
        RowState<T, Accumulator>::finish(acc[r], call, p.b, row[r], w.split, 0, call.value_dim);
  }
};

template <class B>
struct IsHotPhiRows : std::false_type {};
template <class T, int DC, int F, int R, int J>
struct IsHotPhiRows<HotPhiRows<T, DC, F, R, J>> : std::true_type {};

}  // namespace jaxkeops::fused
