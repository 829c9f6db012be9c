// The op table of the native executors: the single C++ source of truth for opcodes, KeOps
// names, arity and dimension rules. Python's jaxkeops/ops.py defines the same opcodes; the
// extension exports this table (opcode_table()) and a test checks both agree.
//
// Adding an elementwise op is two small edits in this file:
//   1. one line in JAXKEOPS_UNARY_ELEMENTWISE_OPS or JAXKEOPS_BINARY_ELEMENTWISE_OPS
//      (binary ones broadcast "same dim or 1", output dim = max);
//   2. its scalar function: a struct in namespace jaxkeops::opfn with
//      `template <class T> JAXKEOPS_HD static T apply(T a[, T b])`.
// Every executor (CPU tiles, later CUDA) instantiates its elementwise kernels from these lists.
// Non-elementwise ops (own dimension rule or parameters) are listed in JAXKEOPS_SPECIAL_OPS and
// get a small dedicated kernel in each executor plus a case in program.h's validation.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fast_math.h"

// X(Name, opcode, "KeOpsName")
#define JAXKEOPS_UNARY_ELEMENTWISE_OPS(X) \
  X(Minus, 6, "Minus")                    \
  X(Exp, 7, "Exp")                        \
  X(Log, 8, "Log")                        \
  X(Sqrt, 9, "Sqrt")                      \
  X(Square, 10, "Square")                 \
  X(Abs, 17, "Abs")                       \
  X(Sin, 18, "Sin")                       \
  X(Cos, 19, "Cos")                       \
  X(Asin, 20, "Asin")                     \
  X(Acos, 21, "Acos")                     \
  X(Atan, 22, "Atan")                     \
  X(Rsqrt, 23, "Rsqrt")                   \
  X(XLogX, 24, "XLogX")                   \
  X(SinXDivX, 25, "SinXDivX")             \
  X(Sign, 26, "Sign")                     \
  X(Step, 27, "Step")                     \
  X(ReLU, 28, "ReLU")                     \
  X(Floor, 29, "Floor")

#define JAXKEOPS_BINARY_ELEMENTWISE_OPS(X) \
  X(Add, 2, "Add")                         \
  X(Subtract, 3, "Subtract")               \
  X(Mult, 4, "Mult")                       \
  X(Divide, 5, "Divide")                   \
  X(Powf, 12, "Powf")                      \
  X(Atan2, 30, "Atan2")                    \
  X(Equal, 31, "Equal")                    \
  X(NotEqual, 32, "NotEqual")              \
  X(LessThan, 33, "LessThan")              \
  X(LessOrEqual, 34, "LessOrEqual")

// Ternary elementwise ops: "same dim or 1" across the three arguments, output dim = max.
#define JAXKEOPS_TERNARY_ELEMENTWISE_OPS(X) \
  X(IfElse, 35, "IfElse")                   \
  X(Clamp, 36, "Clamp")                     \
  X(Mod, 37, "Mod")

// Ops with their own kernel and dimension rule (see program.h: validate_instruction).
//   Var      no args, int_params [input_index]; output role == the input's role, dim == its dim
//   Const    no args, float_params = values; dim = count; param role
//   Pow      unary, int_params [n]: integer power (negative allowed), by repeated squaring
//   Sum      unary -> dim 1 (sum over the dims)
//   SqNorm2  unary -> dim 1
//   Scalprod binary, equal dims -> dim 1
//   SqDist   binary, equal dims -> dim 1, sum of squared differences
//   Round    unary, int_params [d]: round half away from zero to d decimals (d in [-300, 300])
//   Min, Max, ArgMin, ArgMax   unary -> dim 1; Arg* give the first extremal index as a value
//   OneHot   unary dim 1, int_params [D] -> dim D: 1 at index (int)(x + 0.5), zeros if outside
//   Extract  unary, int_params [i, d] -> dim d: x[i:i+d]
//   ExtractT unary dim d, int_params [i, D] -> dim D: zeros with x at [i:i+d]
//   Concat   binary -> dim a + b
//   TensorDot binary, int_params [na, nb, nc, dimfa[na], dimfb[nb], contfa[nc], contfb[nc],
//            perm[na + nb - 2 nc]]: tensordot of a (shape dimfa) and b (shape dimfb) over the
//            paired axes contfa/contfb, kept axes (a's then b's) transposed by argsort(perm)
//            (see TensorDotSpec below)
#define JAXKEOPS_SPECIAL_OPS(X) \
  X(Var, 0, "Var")              \
  X(Const, 1, "Const")          \
  X(Pow, 11, "Pow")             \
  X(Sum, 13, "Sum")             \
  X(SqNorm2, 14, "SqNorm2")     \
  X(Scalprod, 15, "Scalprod")   \
  X(SqDist, 16, "SqDist")       \
  X(Round, 38, "Round")         \
  X(Min, 39, "Min")             \
  X(Max, 40, "Max")             \
  X(ArgMin, 41, "ArgMin")       \
  X(ArgMax, 42, "ArgMax")       \
  X(OneHot, 43, "OneHot")       \
  X(Extract, 44, "Extract")     \
  X(ExtractT, 45, "ExtractT")   \
  X(Concat, 46, "Concat")       \
  X(TensorDot, 47, "TensorDot")

