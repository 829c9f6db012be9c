// One call of the fused kernels (docs/fused-kernels.md), as the per-thread code reads it: the
// attribute codes, the sizes, the operands of one batch problem, the outputs and the launch plan.
// A plain struct: it reaches the device by value as a kernel parameter (no per-call copy), and
// the host emulation reads the very same fields.
#pragma once

#include <cstdint>

#include "fast_math.h"

namespace jaxkeops::fused {

// Attribute codes (the contract's tables).
enum Score : int32_t { kScoreNone = 0, kSqDist = 1, kDot = 2, kL1 = 3, kWeightedSqDist = 4 };
enum Phi : int32_t { kAffine = 0, kExpAffine = 1, kProgram = 2, kOne = 3 };
enum Factor : int32_t { kFactorNone = 0, kFactorZ = 1, kFactorDiff = 2 };

// φ programs: 4 ints per instruction (opcode, dst, a, b), at most kMaxInstructions.
inline constexpr int kMaxInstructions = 32;
inline constexpr int kSlots = 4;
// Operand references of a program instruction.
inline constexpr int32_t kRefS = 4, kRefA = 5, kRefU = 8, kRefV = 16, kRefC = 32;
inline constexpr int32_t kMaxRefScalars = 8;  // U_ik and V_jk with k < 8

// Batch dims resolved on the device (more: one launch each, see the handlers).
inline constexpr int kMaxBatchRank = 4;
inline constexpr int kOperands = 8;  // X Y C U V AO AI Z
enum Operand : int32_t { kX = 0, kY, kC, kU, kV, kAO, kAI, kZ };

// Reducer families of the fused kernels (codes of reductions.h map onto them).
enum class Family : int32_t { kSum = 0, kExpSum = 1, kMinMax = 2, kKMin = 3 };
enum class ExpKind : int32_t { kLogSumExp = 0, kLogSumExpWeight = 1, kSumSoftMaxWeight = 2 };
enum class Pick : int32_t { kValue = 0, kIndex = 1, kBoth = 2 };
enum class OutType : int32_t { kValue = 0, kS32 = 1, kS64 = 2 };

struct FusedCall {
  // Attributes.
  int32_t score, phi, factor, reduction, k;
  int32_t n_instr;
  int32_t program[4 * kMaxInstructions];
  // Reducer family as decoded from `reduction`.
  int32_t family, exp_kind, pick, is_max;
  // Sizes. value_dim: components of the reduced value (1, E or D); for the weighted exp sums,
  // of the weight.
  int32_t D, NC, NU, NV, NA, E, value_dim;
  int64_t n_outer, n_inner;
  // Operands of the launch's first batch problem, and element strides per device batch dim.
  const void* in[kOperands];
  int64_t in_stride[kOperands][kMaxBatchRank];
  int64_t batch_dims[kMaxBatchRank];
  int32_t batch_rank;
  int64_t batch_count;
  // Outputs (value and/or index), (*batch, n_outer, out_width[k]) row-major.
  int32_t n_outputs;
  void* out[2];
  int32_t out_type[2];
  int64_t out_width[2];
  // Launch plan (plan.h): work items are (batch, chunk of value components, row block, split).
  int32_t rows_per_block;    // threads * rows per thread
  int32_t tile;              // inner points per tile
  int32_t chunk;             // value components per pass (the kernel's compile-time width)
  int32_t n_chunks;
  int64_t row_blocks, n_splits, tiles_per_split;
  int32_t state_size;        // doubles per output row and split (KMin lists, partial states)
  double* state;             // (batch, n_outer, n_splits, state_size), or null when unused
};

// Index arithmetic is 32-bit where it divides (a 64-bit division is a call on the GPU, which
// costs the kernels a stack frame): the handlers reject calls whose work items, batch problems
// or combined rows reach 2^31.
inline constexpr int64_t kMaxIndex = int64_t(1) << 31;

// Offset in elements of operand `k`'s slice of device batch problem `b`.
JAXKEOPS_HD inline int64_t batch_offset(const FusedCall& c, int k, int64_t b) {
  int64_t off = 0;
  uint32_t rest = static_cast<uint32_t>(b);
  for (int d = c.batch_rank; d-- > 0;) {
    const uint32_t n = static_cast<uint32_t>(c.batch_dims[d]);
    off += static_cast<int64_t>(rest % n) * c.in_stride[k][d];
    rest /= n;
  }
  return off;
}

}  // namespace jaxkeops::fused
