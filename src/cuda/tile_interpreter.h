// The per-thread code of the CUDA executor, host+device (JAXKEOPS_HD): compiled by nvcc for the
// kernels (kernels.cuh) and by the host compiler for their emulation (emulation.cc), so that CI
// checks the very code the GPU runs.
//
// Two interpreters:
//   - run_phase: one instruction at a time for one (batch, row or lane); used by the param,
//     outer and inner phases, which run once per problem / row / j lane, off the hot path;
//   - run_pair_subtile: the pair phase, each instruction over a sub-tile of kSubTile inner
//     indices at once, so that its dispatch (decode, operand addresses, switch) is paid once per
//     kSubTile pairs. Pair registers are element-major per thread (element e of lane s at
//     pr[e * pr_ds + s]): the lane loops have a compile-time trip count and unroll.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/device_program.h"
#include "fast_math.h"
#include "ops.h"
#include "program.h"

#if defined(__CUDACC__)
#define JAXKEOPS_NOINLINE __noinline__
#else
#define JAXKEOPS_NOINLINE
#endif

namespace jaxkeops::cuda {

// ---------------------------------------------------------------- scalar phases

// How a thread addresses registers in the scalar phases: element d of register r is
// base[role][(off + d) * stride]. base[kInner] moves with the lane being computed.
template <class T>
struct Frame {
  T* base[4];
  int64_t stride[4];
  int64_t b;    // batch problem (device-resolved part)
  int64_t row;  // outer index
  int64_t j;    // inner index
};

template <class T>
JAXKEOPS_HD inline T& reg_at(const DevProgram& p, const Frame<T>& f, int r, int d) {
  const DevReg g = p.regs[r];
  return f.base[g.role][int64_t(g.offset + d) * f.stride[g.role]];
}

JAXKEOPS_HD inline int64_t batch_offset(const DevCall& c, int k, int64_t b) {
  int64_t off = 0;
  for (int d = c.batch_rank - 1; d >= 0; --d) {
    off += (b % c.batch_dims[d]) * c.in_stride[k][d];
    b /= c.batch_dims[d];
  }
  return off;
}

template <class T, class F>
JAXKEOPS_HD inline void scalar_unary(const DevProgram& p, const Frame<T>& f, const DevInstr& in,
                                     int od) {
  const int ad = p.regs[in.args[0]].dim;
  for (int d = 0; d < od; ++d)
    reg_at(p, f, in.out, d) = F::apply(reg_at(p, f, in.args[0], ad == 1 ? 0 : d));
}

template <class T, class F>
JAXKEOPS_HD inline void scalar_binary(const DevProgram& p, const Frame<T>& f, const DevInstr& in,
                                      int od) {
  const int ad = p.regs[in.args[0]].dim, bd = p.regs[in.args[1]].dim;
  for (int d = 0; d < od; ++d)
    reg_at(p, f, in.out, d) = F::apply(reg_at(p, f, in.args[0], ad == 1 ? 0 : d),
                                       reg_at(p, f, in.args[1], bd == 1 ? 0 : d));
}

template <class T, class F>
JAXKEOPS_HD inline void scalar_ternary(const DevProgram& p, const Frame<T>& f,
                                       const DevInstr& in, int od) {
  const int ad = p.regs[in.args[0]].dim, bd = p.regs[in.args[1]].dim,
            cd = p.regs[in.args[2]].dim;
  for (int d = 0; d < od; ++d)
    reg_at(p, f, in.out, d) = F::apply(reg_at(p, f, in.args[0], ad == 1 ? 0 : d),
                                       reg_at(p, f, in.args[1], bd == 1 ? 0 : d),
                                       reg_at(p, f, in.args[2], cd == 1 ? 0 : d));
}

// Runs the instructions of one scalar role (param, outer, inner) for the frame's current
// (batch, row, j). Not inlined on the device: one copy per dtype instead of one per kernel.
template <class T>
JAXKEOPS_HD JAXKEOPS_NOINLINE void run_phase(const DevProgram& p, const DevCall& c,
                                             const Frame<T>& f, int role) {
  for (int i = p.phase_begin[role]; i < p.phase_begin[role + 1]; ++i) {
    const DevInstr in = p.instrs[i];
    const int od = p.regs[in.out].dim;
    switch (static_cast<Op>(in.opcode)) {
#define JK_UNARY(name, code, keops) \
  case Op::name: scalar_unary<T, opfn::name>(p, f, in, od); break;
      JAXKEOPS_UNARY_ELEMENTWISE_OPS(JK_UNARY)
#undef JK_UNARY
#define JK_BINARY(name, code, keops) \
  case Op::name: scalar_binary<T, opfn::name>(p, f, in, od); break;
      JAXKEOPS_BINARY_ELEMENTWISE_OPS(JK_BINARY)
#undef JK_BINARY
#define JK_TERNARY(name, code, keops) \
  case Op::name: scalar_ternary<T, opfn::name>(p, f, in, od); break;
      JAXKEOPS_TERNARY_ELEMENTWISE_OPS(JK_TERNARY)
#undef JK_TERNARY
      case Op::Var: {
        const T* src = static_cast<const T*>(c.inputs[in.ip0]) + batch_offset(c, in.ip0, f.b);
        const int64_t at = role == kOuter ? f.row : role == kInner ? f.j : 0;
        for (int d = 0; d < od; ++d) reg_at(p, f, in.out, d) = src[at * od + d];
        break;
      }
      case Op::Const:
        for (int d = 0; d < od; ++d) reg_at(p, f, in.out, d) = static_cast<T>(p.consts[in.aux + d]);
        break;
      case Op::Pow:
        for (int d = 0; d < od; ++d)
          reg_at(p, f, in.out, d) = opfn::int_pow(reg_at(p, f, in.args[0], d), in.ip0);
        break;
      case Op::Round: {
        const T scale = static_cast<T>(std::pow(10.0, double(in.ip0)));
        for (int d = 0; d < od; ++d) {
          const T x = reg_at(p, f, in.args[0], d);
          reg_at(p, f, in.out, d) = in.ip0 == 0 ? opfn::round_half_away(x)
                                                : opfn::round_decimals(x, scale);
        }
        break;
      }
      case Op::Sum:
      case Op::SqNorm2: {
        const bool sq = in.opcode == int32_t(Op::SqNorm2);
        const int ad = p.regs[in.args[0]].dim;
        T acc = T(0);
        for (int d = 0; d < ad; ++d) {
          const T x = reg_at(p, f, in.args[0], d);
          acc = d == 0 ? (sq ? x * x : x) : acc + (sq ? x * x : x);
        }
        reg_at(p, f, in.out, 0) = acc;
        break;
      }
      case Op::Scalprod:
      case Op::SqDist: {
        const bool dist = in.opcode == int32_t(Op::SqDist);
        const int ad = p.regs[in.args[0]].dim;
        T acc = T(0);
        for (int d = 0; d < ad; ++d) {
          const T x = reg_at(p, f, in.args[0], d), y = reg_at(p, f, in.args[1], d);
          const T t = dist ? (x - y) * (x - y) : x * y;
          acc = d == 0 ? t : acc + t;
        }
        reg_at(p, f, in.out, 0) = acc;
        break;
      }
      case Op::Min:
      case Op::Max:
      case Op::ArgMin:
      case Op::ArgMax: {
        const bool is_max = in.opcode == int32_t(Op::Max) || in.opcode == int32_t(Op::ArgMax);
        const bool is_arg = in.opcode == int32_t(Op::ArgMin) || in.opcode == int32_t(Op::ArgMax);
        const int ad = p.regs[in.args[0]].dim;
        T best = reg_at(p, f, in.args[0], 0), index = T(0);
        for (int d = 1; d < ad; ++d) {
          const T v = reg_at(p, f, in.args[0], d);
          const bool better = is_max ? v > best : v < best;
          best = better ? v : best;
          index = better ? T(d) : index;
        }
        reg_at(p, f, in.out, 0) = is_arg ? index : best;
        break;
      }
      case Op::OneHot: {
        const T x = reg_at(p, f, in.args[0], 0);
        for (int d = 0; d < od; ++d)
          reg_at(p, f, in.out, d) = opfn::trunc_(x + T(0.5)) == T(d) ? T(1) : T(0);
        break;
      }
      case Op::Extract:
        for (int d = 0; d < od; ++d) reg_at(p, f, in.out, d) = reg_at(p, f, in.args[0], in.ip0 + d);
        break;
      case Op::ExtractT: {
        const int ad = p.regs[in.args[0]].dim;
        for (int d = 0; d < od; ++d) {
          const int src = d - in.ip0;
          reg_at(p, f, in.out, d) = (src < 0 || src >= ad) ? T(0) : reg_at(p, f, in.args[0], src);
        }
        break;
      }
      case Op::Concat: {
        const int ad = p.regs[in.args[0]].dim;
        for (int d = 0; d < od; ++d)
          reg_at(p, f, in.out, d) =
              d < ad ? reg_at(p, f, in.args[0], d) : reg_at(p, f, in.args[1], d - ad);
        break;
      }
      case Op::TensorDot: {
        // Terms sorted by output index, covering every output: the first one assigns.
        const int32_t* t = p.terms + 3 * int64_t(in.aux);
        for (int32_t k = 0; k < in.n_aux; ++k, t += 3) {
          const T prod = reg_at(p, f, in.args[0], t[1]) * reg_at(p, f, in.args[1], t[2]);
          T& o = reg_at(p, f, in.out, t[0]);
          o = (k == 0 || t[-3] != t[0]) ? prod : o + prod;
        }
        break;
      }
    }
  }
}

// ---------------------------------------------------------------- pair phase over a sub-tile

constexpr int S = kSubTile;

// Where one thread's registers are while it runs a sub-tile, per role: the first element of the
// role's storage and the stride between elements. Param: this batch problem's registers (stride
// 1); outer: this thread's file (stride n_slots); inner: the sub-tile's first lane in the j tile
// (stride tile width); pair: element e of lane s at pr[e * pr_ds + s]. Indexed by role, so that
// an operand's address is two loads and a multiply-add, without branches. All offsets are 32-bit
// (the workspace budget keeps every storage below 2^31 elements).
template <class T>
struct PairCtx {
  const T* base[4];
  int32_t ds[4];
  T* pr;  // == base[kPair], writable
  int32_t pr_ds;
};

// A register as seen by a sub-tile: element d of lane s is p[d * ds + (vary ? s : 0)].
// Param and outer registers are the same for every lane (vary = 0); a dim-1 register has ds = 0,
// so that it broadcasts against wider ones with no per-element test.
template <class T>
struct View {
  const T* p;
  int32_t ds;
  int32_t vary;
  JAXKEOPS_HD T at(int d, int s) const { return p[d * ds + s * vary]; }
};

template <class T>
JAXKEOPS_HD inline View<T> view_of(const PairCtx<T>& c, const PairArg& a) {
  const int32_t ds = c.ds[a.role];
  return {c.base[a.role] + a.offset * ds, a.dim == 1 ? 0 : ds, a.role >= kInner ? 1 : 0};
}

// Lanes unrolled per loop iteration of an elementwise op: all of them for the cheap ops, 4 for
// the ones whose inline code is long (libm-style functions), which keeps the kernels' code size
// and build time reasonable while the dispatch stays amortised over the whole sub-tile.
template <class F>
inline constexpr int kUnroll = S;
#define JAXKEOPS_LONG_OP(name) \
  template <>              \
  inline constexpr int kUnroll<opfn::name> = 4;
JAXKEOPS_LONG_OP(Log)
JAXKEOPS_LONG_OP(Sqrt)
JAXKEOPS_LONG_OP(Sin)
JAXKEOPS_LONG_OP(Cos)
JAXKEOPS_LONG_OP(Asin)
JAXKEOPS_LONG_OP(Acos)
JAXKEOPS_LONG_OP(Atan)
JAXKEOPS_LONG_OP(Rsqrt)
JAXKEOPS_LONG_OP(XLogX)
JAXKEOPS_LONG_OP(SinXDivX)
JAXKEOPS_LONG_OP(Divide)
JAXKEOPS_LONG_OP(Powf)
JAXKEOPS_LONG_OP(Atan2)
#undef JAXKEOPS_LONG_OP

// Elementwise ops, specialised on which arguments vary over the sub-tile; the lane loops unroll.
template <class T, class F, bool VA>
JAXKEOPS_HD inline void pair_unary(T* o, int ods, int od, View<T> a) {
  for (int d = 0; d < od; ++d) {
    const T* pa = a.p + d * a.ds;
    T* po = o + d * ods;
    if (VA) {
      // All loads first: the output may alias an operand as far as the compiler knows, and
      // interleaved loads and stores would serialise on memory latency.
      T x[S];
#pragma unroll
      for (int s = 0; s < S; ++s) x[s] = pa[s];
#pragma unroll(kUnroll<F>)
      for (int s = 0; s < S; ++s) po[s] = F::apply(x[s]);
    } else {
      const T x = F::apply(pa[0]);
#pragma unroll
      for (int s = 0; s < S; ++s) po[s] = x;
    }
  }
}

template <class T, class F, bool VA, bool VB>
JAXKEOPS_HD inline void pair_binary(T* o, int ods, int od, View<T> a, View<T> b) {
  for (int d = 0; d < od; ++d) {
    const T* pa = a.p + d * a.ds;
    const T* pb = b.p + d * b.ds;
    T* po = o + d * ods;
    if (VA || VB) {  // all loads first (see pair_unary)
      T x[S], y[S];
#pragma unroll
      for (int s = 0; s < S; ++s) {
        x[s] = pa[VA ? s : 0];
        y[s] = pb[VB ? s : 0];
      }
#pragma unroll(kUnroll<F>)
      for (int s = 0; s < S; ++s) po[s] = F::apply(x[s], y[s]);
    } else {
      const T z = F::apply(pa[0], pb[0]);
#pragma unroll
      for (int s = 0; s < S; ++s) po[s] = z;
    }
  }
}

template <class T, class F>
JAXKEOPS_HD inline void pair_unary_any(T* o, int ods, int od, View<T> a) {
  if (a.vary) pair_unary<T, F, true>(o, ods, od, a);
  else pair_unary<T, F, false>(o, ods, od, a);
}

template <class T, class F>
JAXKEOPS_HD inline void pair_binary_any(T* o, int ods, int od, View<T> a, View<T> b) {
  if (a.vary && b.vary) pair_binary<T, F, true, true>(o, ods, od, a, b);
  else if (a.vary) pair_binary<T, F, true, false>(o, ods, od, a, b);
  else if (b.vary) pair_binary<T, F, false, true>(o, ods, od, a, b);
  else pair_binary<T, F, false, false>(o, ods, od, a, b);
}

// Ternary ops are rare: one generic loop (runtime lane strides).
template <class T, class F>
JAXKEOPS_HD inline void pair_ternary(T* o, int ods, int od, View<T> a, View<T> b, View<T> c) {
  for (int d = 0; d < od; ++d)
    for (int s = 0; s < S; ++s) o[d * ods + s] = F::apply(a.at(d, s), b.at(d, s), c.at(d, s));
}

// Sum / SqNorm2 (B unused) and Scalprod / SqDist over the argument dims, first term assigned
// (the CPU's summation order); the lane accumulators stay in registers.
template <class T, bool VA, bool VB, int kKind>  // kKind: 0 Sum, 1 SqNorm2, 2 Scalprod, 3 SqDist
JAXKEOPS_HD inline void pair_dimsum(T* o, int ad, View<T> a, View<T> b) {
  auto term = [](T x, T y) {
    if (kKind == 0) return x;
    if (kKind == 1) return x * x;
    if (kKind == 2) return x * y;
    return (x - y) * (x - y);
  };
  T acc[S];
#pragma unroll
  for (int s = 0; s < S; ++s) acc[s] = term(a.p[VA ? s : 0], b.p[VB ? s : 0]);
  for (int d = 1; d < ad; ++d) {
    const T* pa = a.p + d * a.ds;
    const T* pb = b.p + d * b.ds;
#pragma unroll
    for (int s = 0; s < S; ++s) acc[s] = acc[s] + term(pa[VA ? s : 0], pb[VB ? s : 0]);
  }
#pragma unroll
  for (int s = 0; s < S; ++s) o[s] = acc[s];
}

template <class T, int kKind>
JAXKEOPS_HD inline void pair_dimsum_any(T* o, int ad, View<T> a, View<T> b) {
  if (a.vary && b.vary) pair_dimsum<T, true, true, kKind>(o, ad, a, b);
  else if (a.vary) pair_dimsum<T, true, false, kKind>(o, ad, a, b);
  else if (b.vary) pair_dimsum<T, false, true, kKind>(o, ad, a, b);
  else pair_dimsum<T, false, false, kKind>(o, ad, a, b);
}

// Runs the pair instructions over one sub-tile: every lane of c.tile and c.pr, valid or not
// (lanes past the end of the inner axis compute on stale data and are masked by the reducer).
template <class T>
JAXKEOPS_HD inline void run_pair_subtile(const PairInstr* prog, int n, const PairCtx<T>& c,
                                         const int32_t* terms) {
  for (int i = 0; i < n; ++i) {
    const PairInstr& in = prog[i];
    const int od = in.out_dim;
    const int ods = c.pr_ds;
    T* o = c.pr + in.out * ods;
    const View<T> a = view_of(c, in.args[0]);
    switch (static_cast<Op>(in.opcode)) {
#define JK_UNARY(name, code, keops) \
  case Op::name: pair_unary_any<T, opfn::name>(o, ods, od, a); break;
      JAXKEOPS_UNARY_ELEMENTWISE_OPS(JK_UNARY)
#undef JK_UNARY
#define JK_BINARY(name, code, keops) \
  case Op::name: pair_binary_any<T, opfn::name>(o, ods, od, a, view_of(c, in.args[1])); break;
      JAXKEOPS_BINARY_ELEMENTWISE_OPS(JK_BINARY)
#undef JK_BINARY
#define JK_TERNARY(name, code, keops)                                                \
  case Op::name:                                                                     \
    pair_ternary<T, opfn::name>(o, ods, od, a, view_of(c, in.args[1]), view_of(c, in.args[2])); \
    break;
      JAXKEOPS_TERNARY_ELEMENTWISE_OPS(JK_TERNARY)
#undef JK_TERNARY
      case Op::Sum: pair_dimsum_any<T, 0>(o, in.args[0].dim, a, a); break;
      case Op::SqNorm2: pair_dimsum_any<T, 1>(o, in.args[0].dim, a, a); break;
      case Op::Scalprod: pair_dimsum_any<T, 2>(o, in.args[0].dim, a, view_of(c, in.args[1])); break;
      case Op::SqDist: pair_dimsum_any<T, 3>(o, in.args[0].dim, a, view_of(c, in.args[1])); break;
      case Op::Pow:
        for (int d = 0; d < od; ++d)
          for (int s = 0; s < S; ++s) o[d * ods + s] = opfn::int_pow(a.at(d, s), in.ip0);
        break;
      case Op::Round: {
        const T scale = static_cast<T>(std::pow(10.0, double(in.ip0)));
        for (int d = 0; d < od; ++d)
          for (int s = 0; s < S; ++s) {
            const T x = a.at(d, s);
            o[d * ods + s] = in.ip0 == 0 ? opfn::round_half_away(x)
                                         : opfn::round_decimals(x, scale);
          }
        break;
      }
      case Op::Min:
      case Op::Max:
      case Op::ArgMin:
      case Op::ArgMax: {
        const bool is_max = in.opcode == int32_t(Op::Max) || in.opcode == int32_t(Op::ArgMax);
        const bool is_arg = in.opcode == int32_t(Op::ArgMin) || in.opcode == int32_t(Op::ArgMax);
        const int ad = in.args[0].dim;
        for (int s = 0; s < S; ++s) {
          T best = a.at(0, s), index = T(0);
          for (int d = 1; d < ad; ++d) {
            const T v = a.at(d, s);
            const bool better = is_max ? v > best : v < best;
            best = better ? v : best;
            index = better ? T(d) : index;
          }
          o[s] = is_arg ? index : best;
        }
        break;
      }
      case Op::OneHot:
        for (int d = 0; d < od; ++d)
          for (int s = 0; s < S; ++s)
            o[d * ods + s] = opfn::trunc_(a.at(0, s) + T(0.5)) == T(d) ? T(1) : T(0);
        break;
      case Op::Extract:
        for (int d = 0; d < od; ++d)
          for (int s = 0; s < S; ++s) o[d * ods + s] = a.at(in.ip0 + d, s);
        break;
      case Op::ExtractT: {
        const int ad = in.args[0].dim;
        for (int d = 0; d < od; ++d) {
          const int src = d - in.ip0;
          for (int s = 0; s < S; ++s)
            o[d * ods + s] = (src < 0 || src >= ad) ? T(0) : a.at(src, s);
        }
        break;
      }
      case Op::Concat: {
        const View<T> b = view_of(c, in.args[1]);
        const int ad = in.args[0].dim;
        for (int d = 0; d < od; ++d)
          for (int s = 0; s < S; ++s) o[d * ods + s] = d < ad ? a.at(d, s) : b.at(d - ad, s);
        break;
      }
      case Op::TensorDot: {
        // Terms sorted by output index, covering every output: the first one assigns.
        const View<T> b = view_of(c, in.args[1]);
        const int32_t* t = terms + 3 * in.aux;
        for (int32_t k = 0; k < in.n_aux; ++k, t += 3) {
          const bool first = k == 0 || t[-3] != t[0];
          T* po = o + t[0] * ods;
          for (int s = 0; s < S; ++s) {
            const T prod = a.at(t[1], s) * b.at(t[2], s);
            po[s] = first ? prod : po[s] + prod;
          }
        }
        break;
      }
      default: break;  // Var and Const are never pair instructions (program.h validates)
    }
  }
}

}  // namespace jaxkeops::cuda
