// The per-pair math of the fused kernels (docs/fused-kernels.md), host and device: the scores,
// the exponentials the reducers use, and the φ program interpreter over the op-table functors.
#pragma once

#include <cmath>
#include <cstdint>

#include "fast_math.h"
#include "fused/fused_call.h"
#include "ops.h"

namespace jaxkeops::fused {

// ---------------------------------------------------------------- exponentials

// The exp of the fused exp-affine φ and of the exp-sum reducers, in "exp units": scores are
// multiplied by kScale once (folded into the coefficients) so that exp costs one ex2 on the GPU.
//   float:  kScale = log2(e), exp2. Device: ex2.approx.f32 without .ftz (MUFU.EX2 plus the
//           subnormal fix-up, ≤ 2 ulp); host: exp2 of the argument in double, rounded once.
//   double: kScale = 1, the CPU's branch-free fast_exp polynomial on both sides (no MUFU).
template <class T>
struct ScaledExp;

template <>
struct ScaledExp<float> {
  static constexpr float kScale = 1.44269504088896341f;
  static constexpr double kInvScale = 0.69314718055994530942;  // ln 2
  JAXKEOPS_HD static float exp(float x) {
#ifdef __CUDA_ARCH__
    return exp2f(x);
#else
    return static_cast<float>(fast_exp(static_cast<double>(x) * kInvScale));
#endif
  }
  // exp where results below 2^-126 may flush to 0: the exp-sum reducers' terms exp(S - m) and
  // rescale factors, in sums that hold a term >= 1 (the one at the maximum): a flushed term
  // changes the sum by less than 2^-126 relative, 2^-95 for 2^31 of them. One MUFU.EX2,
  // without the subnormal fix-up of exp2f (3 instructions).
  JAXKEOPS_HD static float exp_ftz(float x) {
#ifdef __CUDA_ARCH__
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return exp(x);
#endif
  }
  JAXKEOPS_HD static double exp_double(double x) {
#ifdef __CUDA_ARCH__
    return ::exp2(x);
#else
    return std::exp2(x);
#endif
  }
};

template <>
struct ScaledExp<double> {
  static constexpr double kScale = 1.0;
  static constexpr double kInvScale = 1.0;
  JAXKEOPS_HD static double exp(double x) { return fast_exp(x); }
  JAXKEOPS_HD static double exp_ftz(double x) { return fast_exp(x); }
  JAXKEOPS_HD static double exp_double(double x) { return fast_exp(x); }
};

// Natural units (the generic kernels compute φ exactly as the interpreter does).
template <class T>
struct NaturalExp {
  static constexpr T kScale = T(1);
  static constexpr double kInvScale = 1.0;
  JAXKEOPS_HD static T exp(T x) { return opfn::exp_(x); }
  JAXKEOPS_HD static T exp_ftz(T x) { return opfn::exp_(x); }
  JAXKEOPS_HD static double exp_double(double x) { return opfn::exp_(x); }
};

// ---------------------------------------------------------------- scores

// Score of x (D values) and y (D values); `w`: the weights of the weighted sqdist.
// Compile-time kind and D (the hot kernels: x and y are register arrays).
template <int S, int DC, class T>
JAXKEOPS_HD inline T score_fixed(const T* x, const T* y, const T* w) {
  T s = T(0);
#pragma unroll
  for (int d = 0; d < DC; ++d) {
    if constexpr (S == kSqDist) {
      const T e = x[d] - y[d];
      s = d == 0 ? e * e : s + e * e;
    } else if constexpr (S == kDot) {
      s = d == 0 ? x[d] * y[d] : s + x[d] * y[d];
    } else if constexpr (S == kL1) {
      const T e = x[d] - y[d];
      s += e < T(0) ? -e : e;
    } else if constexpr (S == kWeightedSqDist) {
      const T e = x[d] - y[d];
      s += w[d] * (e * e);
    }
  }
  return s;
}

// Runtime kind and D (the generic kernels; strides let x, y be read in place).
template <class T>
JAXKEOPS_HD inline T score_runtime(int32_t kind, const T* x, const T* y, int32_t D, const T* w) {
  T s = T(0);
  switch (kind) {
    case kSqDist:
      for (int32_t d = 0; d < D; ++d) {
        const T e = x[d] - y[d];
        s += e * e;
      }
      break;
    case kDot:
      for (int32_t d = 0; d < D; ++d) s += x[d] * y[d];
      break;
    case kL1:
      for (int32_t d = 0; d < D; ++d) {
        const T e = x[d] - y[d];
        s += e < T(0) ? -e : e;
      }
      break;
    case kWeightedSqDist:
      for (int32_t d = 0; d < D; ++d) {
        const T e = x[d] - y[d];
        s += w[d] * (e * e);
      }
      break;
    default: break;  // kScoreNone: s = 0
  }
  return s;
}

// Index of the affine coefficient in C: it follows the weights of the weighted sqdist.
JAXKEOPS_HD inline int32_t affine_coefficient_index(int32_t score, int32_t D) {
  return score == kWeightedSqDist ? D : 0;
}

// ---------------------------------------------------------------- φ programs

// What a φ program reads besides its slots.
template <class T>
struct PhiInputs {
  T s, a;
  const T* u;  // U_i (NU values)
  const T* v;  // V_j (NV values)
  const T* c;  // C (NC values)
};

namespace detail {

// Slots are four named registers: a runtime-indexed array would live in local memory.
template <class T>
struct Slots {
  T r0 = T(0), r1 = T(0), r2 = T(0), r3 = T(0);

