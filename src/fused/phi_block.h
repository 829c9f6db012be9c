// The φ program (docs/fused-kernels.md) run over a register block of B pairs at once, host and
// device: each instruction is decoded and dispatched once per block, then applied to the B
// pairs with compile-time indices, so that every value stays in registers (no stack frame) and
// the dispatch cost is shared by B pairs. Used by the hot φ-program body (phi_rows.h).
//
// Only the ops of the `hot` set below run here (the ops the kernel families and their
// gradients produce); a program with any other op runs in the generic body, one pair at a time
// (dispatch.h checks with `phi_program_is_hot`).
#pragma once

#include <cstdint>

#include "fused/fused_call.h"
#include "ops.h"

namespace jaxkeops::fused {

// X(Name): the ops of the block interpreter.
#define JAXKEOPS_HOT_PHI_UNARY(X) X(Minus) X(Exp) X(Log) X(Sqrt) X(Rsqrt) X(Square) X(Abs)
#define JAXKEOPS_HOT_PHI_BINARY(X) X(Add) X(Subtract) X(Mult) X(Divide)

inline bool hot_phi_op(int32_t op) {
  switch (static_cast<Op>(op)) {
#define JAXKEOPS_HOT_CASE(name) case Op::name:
    JAXKEOPS_HOT_PHI_UNARY(JAXKEOPS_HOT_CASE)
    JAXKEOPS_HOT_PHI_BINARY(JAXKEOPS_HOT_CASE)
#undef JAXKEOPS_HOT_CASE
    case Op::Pow: return true;
    default: return false;
  }
}

// Whether every instruction of a validated program is one of the block interpreter's ops.
inline bool phi_program_is_hot(const FusedCall& c) {
  for (int32_t i = 0; i < c.n_instr; ++i)
    if (!hot_phi_op(c.program[4 * i])) return false;
  return true;
}

// What one block's program reads besides its slots. Pair b of the block is (row b / J, inner
// point b % J): U is per row, V per inner point, s and a per pair, C per call.
template <class T, int B, int J>
struct PhiBlockInputs {
  T s[B], a[B];
  T u[B / J];  // U_i0
  T v[J];      // V_j0
  const T* c;  // C (global memory: read once per instruction that references it)
};

template <class T, int B, int J>
struct PhiBlock {
  // Four named slot arrays: an array indexed by a runtime slot would live in local memory.
  T r0[B], r1[B], r2[B], r3[B];

  // out = the value of reference `ref` for the B pairs.
  JAXKEOPS_HD void fetch(int32_t ref, const PhiBlockInputs<T, B, J>& in, T* out) const {
    switch (ref) {
      case 0: copy(r0, out); return;
      case 1: copy(r1, out); return;
      case 2: copy(r2, out); return;
      case 3: copy(r3, out); return;
      case kRefS: copy(in.s, out); return;
      case kRefA: copy(in.a, out); return;
      case kRefU:  // NU <= 1 in this body
#pragma unroll
        for (int b = 0; b < B; ++b) out[b] = in.u[b / J];
        return;
      case kRefV:  // NV <= 1
#pragma unroll
        for (int b = 0; b < B; ++b) out[b] = in.v[b % J];
        return;
      default: {  // C[k], validated
        const T c = in.c[ref - kRefC];
#pragma unroll
        for (int b = 0; b < B; ++b) out[b] = c;
      }
    }
  }

  JAXKEOPS_HD static void copy(const T* from, T* to) {
#pragma unroll
    for (int b = 0; b < B; ++b) to[b] = from[b];
  }

  // dst = op(a, b) for the B pairs, computed in place in the destination slot. One copy of
  // this per slot (run's switch on dst) rather than a result array stored through a switch:
  // with the latter ptxas copied all four slots at every instruction (sm_90, nvcc 13.0: 81
  // instructions per block of 8 pairs for a Minus, 63 this way, and 18 registers fewer).
  JAXKEOPS_HD void apply(int32_t op, int32_t ra, int32_t rb, const PhiBlockInputs<T, B, J>& in,
                         T* dst) {
    T y[B];
    const bool binary = op != int32_t(Op::Pow) && !unary(op);
    if (binary) fetch(rb, in, y);  // before dst is overwritten: b may be the dst slot
    fetch(ra, in, dst);
    switch (static_cast<Op>(op)) {
#define JAXKEOPS_HOT_UNARY_CASE(name)                                                \
  case Op::name:                                                                     \
    _Pragma("unroll") for (int b = 0; b < B; ++b) dst[b] = opfn::name::apply(dst[b]); \
    break;
      JAXKEOPS_HOT_PHI_UNARY(JAXKEOPS_HOT_UNARY_CASE)
#undef JAXKEOPS_HOT_UNARY_CASE
      case Op::Pow:
#pragma unroll
        for (int b = 0; b < B; ++b) dst[b] = opfn::int_pow(dst[b], rb);
        break;
#define JAXKEOPS_HOT_BINARY_CASE(name)                                                     \
  case Op::name:                                                                           \
    _Pragma("unroll") for (int b = 0; b < B; ++b) dst[b] = opfn::name::apply(dst[b], y[b]); \
    break;
      JAXKEOPS_HOT_PHI_BINARY(JAXKEOPS_HOT_BINARY_CASE)
#undef JAXKEOPS_HOT_BINARY_CASE
      default: break;  // not hot: never dispatched here
    }
  }

  JAXKEOPS_HD static bool unary(int32_t op) {
    switch (static_cast<Op>(op)) {
#define JAXKEOPS_HOT_CASE(name) case Op::name:
      JAXKEOPS_HOT_PHI_UNARY(JAXKEOPS_HOT_CASE)
#undef JAXKEOPS_HOT_CASE
      return true;
      default: return false;
    }
  }

  // Runs a validated, hot program (phi_program_is_hot); φ of pair b is r0[b] afterwards.
  JAXKEOPS_HD void run(const int32_t* prog, int32_t n_instr, const PhiBlockInputs<T, B, J>& in) {
#pragma unroll
    for (int b = 0; b < B; ++b) r0[b] = r1[b] = r2[b] = r3[b] = T(0);
    for (int32_t i = 0; i < n_instr; ++i) {
      const int32_t op = prog[4 * i], dst = prog[4 * i + 1];
      const int32_t ra = prog[4 * i + 2], rb = prog[4 * i + 3];
      switch (dst) {
        case 0: apply(op, ra, rb, in, r0); break;
        case 1: apply(op, ra, rb, in, r1); break;
        case 2: apply(op, ra, rb, in, r2); break;
        default: apply(op, ra, rb, in, r3); break;
      }
    }
  }
};

}  // namespace jaxkeops::fused
