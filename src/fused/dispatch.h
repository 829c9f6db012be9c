// Which body runs a call (host side, shared by the host emulation and the CUDA launcher): a hot
// body (compile-time score, φ kind, D, reducer) when the call fits one, else the generic body of
// its reducer family. visit_body(call, f) calls f(BodyTag<Body>{}) with the chosen body type.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "fused/accumulators.h"
#include "fused/fused_call.h"
#include "fused/kernel_body.h"
#include "fused/pair_math.h"
#include "fused/phi_block.h"
#include "fused/phi_rows.h"

namespace jaxkeops::fused {

inline constexpr int kThreads = 128;       // threads per block
inline constexpr int kTile = 128;          // inner points per tile
inline constexpr int kHotRows = 2;         // rows per thread of the hot bodies
inline constexpr int kGenericChunk = 4;    // value components per pass of the generic bodies
inline constexpr int kHotMaxD = 4;         // compile-time D of the hot bodies: 1..kHotMaxD

template <class B>
struct BodyTag {
  using type = B;
};

// Hot kinds: the reducer, φ and extra slot of a hot body.
enum class HotKind : int32_t {
  kNone = -1,
  kSumAffine,     // Σ (C s + U + V)
  kSumExp,        // Σ exp(C s + U + V)
  kSumAffineZ,    // Σ (C s + U) Z_j     (E = 1)
  kSumExpZ,       // Σ exp(C s + U) Z_j  (E = 1): the Gaussian sum
  kLogSumExp,     // logsumexp (C s + U + V): Sinkhorn, attention scores
  kKMin,          // K-min family of C s + U + V
};

inline HotKind hot_kind(const FusedCall& c) {
  if (c.score != kSqDist && c.score != kDot) return HotKind::kNone;
  if (c.phi != kAffine && c.phi != kExpAffine) return HotKind::kNone;
  if (c.D < 1 || c.D > kHotMaxD || c.NA > 0) return HotKind::kNone;
  const bool exp = c.phi == kExpAffine;
  switch (static_cast<Family>(c.family)) {
    case Family::kSum:
      if (c.factor == kFactorNone) return exp ? HotKind::kSumExp : HotKind::kSumAffine;
      if (c.factor == kFactorZ && c.E == 1 && c.NV == 0)
        return exp ? HotKind::kSumExpZ : HotKind::kSumAffineZ;
      return HotKind::kNone;
    case Family::kExpSum:
      return c.exp_kind == int32_t(ExpKind::kLogSumExp) && !exp ? HotKind::kLogSumExp
                                                                 : HotKind::kNone;
    case Family::kKMin:
      return c.factor == kFactorNone && !exp ? HotKind::kKMin : HotKind::kNone;
    default: return HotKind::kNone;
  }
}

template <class T, int S, int DC, class F>
void visit_hot_kind(HotKind kind, F&& f) {
  constexpr int R = kHotRows;
  using ExpLse = ExpSumAcc<T, 1, ScaledExp<T>, ExpKind::kLogSumExp>;
  switch (kind) {
    case HotKind::kSumAffine:
      f(BodyTag<HotRows<T, S, kAffine, DC, R, SumAcc<T, 1>, Extra::kV>>{}); break;
    case HotKind::kSumExp:
      f(BodyTag<HotRows<T, S, kExpAffine, DC, R, SumAcc<T, 1>, Extra::kV>>{}); break;
    case HotKind::kSumAffineZ:
      f(BodyTag<HotRows<T, S, kAffine, DC, R, SumAcc<T, 1>, Extra::kZ>>{}); break;
    case HotKind::kSumExpZ:
      f(BodyTag<HotRows<T, S, kExpAffine, DC, R, SumAcc<T, 1>, Extra::kZ>>{}); break;
    case HotKind::kLogSumExp:
      f(BodyTag<HotRows<T, S, kAffine, DC, R, ExpLse, Extra::kV>>{}); break;
    case HotKind::kKMin:
      f(BodyTag<HotRows<T, S, kAffine, DC, R, KMinAcc<T, 1>, Extra::kV>>{}); break;
    case HotKind::kNone: break;
  }
}

template <class T, int S, class F>
void visit_hot_d(const FusedCall& c, HotKind kind, F&& f) {
  switch (c.D) {
    case 1: visit_hot_kind<T, S, 1>(kind, f); break;
    case 2: visit_hot_kind<T, S, 2>(kind, f); break;
    case 3: visit_hot_kind<T, S, 3>(kind, f); break;
    case 4: visit_hot_kind<T, S, 4>(kind, f); break;
    default: break;
  }
}

// The hot φ-program body (phi_rows.h): rows per thread and inner points per register block.
// Float: 2 rows x 4 points; double: 1 row x 4 points (twice the registers per value). On sm_90
// (ptxas 13.0) float blocks of 2 x 8 spill; double blocks of 2 x 4 fit but at 240-255 registers.
template <class T>
inline constexpr int kPhiRows = sizeof(T) == 4 ? 2 : 1;
template <class T>
inline constexpr int kPhiBlockJ = 4;

// Whether a φ-program call fits the hot φ-program body: a Sum of a sqdist score, D <= 4, U and
// V of at most one column, the program's ops those of the block interpreter, and the inner
// vectors a staged row holds (Z_j of E <= 3 without a_ij, or AI_j of NA <= 3).
inline bool hot_phi_program(const FusedCall& c) {
  if (c.phi != kProgram || c.score != kSqDist || c.family != int32_t(Family::kSum)) return false;
  if (c.D < 1 || c.D > kHotMaxD || c.NU > 1 || c.NV > 1 || c.NA > kPhiVec) return false;
  if (c.factor == kFactorZ && (c.E > kPhiVec || c.NA > 0)) return false;
  return phi_program_is_hot(c);
}

template <class T, int DC, class F>
void visit_hot_phi_factor(const FusedCall& c, F&& f) {
  constexpr int R = kPhiRows<T>, J = kPhiBlockJ<T>;
  switch (c.factor) {
    case kFactorNone: f(BodyTag<HotPhiRows<T, DC, kFactorNone, R, J>>{}); break;
    case kFactorZ: f(BodyTag<HotPhiRows<T, DC, kFactorZ, R, J>>{}); break;
    default: f(BodyTag<HotPhiRows<T, DC, kFactorDiff, R, J>>{}); break;
  }
}

template <class T, class F>
void visit_hot_phi(const FusedCall& c, F&& f) {
  switch (c.D) {
    case 1: visit_hot_phi_factor<T, 1>(c, f); break;
    case 2: visit_hot_phi_factor<T, 2>(c, f); break;
    case 3: visit_hot_phi_factor<T, 3>(c, f); break;
    default: visit_hot_phi_factor<T, 4>(c, f); break;
  }
}

template <class T, bool P, class F>
void visit_generic_family(const FusedCall& c, F&& f) {
  constexpr int CH = kGenericChunk;
  switch (static_cast<Family>(c.family)) {
    case Family::kSum: f(BodyTag<GenericRow<T, SumAcc<T, CH>, CH, P>>{}); break;
    case Family::kExpSum:
      switch (static_cast<ExpKind>(c.exp_kind)) {
        case ExpKind::kLogSumExp:
          f(BodyTag<GenericRow<T, ExpSumAcc<T, CH, NaturalExp<T>, ExpKind::kLogSumExp>, CH, P>>{});
          break;
        case ExpKind::kLogSumExpWeight:
          f(BodyTag<GenericRow<T, ExpSumAcc<T, CH, NaturalExp<T>, ExpKind::kLogSumExpWeight>, CH,
                               P>>{});
          break;
        case ExpKind::kSumSoftMaxWeight:
          f(BodyTag<GenericRow<T, ExpSumAcc<T, CH, NaturalExp<T>, ExpKind::kSumSoftMaxWeight>, CH,
                               P>>{});
          break;
      }
      break;
    case Family::kMinMax:
      if (c.is_max)
        f(BodyTag<GenericRow<T, MinMaxAcc<T, CH, true>, CH, P>>{});
      else
        f(BodyTag<GenericRow<T, MinMaxAcc<T, CH, false>, CH, P>>{});
      break;
    case Family::kKMin: f(BodyTag<GenericRow<T, KMinAcc<T, CH>, CH, P>>{}); break;
  }
}

template <class T, class F>
void visit_generic(const FusedCall& c, F&& f) {
  if (c.phi == kProgram)
    visit_generic_family<T, true>(c, f);
  else
    visit_generic_family<T, false>(c, f);
}

// `allow_hot` false forces the generic body (tests compare both).
template <class T, class F>
void visit_body(const FusedCall& c, bool allow_hot, F&& f) {
  const HotKind kind = allow_hot ? hot_kind(c) : HotKind::kNone;
  if (kind == HotKind::kNone && allow_hot && hot_phi_program(c)) {
    visit_hot_phi<T>(c, f);
  } else if (kind == HotKind::kNone) {
    visit_generic<T>(c, f);
  } else if (c.score == kSqDist) {
    visit_hot_d<T, kSqDist>(c, kind, f);
  } else {
    visit_hot_d<T, kDot>(c, kind, f);
  }
}

// Value components per pass of a body (1 for the hot ones).
template <class B>
struct BodyChunk;
template <class T, class Acc, int CH, bool P>
struct BodyChunk<GenericRow<T, Acc, CH, P>> : std::integral_constant<int, CH> {};
template <class T, int S, int PhiK, int DC, int R, class Acc, Extra X>
struct BodyChunk<HotRows<T, S, PhiK, DC, R, Acc, X>> : std::integral_constant<int, 1> {};

template <class T, int DC, int F, int R, int J>
struct BodyChunk<HotPhiRows<T, DC, F, R, J>>
    : std::integral_constant<int, HotPhiRows<T, DC, F, R, J>::VC> {};

// Launch shape (no device needed): rows per block, chunks, splits of the inner axis and the
// state buffer. Splits only when batch × chunks × row blocks cannot fill `sm_count` SMs with a
// few blocks each; each split covers whole tiles.
inline void plan_call(FusedCall* c, int rows_per_block, int chunk, int sm_count) {
  c->rows_per_block = rows_per_block;
  c->tile = kTile;
  c->chunk = chunk;
  const int32_t comps = c->family == int32_t(Family::kExpSum) &&
                                c->exp_kind == int32_t(ExpKind::kLogSumExp)
                            ? 1
                            : c->value_dim;
  c->n_chunks = (comps + chunk - 1) / chunk;
  c->row_blocks = (c->n_outer + rows_per_block - 1) / rows_per_block;
  const int64_t n_tiles = (c->n_inner + c->tile - 1) / c->tile;
  const int64_t base = c->batch_count * c->n_chunks * c->row_blocks;
  const int64_t target = int64_t(4) * sm_count;  // blocks to keep every SM busy
  int64_t splits = 1;
  if (base > 0 && base < target && n_tiles > 1) splits = (target + base - 1) / base;
  if (splits > n_tiles) splits = n_tiles;
  c->tiles_per_split = n_tiles > 0 ? (n_tiles + splits - 1) / splits : 1;
  c->n_splits = n_tiles > 0 ? (n_tiles + c->tiles_per_split - 1) / c->tiles_per_split : 1;
  // State per row and split, reductions.h's layouts.
  const int64_t dim = c->value_dim;
  switch (static_cast<Family>(c->family)) {
    case Family::kSum: c->state_size = int32_t(dim); break;
    case Family::kExpSum: c->state_size = int32_t(2 + dim); break;
    case Family::kMinMax: c->state_size = int32_t(2 * dim); break;
    case Family::kKMin: c->state_size = int32_t(2 * dim * c->k); break;
  }
}

// "" or why a planned call is too large for the kernels' 32-bit index arithmetic.
inline std::string check_plan(const FusedCall& c) {
  const int64_t items = c.batch_count * c.n_chunks * c.row_blocks * c.n_splits;
  const int64_t rows = c.batch_count * c.n_chunks * c.n_outer;
  if (items < kMaxIndex && rows < kMaxIndex) return "";
  return "the call has " + std::to_string(items) + " work items and " + std::to_string(rows) +
         " output rows (times value chunks) per launch; the fused kernels handle fewer than "
         "2^31 of each";
}

// Doubles of state buffer a planned call needs (0: none).
inline int64_t state_doubles(const FusedCall& c) {
  const bool needed = c.n_splits > 1 || c.family == int32_t(Family::kKMin);
  return needed ? c.batch_count * c.n_outer * c.n_splits * c.state_size : 0;
}

}  // namespace jaxkeops::fused