#define JAXKEOPS_ALL_OPS(X)          \
  JAXKEOPS_SPECIAL_OPS(X)            \
  JAXKEOPS_UNARY_ELEMENTWISE_OPS(X)  \
  JAXKEOPS_BINARY_ELEMENTWISE_OPS(X) \
  JAXKEOPS_TERNARY_ELEMENTWISE_OPS(X)

namespace jaxkeops {

enum class Op : int32_t {
#define JAXKEOPS_ENUM_ENTRY(name, code, keops) name = code,
  JAXKEOPS_ALL_OPS(JAXKEOPS_ENUM_ENTRY)
#undef JAXKEOPS_ENUM_ENTRY
};

enum class OpKind { kSpecial, kUnaryElementwise, kBinaryElementwise, kTernaryElementwise };

struct OpInfo {
  const char* name;  // KeOps name
  int32_t code;
  OpKind kind;
};

// Every op, for tables and lookups.
inline constexpr OpInfo kOpInfos[] = {
#define JAXKEOPS_INFO_SPECIAL(name, code, keops) {keops, code, OpKind::kSpecial},
#define JAXKEOPS_INFO_UNARY(name, code, keops) {keops, code, OpKind::kUnaryElementwise},
#define JAXKEOPS_INFO_BINARY(name, code, keops) {keops, code, OpKind::kBinaryElementwise},
#define JAXKEOPS_INFO_TERNARY(name, code, keops) {keops, code, OpKind::kTernaryElementwise},
    JAXKEOPS_SPECIAL_OPS(JAXKEOPS_INFO_SPECIAL)
    JAXKEOPS_UNARY_ELEMENTWISE_OPS(JAXKEOPS_INFO_UNARY)
    JAXKEOPS_BINARY_ELEMENTWISE_OPS(JAXKEOPS_INFO_BINARY)
    JAXKEOPS_TERNARY_ELEMENTWISE_OPS(JAXKEOPS_INFO_TERNARY)
#undef JAXKEOPS_INFO_TERNARY
#undef JAXKEOPS_INFO_SPECIAL
#undef JAXKEOPS_INFO_UNARY
#undef JAXKEOPS_INFO_BINARY
};

inline const OpInfo* find_op(int32_t code) {
  for (const OpInfo& info : kOpInfos) {
    if (info.code == code) return &info;
  }
  return nullptr;
}

// Scalar math, usable on host and device.
namespace opfn {

template <class T>
JAXKEOPS_HD inline T exp_(T a) {
#ifdef __CUDA_ARCH__
  return exp(a);
#else
  return fast_exp(a);
#endif
}

template <class T>
JAXKEOPS_HD inline T log_(T a) {
#ifdef __CUDA_ARCH__
  return log(a);
#else
  return std::log(a);
#endif
}

template <class T>
JAXKEOPS_HD inline T sqrt_(T a) {
#ifdef __CUDA_ARCH__
  return sqrt(a);
#else
  return std::sqrt(a);
#endif
}

// Plain libm calls on host, CUDA's overloads on device.
#ifdef __CUDA_ARCH__
#define JAXKEOPS_LIBM(fn) \
  template <class T>      \
  JAXKEOPS_HD inline T fn##_(T a) { return fn(a); }
#else
#define JAXKEOPS_LIBM(fn) \
  template <class T>      \
  inline T fn##_(T a) { return std::fn(a); }
#endif
JAXKEOPS_LIBM(sin)
JAXKEOPS_LIBM(cos)
JAXKEOPS_LIBM(asin)
JAXKEOPS_LIBM(acos)
JAXKEOPS_LIBM(atan)
JAXKEOPS_LIBM(floor)
JAXKEOPS_LIBM(trunc)
JAXKEOPS_LIBM(fabs)
#undef JAXKEOPS_LIBM

template <class T>
JAXKEOPS_HD inline T atan2_(T a, T b) {
#ifdef __CUDA_ARCH__
  return atan2(a, b);
#else
  return std::atan2(a, b);
#endif
}

// Round half away from zero (C's round), written with trunc so that it stays branch-free.
template <class T>
JAXKEOPS_HD inline T round_half_away(T a) {
  T t = trunc_(a);
  T frac = a - t;
  // Selects rather than adding 0, so that round(-0.3) is -0.0 as in C.
  return frac >= T(0.5) ? t + T(1) : (frac <= T(-0.5) ? t - T(1) : t);
}

// Round to d decimals (half away from zero) given scale = 10^d in T (possibly inf or 0 when d
// is beyond T's range). A value already integral at that scale (|x·10^d| ≥ 1/epsilon, overflow
// included) is returned as it is, so no d overflows: round(1.25f, 39) is 1.25f, not NaN.
template <class T>
JAXKEOPS_HD inline T round_decimals(T x, T scale) {
  const T y = x * scale;
  const T integral = T(1) / std::numeric_limits<T>::epsilon();  // 2^23 / 2^52
  if (!(y < integral && y > -integral)) return x;  // also inf, NaN (x inf or NaN, or 0 * inf)
  if (scale == T(0)) return x * T(0);              // d far below T's range: ±0
  return round_half_away(y) / scale;
}

// ---- unary elementwise ----
struct Minus { template <class T> JAXKEOPS_HD static T apply(T a) { return -a; } };
struct Exp { template <class T> JAXKEOPS_HD static T apply(T a) { return exp_(a); } };
struct Log { template <class T> JAXKEOPS_HD static T apply(T a) { return log_(a); } };
struct Sqrt { template <class T> JAXKEOPS_HD static T apply(T a) { return sqrt_(a); } };
struct Square { template <class T> JAXKEOPS_HD static T apply(T a) { return a * a; } };
struct Abs { template <class T> JAXKEOPS_HD static T apply(T a) { return fabs_(a); } };
struct Sin { template <class T> JAXKEOPS_HD static T apply(T a) { return sin_(a); } };
struct Cos { template <class T> JAXKEOPS_HD static T apply(T a) { return cos_(a); } };
struct Asin { template <class T> JAXKEOPS_HD static T apply(T a) { return asin_(a); } };
struct Acos { template <class T> JAXKEOPS_HD static T apply(T a) { return acos_(a); } };
struct Atan { template <class T> JAXKEOPS_HD static T apply(T a) { return atan_(a); } };
// Rsqrt(0) = 0, as KeOps. The zero is replaced before the division so no inf is produced.
struct Rsqrt {
  template <class T> JAXKEOPS_HD static T apply(T a) {
    T safe = a == T(0) ? T(1) : a;
    return a == T(0) ? T(0) : T(1) / sqrt_(safe);
  }
};
// x log x, 0 at 0.
struct XLogX {
  template <class T> JAXKEOPS_HD static T apply(T a) {
    T safe = a == T(0) ? T(1) : a;
    return a == T(0) ? T(0) : a * log_(safe);  // +0 at -0 too
  }
};
// sin(x) / x, 1 at 0.
struct SinXDivX {
  template <class T> JAXKEOPS_HD static T apply(T a) {
    T safe = a == T(0) ? T(1) : a;
    return a == T(0) ? T(1) : sin_(safe) / safe;
  }
};
struct Sign {
  template <class T> JAXKEOPS_HD static T apply(T a) {
    return (a > T(0) ? T(1) : T(0)) - (a < T(0) ? T(1) : T(0));
  }
};
struct Step { template <class T> JAXKEOPS_HD static T apply(T a) { return a < T(0) ? T(0) : T(1); } };
struct ReLU { template <class T> JAXKEOPS_HD static T apply(T a) { return a < T(0) ? T(0) : a; } };
struct Floor { template <class T> JAXKEOPS_HD static T apply(T a) { return floor_(a); } };

// ---- binary elementwise ----
struct Add { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a + b; } };
struct Subtract { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a - b; } };
struct Mult { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a * b; } };
struct Divide { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a / b; } };
// a^b = exp(b * log(a)), as KeOps does (NaN for a < 0).
struct Powf {
  template <class T> JAXKEOPS_HD static T apply(T a, T b) { return exp_(b * log_(a)); }
};
struct Atan2 { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return atan2_(a, b); } };
struct Equal {
  template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a == b ? T(1) : T(0); }
};
struct NotEqual {
  template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a != b ? T(1) : T(0); }
};
struct LessThan {
  template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a < b ? T(1) : T(0); }
};
struct LessOrEqual {
  template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a <= b ? T(1) : T(0); }
};