  JAXKEOPS_HD T get(int32_t ref, const PhiInputs<T>& in) const {
    switch (ref) {
      case 0: return r0;
      case 1: return r1;
      case 2: return r2;
      case 3: return r3;
      case kRefS: return in.s;
      case kRefA: return in.a;
      default: break;
    }
    if (ref >= kRefC) return in.c[ref - kRefC];
    if (ref >= kRefV) return in.v[ref - kRefV];
    return in.u[ref - kRefU];
  }

  JAXKEOPS_HD void set(int32_t dst, T x) {
    switch (dst) {
      case 0: r0 = x; break;
      case 1: r1 = x; break;
      case 2: r2 = x; break;
      default: r3 = x; break;
    }
  }
};

}  // namespace detail

// Ops no fused kernel runs: CUDA's sin and cos reduce huge arguments (Payne–Hanek) through an
// array on the stack, which would give every kernel that can run a program a stack frame (and
// local-memory traffic). The matcher leaves formulas with them to the interpreter, and the
// handlers reject programs that use them (decode.h).
inline constexpr bool fused_program_op(Op op) {
  return op != Op::Sin && op != Op::Cos && op != Op::SinXDivX;
}

// Runs a validated φ program (4 ints per instruction); φ is slot 0 at the end.
template <class T>
JAXKEOPS_HD inline T run_phi_program(const int32_t* prog, int32_t n_instr, const PhiInputs<T>& in) {
  detail::Slots<T> slots;
  for (int32_t i = 0; i < n_instr; ++i) {
    const int32_t* ins = prog + 4 * i;
    const T a = slots.get(ins[2], in);
    T r = a;
    switch (static_cast<Op>(ins[0])) {
#define JAXKEOPS_FUSED_UNARY(name, code, keops)                      \
  case Op::name:                                                     \
    if constexpr (fused_program_op(Op::name)) r = opfn::name::apply(a); \
    break;
      JAXKEOPS_UNARY_ELEMENTWISE_OPS(JAXKEOPS_FUSED_UNARY)
#undef JAXKEOPS_FUSED_UNARY
#define JAXKEOPS_FUSED_BINARY(name, code, keops) \
  case Op::name: r = opfn::name::apply(a, slots.get(ins[3], in)); break;
      JAXKEOPS_BINARY_ELEMENTWISE_OPS(JAXKEOPS_FUSED_BINARY)
#undef JAXKEOPS_FUSED_BINARY
      case Op::Pow: r = opfn::int_pow(a, ins[3]); break;
      default: break;  // rejected by validation
    }
    slots.set(ins[1], r);
  }
  return slots.r0;
}

}  // namespace jaxkeops::fused
