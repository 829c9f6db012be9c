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

#include <cmath>
#include <cstdint>

#include "fast_math.h"

// X(Name, opcode, "KeOpsName")
#define JAXKEOPS_UNARY_ELEMENTWISE_OPS(X) \
  X(Minus, 6, "Minus")                    \
  X(Exp, 7, "Exp")                        \
  X(Log, 8, "Log")                        \
  X(Sqrt, 9, "Sqrt")                      \
  X(Square, 10, "Square")

#define JAXKEOPS_BINARY_ELEMENTWISE_OPS(X) \
  X(Add, 2, "Add")                         \
  X(Subtract, 3, "Subtract")               \
  X(Mult, 4, "Mult")                       \
  X(Divide, 5, "Divide")                   \
  X(Powf, 12, "Powf")

// Ops with their own kernel and dimension rule (see program.h: validate_instruction).
//   Var      no args, int_params [input_index]; output role == the input's role, dim == its dim
//   Const    no args, float_params = values; dim = count; param role
//   Pow      unary, int_params [n]: integer power (negative allowed), by repeated squaring
//   Sum      unary -> dim 1 (sum over the dims)
//   SqNorm2  unary -> dim 1
//   Scalprod binary, equal dims -> dim 1
//   SqDist   binary, equal dims -> dim 1, sum of squared differences
#define JAXKEOPS_SPECIAL_OPS(X) \
  X(Var, 0, "Var")              \
  X(Const, 1, "Const")          \
  X(Pow, 11, "Pow")             \
  X(Sum, 13, "Sum")             \
  X(SqNorm2, 14, "SqNorm2")     \
  X(Scalprod, 15, "Scalprod")   \
  X(SqDist, 16, "SqDist")

#define JAXKEOPS_ALL_OPS(X)          \
  JAXKEOPS_SPECIAL_OPS(X)            \
  JAXKEOPS_UNARY_ELEMENTWISE_OPS(X)  \
  JAXKEOPS_BINARY_ELEMENTWISE_OPS(X)

namespace jaxkeops {

enum class Op : int32_t {
#define JAXKEOPS_ENUM_ENTRY(name, code, keops) name = code,
  JAXKEOPS_ALL_OPS(JAXKEOPS_ENUM_ENTRY)
#undef JAXKEOPS_ENUM_ENTRY
};

enum class OpKind { kSpecial, kUnaryElementwise, kBinaryElementwise };

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
    JAXKEOPS_SPECIAL_OPS(JAXKEOPS_INFO_SPECIAL)
    JAXKEOPS_UNARY_ELEMENTWISE_OPS(JAXKEOPS_INFO_UNARY)
    JAXKEOPS_BINARY_ELEMENTWISE_OPS(JAXKEOPS_INFO_BINARY)
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

// ---- unary elementwise ----
struct Minus { template <class T> JAXKEOPS_HD static T apply(T a) { return -a; } };
struct Exp { template <class T> JAXKEOPS_HD static T apply(T a) { return exp_(a); } };
struct Log { template <class T> JAXKEOPS_HD static T apply(T a) { return log_(a); } };
struct Sqrt { template <class T> JAXKEOPS_HD static T apply(T a) { return sqrt_(a); } };
struct Square { template <class T> JAXKEOPS_HD static T apply(T a) { return a * a; } };

// ---- binary elementwise ----
struct Add { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a + b; } };
struct Subtract { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a - b; } };
struct Mult { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a * b; } };
struct Divide { template <class T> JAXKEOPS_HD static T apply(T a, T b) { return a / b; } };
// a^b = exp(b * log(a)), as KeOps does (NaN for a < 0).
struct Powf {
  template <class T> JAXKEOPS_HD static T apply(T a, T b) { return exp_(b * log_(a)); }
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
}  // namespace jaxkeops