// ---- ternary elementwise ----
// IfElse(c, a, b) = a where c >= 0, else b.
struct IfElse {
  template <class T> JAXKEOPS_HD static T apply(T c, T a, T b) { return c >= T(0) ? a : b; }
};
// Clamp(x, a, b) = a if x < a, else b if x > b, else x.
struct Clamp {
  template <class T> JAXKEOPS_HD static T apply(T x, T a, T b) {
    return x < a ? a : (x > b ? b : x);
  }
};
// Mod(x, m, offset) = x - m * floor((x - offset) / m).
struct Mod {
  template <class T> JAXKEOPS_HD static T apply(T x, T m, T o) { return x - m * floor_((x - o) / m); }
};

// ---- helpers of the special ops ----
// x^n by repeated squaring (the same multiplication sequence as lax.integer_pow).
template <class T>
JAXKEOPS_HD inline T int_pow(T x, int32_t n) {
  int64_t m = n < 0 ? -static_cast<int64_t>(n) : n;
  T acc = T(1);
  T base = x;
  while (m > 0) {
    if (m & 1) acc *= base;
    m >>= 1;
    if (m > 0) base *= base;
  }
  return n < 0 ? T(1) / acc : acc;
}

}  // namespace opfn

// TensorDot's parameters, decoded and checked (host side: validation and kernel tables).
// Axes are labelled as in einsum: a's axis k has label k, b's axis k label na + k except that
// contracted axis contfb[c] takes the label of contfa[c]. The kept axes (a's, then b's, in
// order) are transposed by argsort(perm) into the output, as KeOps' TensorDot does.
struct TensorDotSpec {
  std::vector<int32_t> la, lb, lout;   // labels of a's, b's and the output's axes
  std::vector<int64_t> size;           // size of each label
  int64_t out_dim = 1;
  int64_t n_terms = 1;                 // products a[.] * b[.] summed in the output

  // Bound on n_terms (the kernel table holds 3 ints per term).
  static constexpr int64_t kMaxTerms = int64_t(1) << 24;

  bool parse(const std::vector<int32_t>& p, int64_t da, int64_t db, std::string* error) {
    auto fail = [&](const std::string& m) { *error = "TensorDot: " + m; return false; };
    if (p.size() < 3) return fail("fewer than 3 int params");
    const int64_t na = p[0], nb = p[1], nc = p[2];
    if (na < 1 || nb < 1 || nc < 0 || nc > na || nc > nb)
      return fail("bad axis counts na=" + std::to_string(na) + " nb=" + std::to_string(nb) +
                  " nc=" + std::to_string(nc));
    const int64_t n_kept = na + nb - 2 * nc;
    if (static_cast<int64_t>(p.size()) != 3 + na + nb + 2 * nc + n_kept)
      return fail("expected " + std::to_string(3 + na + nb + 2 * nc + n_kept) +
                  " int params, got " + std::to_string(p.size()));
    const int32_t* dimfa = p.data() + 3;
    const int32_t* dimfb = dimfa + na;
    const int32_t* contfa = dimfb + nb;
    const int32_t* contfb = contfa + nc;
    const int32_t* perm = contfb + nc;
    auto shape_ok = [&](const int32_t* dims, int64_t n, int64_t total, const char* what) {
      int64_t prod = 1;
      for (int64_t k = 0; k < n; ++k) {
        if (dims[k] < 1) return fail(std::string(what) + " has a dimension < 1");
        prod *= dims[k];
        if (prod > total) break;
      }
      if (prod != total)
        return fail(std::string(what) + " does not multiply to the argument dim " +
                    std::to_string(total));
      return true;
    };
    if (!shape_ok(dimfa, na, da, "dimfa") || !shape_ok(dimfb, nb, db, "dimfb")) return false;
    la.resize(na);
    lb.resize(nb);
    size.assign(na + nb, 0);
    std::vector<char> a_cont(na, 0), b_cont(nb, 0);
    for (int64_t k = 0; k < na; ++k) { la[k] = int32_t(k); size[k] = dimfa[k]; }
    for (int64_t k = 0; k < nb; ++k) { lb[k] = int32_t(na + k); size[na + k] = dimfb[k]; }
    for (int64_t c = 0; c < nc; ++c) {
      const int32_t ca = contfa[c], cb = contfb[c];
      if (ca < 0 || ca >= na || cb < 0 || cb >= nb || a_cont[ca] || b_cont[cb])
        return fail("contracted axes must be distinct and in range");
      if (dimfa[ca] != dimfb[cb]) return fail("contracted dimensions differ");
      a_cont[ca] = b_cont[cb] = 1;
      lb[cb] = ca;
    }
    std::vector<int32_t> kept;
    for (int64_t k = 0; k < na; ++k) if (!a_cont[k]) kept.push_back(la[k]);
    for (int64_t k = 0; k < nb; ++k) if (!b_cont[k]) kept.push_back(lb[k]);
    std::vector<int32_t> inv(n_kept, -1);
    for (int64_t k = 0; k < n_kept; ++k) {
      if (perm[k] < 0 || perm[k] >= n_kept || inv[perm[k]] >= 0)
        return fail("perm is not a permutation of the kept axes");
      inv[perm[k]] = int32_t(k);
    }
    lout.resize(n_kept);
    out_dim = 1;
    for (int64_t k = 0; k < n_kept; ++k) {
      lout[k] = kept[inv[k]];
      out_dim *= size[lout[k]];
    }
    n_terms = out_dim;
    for (int64_t c = 0; c < nc; ++c) n_terms *= dimfa[contfa[c]];
    if (n_terms > kMaxTerms) return fail("too many terms (" + std::to_string(n_terms) + ")");
    return true;
  }

  // Calls f(out_index, a_index, b_index) for every term, all indices row-major.
  template <class F>
  void for_each_term(F&& f) const {
    const size_t n_labels = size.size();
    std::vector<int64_t> idx(n_labels, 0);
    auto flat = [&](const std::vector<int32_t>& labels) {
      int64_t i = 0;
      for (int32_t l : labels) i = i * size[l] + idx[l];
      return i;
    };
    std::vector<int32_t> used;  // labels that occur (b's contracted labels are a's)
    for (int32_t l : la) used.push_back(l);
    for (int32_t l : lb) if (l >= static_cast<int32_t>(la.size())) used.push_back(l);
    for (int64_t t = 0; t < n_terms; ++t) {
      f(flat(lout), flat(la), flat(lb));
      for (size_t k = used.size(); k-- > 0;) {  // increment the mixed-radix counter
        if (++idx[used[k]] < size[used[k]]) break;
        idx[used[k]] = 0;
      }
    }
  }

  // The executors' index table: (out, a, b) triples flattened, sorted by output index (stable,
  // so each output sums its terms in one fixed order).
  std::vector<int32_t> sorted_term_table() const {
    std::vector<std::array<int32_t, 3>> terms;
    terms.reserve(n_terms);
    for_each_term([&](int64_t o, int64_t a, int64_t b) {
      terms.push_back({int32_t(o), int32_t(a), int32_t(b)});
    });
    std::stable_sort(terms.begin(), terms.end(),
                     [](const auto& x, const auto& y) { return x[0] < y[0]; });
    std::vector<int32_t> table;
    table.reserve(3 * terms.size());
    for (const auto& term : terms) table.insert(table.end(), term.begin(), term.end());
    return table;
  }
};

}  // namespace jaxkeops
