// CPU executor.
//
// Registers are stored [dim][lanes]: param registers have 1 lane, outer registers one lane per row
// of a chunk of Rc outer rows, inner and pair registers one lane per inner index of a tile of TL
// indices. Instructions are hoisted by role:
//   param  once per call (calling thread)
//   outer  once per chunk of rows (lanes = rows)
//   inner  once per inner tile, shared by the rows of the chunk
//   pair   once per (row, tile)
// Loop order of a work item (chunk of rows x range of inner indices):
//   outer instrs; for each inner tile { inner instrs; for each row { pair instrs; accumulate } }
// Each kernel loops over lanes innermost with compile-time lane strides (0: broadcast, 1: dense)
// so that every variant vectorises.
#include "cpu/executor.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "cpu/small_matmul.h"
#include "cpu/thread_pool.h"
#include "ops.h"
#include "reductions.h"

#define JK_RESTRICT __restrict__

namespace jaxkeops::cpu {
namespace {

template <class T>
struct Bound;

template <class T>
using KernelFn = void (*)(const Bound<T>&, int64_t row, int64_t n_lanes);

template <class T>
struct ArgRef {
  const T* base = nullptr;
  int64_t dim_stride = 0;  // 0: dim-1 broadcasting
  int64_t row_step = 0;    // 1 for an outer register read by a pair instruction
};

template <class T>
struct Bound {
  KernelFn<T> fn = nullptr;
  T* out = nullptr;
  int64_t out_ds = 0;
  int32_t out_dim = 0;
  int32_t arg_dim = 0;  // dim of the first argument (for reductions over dims)
  ArgRef<T> a, b, c;
  int32_t ipar = 0;
  const int32_t* table = nullptr;  // TensorDot: (out, a, b) index triples
  int64_t n_terms = 0;
};

// ---------------------------------------------------------------- kernels

template <class T, class F, int LA>
void unary_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * k.a.dim_stride;
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    for (int64_t l = 0; l < L; ++l) o[l] = F::apply(x[l * LA]);
  }
}

template <class T, class F, int LA, int LB>
void binary_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  const T* pb = k.b.base + row * k.b.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * k.a.dim_stride;
    const T* JK_RESTRICT y = pb + d * k.b.dim_stride;
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    for (int64_t l = 0; l < L; ++l) o[l] = F::apply(x[l * LA], y[l * LB]);
  }
}

template <class T, class F, int LA, int LB, int LC>
void ternary_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  const T* pb = k.b.base + row * k.b.row_step;
  const T* pc = k.c.base + row * k.c.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * k.a.dim_stride;
    const T* JK_RESTRICT y = pb + d * k.b.dim_stride;
    const T* JK_RESTRICT z = pc + d * k.c.dim_stride;
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    for (int64_t l = 0; l < L; ++l) o[l] = F::apply(x[l * LA], y[l * LB], z[l * LC]);
  }
}

// Round to ipar decimals (half away from zero).
template <class T, int LA>
void round_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  const T scale = static_cast<T>(std::pow(10.0, k.ipar));
  for (int32_t d = 0; d < k.out_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * k.a.dim_stride;
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    if (k.ipar == 0) {
      for (int64_t l = 0; l < L; ++l) o[l] = opfn::round_half_away(x[l * LA]);
    } else {
      for (int64_t l = 0; l < L; ++l) o[l] = opfn::round_decimals(x[l * LA], scale);
    }
  }
}

// Min / Max / ArgMin / ArgMax over the argument's dims; the first extremal index wins ties.
template <class T, bool kMax, bool kArg, int LA>
void select_kernel_impl(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  T* JK_RESTRICT o = k.out;
  for (int64_t l = 0; l < L; ++l) {
    T best = pa[l * LA];
    T index = T(0);
    for (int32_t d = 1; d < k.arg_dim; ++d) {
      const T v = pa[d * k.a.dim_stride + l * LA];
      const bool better = kMax ? v > best : v < best;
      best = better ? v : best;
      index = better ? T(d) : index;
    }
    o[l] = kArg ? index : best;
  }
}

// OneHot: 1 at index (int)(x + 0.5) (KeOps' rounding), zeros when it is outside [0, D).
template <class T, int LA>
void one_hot_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* JK_RESTRICT x = k.a.base + row * k.a.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    for (int64_t l = 0; l < L; ++l) o[l] = opfn::trunc_(x[l * LA] + T(0.5)) == T(d) ? T(1) : T(0);
  }
}

// Extract: out[d] = a[ipar + d].
template <class T, int LA>
void extract_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    const T* JK_RESTRICT x = pa + (k.ipar + d) * k.a.dim_stride;
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    for (int64_t l = 0; l < L; ++l) o[l] = x[l * LA];
  }
}

// ExtractT: out = zeros, out[ipar + d] = a[d].
template <class T, int LA>
void extract_t_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    const int32_t src = d - k.ipar;
    if (src < 0 || src >= k.arg_dim) {
      for (int64_t l = 0; l < L; ++l) o[l] = T(0);
    } else {
      const T* JK_RESTRICT x = pa + src * k.a.dim_stride;
      for (int64_t l = 0; l < L; ++l) o[l] = x[l * LA];
    }
  }
}

// Concat: a's dims then b's.
template <class T, int LA, int LB>
void concat_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  const T* pb = k.b.base + row * k.b.row_step;
  for (int32_t d = 0; d < k.out_dim; ++d) {
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    if (d < k.arg_dim) {
      const T* JK_RESTRICT x = pa + d * k.a.dim_stride;
      for (int64_t l = 0; l < L; ++l) o[l] = x[l * LA];
    } else {
      const T* JK_RESTRICT y = pb + (d - k.arg_dim) * k.b.dim_stride;
      for (int64_t l = 0; l < L; ++l) o[l] = y[l * LB];
    }
  }
}

// TensorDot (and so MatVecMult, VecMatMult, TensorProd, Kron): a table of (out, a, b) index
// triples built once per program; every term is a lane-vectorised multiply-add.
template <class T, int LA, int LB>
void tensordot_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  const T* pa = k.a.base + row * k.a.row_step;
  const T* pb = k.b.base + row * k.b.row_step;
  // The table is sorted by output index and covers every output: the first term of an output
  // is assigned (so a single product keeps its sign of zero, as jnp), the others added.
  for (int64_t t = 0; t < k.n_terms; ++t) {
    const int32_t* term = k.table + 3 * t;
    T* JK_RESTRICT o = k.out + term[0] * k.out_ds;
    const T* JK_RESTRICT x = pa + term[1] * k.a.dim_stride;
    const T* JK_RESTRICT y = pb + term[2] * k.b.dim_stride;
    if (t == 0 || term[-3] != term[0]) {
      for (int64_t l = 0; l < L; ++l) o[l] = x[l * LA] * y[l * LB];
    } else {
      for (int64_t l = 0; l < L; ++l) o[l] += x[l * LA] * y[l * LB];
    }
  }
}

// Integer power by repeated squaring, bits outermost so the lane loops vectorise.
template <class T, int LA>
void pow_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  constexpr int64_t kBlock = 64;
  const T* pa = k.a.base + row * k.a.row_step;
  const int32_t n = k.ipar;
  const int64_t m0 = n < 0 ? -static_cast<int64_t>(n) : n;
  T base[kBlock], acc[kBlock];
  for (int32_t d = 0; d < k.out_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * k.a.dim_stride;
    T* JK_RESTRICT o = k.out + d * k.out_ds;
    for (int64_t l0 = 0; l0 < L; l0 += kBlock) {
      const int64_t nl = std::min(kBlock, L - l0);
      for (int64_t l = 0; l < nl; ++l) {
        base[l] = x[(l0 + l) * LA];
        acc[l] = T(1);
      }
      for (int64_t m = m0; m > 0;) {
        if (m & 1)
          for (int64_t l = 0; l < nl; ++l) acc[l] *= base[l];
        m >>= 1;
        if (m > 0)
          for (int64_t l = 0; l < nl; ++l) base[l] *= base[l];
      }
      if (n < 0) {
        for (int64_t l = 0; l < nl; ++l) o[l0 + l] = T(1) / acc[l];
      } else {
        for (int64_t l = 0; l < nl; ++l) o[l0 + l] = acc[l];
      }
    }
  }
}

// Reductions over the dims of one or two arguments (output dim 1).
struct SumTerm {
  template <class T> static T apply(T a) { return a; }
};
struct SqNorm2Term {
  template <class T> static T apply(T a) { return a * a; }
};
struct ScalprodTerm {
  template <class T> static T apply(T a, T b) { return a * b; }
};
struct SqDistTerm {
  template <class T> static T apply(T a, T b) {
    T t = a - b;
    return t * t;
  }
};

// The dim loop runs inside blocks of lanes whose partial sums stay in registers, so that large
// dims do not load and store the output once per dim. A block is 4 vector registers: enough
// independent add chains to hide the FMA latency on two pipes. Every lane still adds its terms
// in dim order: the blocking changes no result bit.
template <class T>
constexpr int64_t kDimBlockLanes = 4 * kSimdLanes<T>;

template <class T, class F, int LA>
void dimsum1_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  constexpr int64_t B = kDimBlockLanes<T>;
  const T* pa = k.a.base + row * k.a.row_step;
  const int64_t as = k.a.dim_stride;
  T* JK_RESTRICT o = k.out;
  int64_t l0 = 0;
  for (; l0 + B <= L; l0 += B) {
    const T* JK_RESTRICT x = pa + l0 * LA;
    T acc[B];
    for (int64_t l = 0; l < B; ++l) acc[l] = F::apply(x[l * LA]);
    for (int32_t d = 1; d < k.arg_dim; ++d)
      for (int64_t l = 0; l < B; ++l) acc[l] += F::apply(x[d * as + l * LA]);
    for (int64_t l = 0; l < B; ++l) o[l0 + l] = acc[l];
  }
  if (l0 == L) return;
  for (int64_t l = l0; l < L; ++l) o[l] = F::apply(pa[l * LA]);
  for (int32_t d = 1; d < k.arg_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * as;
    for (int64_t l = l0; l < L; ++l) o[l] += F::apply(x[l * LA]);
  }
}

template <class T, class F, int LA, int LB>
void dimsum2_kernel(const Bound<T>& k, int64_t row, int64_t L) {
  constexpr int64_t B = kDimBlockLanes<T>;
  const T* pa = k.a.base + row * k.a.row_step;
  const T* pb = k.b.base + row * k.b.row_step;
  const int64_t as = k.a.dim_stride, bs = k.b.dim_stride;
  T* JK_RESTRICT o = k.out;
  int64_t l0 = 0;
  for (; l0 + B <= L; l0 += B) {
    const T* JK_RESTRICT x = pa + l0 * LA;
    const T* JK_RESTRICT y = pb + l0 * LB;
    T acc[B];
    for (int64_t l = 0; l < B; ++l) acc[l] = F::apply(x[l * LA], y[l * LB]);
    for (int32_t d = 1; d < k.arg_dim; ++d)
      for (int64_t l = 0; l < B; ++l) acc[l] += F::apply(x[d * as + l * LA], y[d * bs + l * LB]);
    for (int64_t l = 0; l < B; ++l) o[l0 + l] = acc[l];
  }
  if (l0 == L) return;
  for (int64_t l = l0; l < L; ++l) o[l] = F::apply(pa[l * LA], pb[l * LB]);
  for (int32_t d = 1; d < k.arg_dim; ++d) {
    const T* JK_RESTRICT x = pa + d * as;
    const T* JK_RESTRICT y = pb + d * bs;
    for (int64_t l = l0; l < L; ++l) o[l] += F::apply(x[l * LA], y[l * LB]);
  }
}

#define JK_PICK1(KERNEL, F) (la ? &KERNEL<T, F, 1> : &KERNEL<T, F, 0>)
#define JK_PICK2(KERNEL, F)                                           \
  (la ? (lb ? &KERNEL<T, F, 1, 1> : &KERNEL<T, F, 1, 0>)              \
      : (lb ? &KERNEL<T, F, 0, 1> : &KERNEL<T, F, 0, 0>))

#define JK_PICK2T(KERNEL)                                      \
  (la ? (lb ? &KERNEL<T, 1, 1> : &KERNEL<T, 1, 0>)             \
      : (lb ? &KERNEL<T, 0, 1> : &KERNEL<T, 0, 0>))
#define JK_PICK3(KERNEL, F)                                                    \
  (lc ? (la ? (lb ? &KERNEL<T, F, 1, 1, 1> : &KERNEL<T, F, 1, 0, 1>)           \
            : (lb ? &KERNEL<T, F, 0, 1, 1> : &KERNEL<T, F, 0, 0, 1>))          \
      : (la ? (lb ? &KERNEL<T, F, 1, 1, 0> : &KERNEL<T, F, 1, 0, 0>)           \
            : (lb ? &KERNEL<T, F, 0, 1, 0> : &KERNEL<T, F, 0, 0, 0>)))

// The kernel of an instruction given its arguments' lane strides (nullptr for Var/Const, which
// the phases handle themselves).
template <class T>
KernelFn<T> select_kernel(int32_t opcode, int la, int lb, int lc) {
  switch (static_cast<Op>(opcode)) {
#define JK_CASE_UNARY(name, code, keops) \
  case Op::name:                         \
    return JK_PICK1(unary_kernel, opfn::name);
    JAXKEOPS_UNARY_ELEMENTWISE_OPS(JK_CASE_UNARY)
#undef JK_CASE_UNARY
#define JK_CASE_BINARY(name, code, keops) \
  case Op::name:                          \
    return JK_PICK2(binary_kernel, opfn::name);
    JAXKEOPS_BINARY_ELEMENTWISE_OPS(JK_CASE_BINARY)
#undef JK_CASE_BINARY
#define JK_CASE_TERNARY(name, code, keops) \
  case Op::name:                           \
    return JK_PICK3(ternary_kernel, opfn::name);
    JAXKEOPS_TERNARY_ELEMENTWISE_OPS(JK_CASE_TERNARY)
#undef JK_CASE_TERNARY
    case Op::Pow:
      return la ? pow_kernel<T, 1> : pow_kernel<T, 0>;
    case Op::Round:
      return la ? round_kernel<T, 1> : round_kernel<T, 0>;
    case Op::Min:
      return la ? select_kernel_impl<T, false, false, 1> : select_kernel_impl<T, false, false, 0>;
    case Op::Max:
      return la ? select_kernel_impl<T, true, false, 1> : select_kernel_impl<T, true, false, 0>;
    case Op::ArgMin:
      return la ? select_kernel_impl<T, false, true, 1> : select_kernel_impl<T, false, true, 0>;
    case Op::ArgMax:
      return la ? select_kernel_impl<T, true, true, 1> : select_kernel_impl<T, true, true, 0>;
    case Op::OneHot:
      return la ? one_hot_kernel<T, 1> : one_hot_kernel<T, 0>;
    case Op::Extract:
      return la ? extract_kernel<T, 1> : extract_kernel<T, 0>;
    case Op::ExtractT:
      return la ? extract_t_kernel<T, 1> : extract_t_kernel<T, 0>;
    case Op::Concat:
      return JK_PICK2T(concat_kernel);
    case Op::TensorDot:
      return JK_PICK2T(tensordot_kernel);
    case Op::Sum:
      return JK_PICK1(dimsum1_kernel, SumTerm);
    case Op::SqNorm2:
      return JK_PICK1(dimsum1_kernel, SqNorm2Term);
    case Op::Scalprod:
      return JK_PICK2(dimsum2_kernel, ScalprodTerm);
    case Op::SqDist:
      return JK_PICK2(dimsum2_kernel, SqDistTerm);
    default:
      return nullptr;
  }
}

// ---------------------------------------------------------------- memory

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <class T>
std::unique_ptr<T[], FreeDeleter> alloc_aligned(int64_t n) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(p));
}

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ---------------------------------------------------------------- plan

template <class T>
struct Step {
  int32_t instr;
  bool is_var;
  int32_t input = -1;
  int32_t dim = 0;
  T* dst = nullptr;
  Bound<T> k;
};

template <class T>
struct ResultRef {
  ArgRef<T> ref;
  int32_t dim;
  bool lane_dense;  // inner/pair register (else the same value on every lane)
};

// Row-block dot products: a pair Scalprod of an outer and an inner register of dim at least
// kBlockDotMinDim is computed per tile for all rows of the chunk at once by small_matmul
// (loaded inner values serve several rows from registers), before the rows' pair instructions,
// which read row r's values from its rows × tile block.
constexpr int32_t kBlockDotMinDim = 16;

struct BlockDot {
  int32_t outer_reg, inner_reg, dim;
  int64_t index;  // of its block in the block arena
};

// Rows per chunk when a row-block path is used: 8 blocks of small_matmul's 6 rows.
constexpr int64_t kRowBlockChunk = 48;

// Row-block weighted sums: Σ_j s_ij v_j (v an inner register of dim at least
// kBlockWeightsMinDim) summed per tile for a chunk's rows by one small_matmul, where s_ij is
//   kResults   exp(S_ij - m_i) for a LogSumExpWeight / SumSoftMaxWeight of score S, weights v;
//   kProduct   s_ij itself for a Sum whose formula is s * v (s a pair scalar), the product
//              never formed.
enum class WeightsForm { kNone, kResults, kProduct };
constexpr int32_t kBlockWeightsMinDim = 16;

template <class R>
constexpr WeightsForm weights_form() {
  if constexpr (std::is_same_v<R, SumReducer>) return WeightsForm::kProduct;
  if constexpr (HasTileWeights<R>::value) return WeightsForm::kResults;
  return WeightsForm::kNone;
}

template <class T>
class Plan {
 public:
  Plan(const Program& prog, int64_t n_outer, WeightsForm weights_form) : prog_(prog) {
    const size_t n_regs = prog.registers.size();
    offset_.assign(n_regs, 0);
    find_block_dots();
    find_block_weights(weights_form);
    // Tile width: the inner and pair registers of a tile should stay within L1 (48 KiB on
    // Zen 4/5, 32 KiB on most others), since every row of the chunk reads them again; the inner
    // operands of the row-block paths do not count (small_matmul reads each once per block of
    // rows). Row chunks are a whole number of small_matmul row blocks when it is used.
    std::vector<bool> block_operand(n_regs, false);
    for (const BlockDot& b : block_dots_) block_operand[b.inner_reg] = true;
    if (block_weights_) block_operand[weights_reg_] = true;
    if (skipped_product_ >= 0) block_operand[prog.instructions[skipped_product_].out] = true;
    int64_t bytes_per_lane = 0;
    for (size_t r = 0; r < n_regs; ++r) {
      const RegisterSpec& reg = prog.registers[r];
      if ((reg.role == kInner || reg.role == kPair) && !block_operand[r])
        bytes_per_lane += reg.dim * int64_t(sizeof(T));
    }
    tl_ = 256;
    while (tl_ > 64 && tl_ * bytes_per_lane > 32 * 1024) tl_ /= 2;
    const bool row_blocks = !block_dots_.empty() || block_weights_;
    rc_ = std::max<int64_t>(1, std::min<int64_t>(row_blocks ? kRowBlockChunk : 32, n_outer));
    lanes_[kParam] = 1;
    lanes_[kOuter] = round_up(rc_, 16);
    lanes_[kInner] = tl_;
    lanes_[kPair] = tl_;
    int64_t size[4] = {0, 0, 0, 0};
    for (size_t r = 0; r < n_regs; ++r) {
      const RegisterSpec& reg = prog.registers[r];
      offset_[r] = size[reg.role];
      size[reg.role] += round_up(int64_t(reg.dim) * lanes_[reg.role], 16);
    }
    // One workspace holds the outer, inner, pair and block arenas.
    ws_base_[kOuter] = 0;
    ws_base_[kInner] = size[kOuter];
    ws_base_[kPair] = size[kOuter] + size[kInner];
    block_base_ = size[kOuter] + size[kInner] + size[kPair];
    ws_size_ = block_base_ + int64_t(block_dots_.size()) * lanes_[kOuter] * tl_;
    param_ = alloc_aligned<T>(size[kParam]);
    for (size_t i = 0; i < prog.instructions.size(); ++i)
      if (!is_block_dot_[i] && int32_t(i) != skipped_product_)
        by_role_[prog.registers[prog.instructions[i].out].role].push_back(int32_t(i));
  }

  int64_t tile() const { return tl_; }
  int64_t row_chunk() const { return rc_; }
  int64_t outer_lanes() const { return lanes_[kOuter]; }
  int64_t workspace_size() const { return ws_size_; }
  const std::vector<BlockDot>& block_dots() const { return block_dots_; }
  bool block_weights() const { return block_weights_; }
  // The scores and weights of the block weighted sums (see WeightsForm), read as results are.
  ResultRef<T> block_scores(T* ws) const { return result_ref(score_reg_, score_block_, ws); }
  ResultRef<T> block_weights_ref(T* ws) const { return result_ref(weights_reg_, -1, ws); }
  // The inner input that the block weights are a copy of, or -1.
  int32_t block_weights_input() const { return block_weights_input_; }
  T* block_ptr(const BlockDot& b, T* ws) const {
    return ws + block_base_ + b.index * lanes_[kOuter] * tl_;
  }

  T* reg_ptr(int32_t r, T* ws) const {
    const int32_t role = prog_.registers[r].role;
    if (role == kParam) return param_.get() + offset_[r];
    return ws + ws_base_[role] + offset_[r];
  }

  // How an instruction (or the accumulator) of role `phase` reads register r, whose value is
  // block dot `block` when that is >= 0.
  ArgRef<T> arg_ref(int32_t r, int32_t phase, int32_t out_dim, T* ws, int* lane_stride,
                    int32_t block = -1) const {
    const RegisterSpec& reg = prog_.registers[r];
    ArgRef<T> a;
    if (block >= 0) {  // a row-block dot product (dim 1): row r at r * tile
      a.base = block_ptr(block_dots_[block], ws);
      a.row_step = tl_;
      *lane_stride = 1;
      return a;
    }
    a.base = reg_ptr(r, ws);
    a.dim_stride = (reg.dim == 1 && out_dim > 1) ? 0 : lanes_[reg.role];
    a.row_step = 0;
    *lane_stride = 1;
    if (reg.role == kParam || (reg.role == kOuter && phase == kPair)) *lane_stride = 0;
    if (reg.role == kOuter && phase == kPair) a.row_step = 1;
    if (reg.role == kParam) a.dim_stride = (reg.dim == 1 && out_dim > 1) ? 0 : 1;
    return a;
  }

  std::vector<Step<T>> bind(int32_t phase, T* ws) const {
    std::vector<Step<T>> steps;
    steps.reserve(by_role_[phase].size());
    for (int32_t i : by_role_[phase]) {
      const Instruction& ins = prog_.instructions[i];
      Step<T> s;
      s.instr = i;
      s.dst = reg_ptr(ins.out, ws);
      s.dim = prog_.registers[ins.out].dim;
      s.is_var = ins.opcode == static_cast<int32_t>(Op::Var);
      if (s.is_var) {
        s.input = ins.int_params[0];
      } else if (ins.opcode != static_cast<int32_t>(Op::Const)) {
        int la = 0, lb = 0, lc = 0;
        Bound<T>& k = s.k;
        k.out = s.dst;
        k.out_ds = lanes_[phase];
        k.out_dim = s.dim;
        const auto& blocks = arg_block_[i];
        k.a = arg_ref(ins.args[0], phase, s.dim, ws, &la, blocks[0]);
        k.arg_dim = prog_.registers[ins.args[0]].dim;
        if (ins.args.size() > 1) k.b = arg_ref(ins.args[1], phase, s.dim, ws, &lb, blocks[1]);
        if (ins.args.size() > 2) k.c = arg_ref(ins.args[2], phase, s.dim, ws, &lc, blocks[2]);
        if (!ins.int_params.empty()) k.ipar = ins.int_params[0];
        if (!prog_.term_tables[i].empty()) {
          k.table = prog_.term_tables[i].data();
          k.n_terms = static_cast<int64_t>(prog_.term_tables[i].size() / 3);
        }
        k.fn = select_kernel<T>(ins.opcode, la, lb, lc);
      }
      steps.push_back(s);
    }
    return steps;
  }

  // Runs the param instructions once.
  void run_params(const T* const* inputs) {
    for (const Step<T>& s : bind(kParam, nullptr)) {
      const Instruction& ins = prog_.instructions[s.instr];
      if (s.is_var) {
        for (int32_t d = 0; d < s.dim; ++d) s.dst[d] = inputs[s.input][d];
      } else if (ins.opcode == static_cast<int32_t>(Op::Const)) {
        for (int32_t d = 0; d < s.dim; ++d) s.dst[d] = static_cast<T>(ins.float_params[d]);
      } else {
        s.k.fn(s.k, 0, 1);
      }
    }
  }

  std::vector<ResultRef<T>> results(T* ws) const {
    std::vector<ResultRef<T>> out;
    for (size_t k = 0; k < prog_.results.size(); ++k)
      out.push_back(result_ref(prog_.results[k], result_block_[k], ws));
    return out;
  }

 private:
  ResultRef<T> result_ref(int32_t r, int32_t block, T* ws) const {
    ResultRef<T> rr;
    int ls = 0;
    rr.dim = prog_.registers[r].dim;
    rr.ref = arg_ref(r, kPair, rr.dim, ws, &ls, block);
    rr.ref.dim_stride = prog_.registers[r].role == kParam ? 1 : lanes_[prog_.registers[r].role];
    rr.lane_dense = ls == 1;
    return rr;
  }

  // The pair Scalprods of an outer and an inner register of large dim, and which reads see
  // their values. Registers are reused, so a read sees the latest write of its register in
  // program order (the pair instructions run in program order).
  void find_block_dots() {
    const auto& ins = prog_.instructions;
    std::vector<int32_t> current(prog_.registers.size(), -1);  // block dot held, or -1
    is_block_dot_.assign(ins.size(), false);
    arg_block_.assign(ins.size(), {-1, -1, -1});
    for (size_t i = 0; i < ins.size(); ++i) {
      for (size_t p = 0; p < ins[i].args.size() && p < 3; ++p)
        arg_block_[i][p] = current[ins[i].args[p]];
      current[ins[i].out] = -1;
      if (ins[i].opcode != static_cast<int32_t>(Op::Scalprod) ||
          prog_.registers[ins[i].out].role != kPair)
        continue;
      int32_t a = ins[i].args[0], b = ins[i].args[1];
      if (prog_.registers[a].role == kInner) std::swap(a, b);  // a · b = b · a
      const RegisterSpec &ra = prog_.registers[a], &rb = prog_.registers[b];
      if (ra.role != kOuter || rb.role != kInner || ra.dim < kBlockDotMinDim) continue;
      is_block_dot_[i] = true;
      current[ins[i].out] = int32_t(block_dots_.size());
      block_dots_.push_back({a, b, ra.dim, int64_t(block_dots_.size())});
    }
    for (int32_t r : prog_.results) result_block_.push_back(current[r]);
  }

  void find_block_weights(WeightsForm form) {
    const auto& ins = prog_.instructions;
    auto last_writer = [&](int32_t reg) {
      int32_t k = -1;
      for (int32_t i = 0; i < int32_t(ins.size()); ++i)
        if (ins[i].out == reg) k = i;
      return k;
    };
    if (form == WeightsForm::kResults) {
      score_reg_ = prog_.results[0];
      score_block_ = result_block_[0];
      weights_reg_ = prog_.results[1];
    } else if (form == WeightsForm::kProduct) {
      // result = Mult(s, v) or Mult(v, s), read by nothing else (it is then never computed)
      const int32_t product = last_writer(prog_.results[0]);
      if (product < 0 || ins[product].opcode != static_cast<int32_t>(Op::Mult)) return;
      for (const Instruction& i : ins)
        for (int32_t a : i.args)
          if (a == ins[product].out) return;
      const int p = prog_.registers[ins[product].args[0]].dim == 1 ? 0 : 1;
      score_reg_ = ins[product].args[p];
      score_block_ = arg_block_[product][p];
      weights_reg_ = ins[product].args[1 - p];
      if (prog_.registers[score_reg_].dim != 1) return;
      // The block path reads s and v after the whole pair phase, where the skipped product
      // read them: no later instruction may write them (valid programs may reuse registers).
      for (int32_t i = product + 1; i < int32_t(ins.size()); ++i)
        if (ins[i].out == score_reg_ || ins[i].out == weights_reg_) return;
      skipped_product_ = product;
    } else {
      return;
    }
    // Scores must differ along the lanes of a row (pair registers, block dots); the weights
    // must be an inner register, large enough for a matrix product to pay.
    const bool dense_scores = score_block_ >= 0 || prog_.registers[score_reg_].role == kPair;
    const RegisterSpec& w = prog_.registers[weights_reg_];
    if (!dense_scores || w.role != kInner || w.dim < kBlockWeightsMinDim) {
      skipped_product_ = -1;
      return;
    }
    block_weights_ = true;
    const int32_t writer = last_writer(weights_reg_);
    if (writer >= 0 && ins[writer].opcode == static_cast<int32_t>(Op::Var))
      block_weights_input_ = ins[writer].int_params[0];
  }

  const Program& prog_;
  int64_t tl_ = 0, rc_ = 0;
  int64_t lanes_[4];
  int64_t ws_base_[4] = {0, 0, 0, 0};
  int64_t block_base_ = 0;
  int64_t ws_size_ = 0;
  std::vector<BlockDot> block_dots_;
  std::vector<bool> is_block_dot_;
  std::vector<std::array<int32_t, 3>> arg_block_;  // per instruction and argument: block or -1
  std::vector<int32_t> result_block_;               // per result: block or -1
  bool block_weights_ = false;
  int32_t score_reg_ = -1, score_block_ = -1, weights_reg_ = -1;
  int32_t skipped_product_ = -1;  // the kProduct instruction, never run
  int32_t block_weights_input_ = -1;
  std::vector<int64_t> offset_;
  std::vector<int32_t> by_role_[4];
  std::unique_ptr<T[], FreeDeleter> param_;
};

// ---------------------------------------------------------------- work items

// The weights v of BlockWeightedSums laid out lane-major ([inner index][e], row stride `stride`,
// a multiple of kMatmulColumnMultiple): set when they are an inner input read as is (the input
// itself, or a padded copy made once per call), else null and each tile is transposed.
template <class T>
struct LaneMajorWeights {
  const T* data = nullptr;
  int64_t stride = 0;
};

// The weighted sums of a chunk's rows (see WeightsForm), one matrix product per tile: the
// reducer turns each row's scores into coefficients s (exp(S - m) for the softmax kinds, keeping
// their maximum and denominator), and Σ_lane s[row][lane] v[lane][e] is added to the rows that
// the tile changed.
template <class T, class R>
class BlockWeightedSums {
 public:
  BlockWeightedSums(const R& red, const ResultRef<T>& scores, const ResultRef<T>& weights,
                    LaneMajorWeights<T> lane_major, int64_t rows, int64_t tile)
      : red_(red), scores_(scores), weights_(weights), lane_major_(lane_major), rows_(rows),
        tile_(tile),
        e_pad_(round_up(weights.dim, kMatmulColumnMultiple<T>)),
        w_(alloc_aligned<T>(rows * tile)), sums_(alloc_aligned<T>(rows * e_pad_)),
        changed_(rows) {
    if (!lane_major_.data) v_ = alloc_aligned<T>(tile * e_pad_);
  }

  // Row r's scores for the current tile (n_valid lanes), once its pair instructions ran.
  void row(double* state, int64_t r, int64_t n_valid) {
    const T* s = scores_.ref.base + r * scores_.ref.row_step;
    changed_[r] = red_.tile_weights(state, s, n_valid, w_.get() + r * tile_);
  }

  // After the tile's rows (inner indices t0...): the sums of every row (states row-major, S
  // doubles each).
  void finish_tile(double* states, int64_t S, int64_t t0, int64_t n_valid) {
    const T* v = lane_major_.data + t0 * lane_major_.stride;
    int64_t v_stride = lane_major_.stride;
    if (!lane_major_.data) {
      const int32_t E = weights_.dim;
      for (int64_t l = 0; l < n_valid; ++l) {
        T* dst = v_.get() + l * e_pad_;
        for (int32_t e = 0; e < E; ++e) dst[e] = weights_.ref.base[e * weights_.ref.dim_stride + l];
        for (int64_t e = E; e < e_pad_; ++e) dst[e] = T(0);
      }
      v = v_.get();
      v_stride = e_pad_;
    }
    small_matmul(w_.get(), tile_, 1, v, v_stride, n_valid, sums_.get(), e_pad_, rows_, e_pad_);
    for (int64_t r = 0; r < rows_; ++r)
      if (changed_[r]) red_.add_numerators(states + r * S, sums_.get() + r * e_pad_);
  }

 private:
  const R& red_;
  ResultRef<T> scores_, weights_;
  LaneMajorWeights<T> lane_major_;
  int64_t rows_, tile_, e_pad_;
  std::unique_ptr<T[], FreeDeleter> w_, v_, sums_;
  std::vector<char> changed_;
};

// A run of inner indices [begin, end) that a chunk of rows reduces over.
struct InnerSpan {
  int64_t begin, end;
};

// Reduces rows [r0, r0 + rows) over the inner spans, in order (the whole axis, one split of
// it, or a cluster's ranges when block-sparse).
template <class T, class R>
void run_item(const Plan<T>& plan, const R& red, const T* const* inputs,
              LaneMajorWeights<T> lane_major, int64_t n_inner, int64_t r0, int64_t rows,
              const InnerSpan* spans, int64_t n_spans,
              double* states /* rows x state_size, initialised here */) {
  const int64_t S = red.state_size();
  for (int64_t r = 0; r < rows; ++r) red.init(states + r * S);
  bool any_inner = false;
  for (int64_t k = 0; k < n_spans; ++k) any_inner |= spans[k].end > spans[k].begin;
  if (!any_inner) return;

  const int64_t TL = plan.tile();
  const int64_t RC = plan.outer_lanes();
  auto ws_holder = alloc_aligned<T>(plan.workspace_size());
  T* ws = ws_holder.get();
  const std::vector<Step<T>> outer = plan.bind(kOuter, ws);
  const std::vector<Step<T>> inner = plan.bind(kInner, ws);
  const std::vector<Step<T>> pair = plan.bind(kPair, ws);
  const std::vector<ResultRef<T>> results = plan.results(ws);

  bool all_dense = true, all_bcast = true;
  for (const auto& rr : results) (rr.lane_dense ? all_bcast : all_dense) = false;
  // Mixed results: broadcast the non-dense ones into scratch tiles.
  std::vector<std::unique_ptr<T[], FreeDeleter>> scratch(results.size());
  if (!all_dense && !all_bcast)
    for (size_t k = 0; k < results.size(); ++k)
      if (!results[k].lane_dense) scratch[k] = alloc_aligned<T>(int64_t(results[k].dim) * TL);
  std::vector<ResultView<T>> views(results.size());

  std::unique_ptr<BlockWeightedSums<T, R>> weighted_sums;
  if constexpr (HasTileWeights<R>::value)
    if (plan.block_weights())
      weighted_sums = std::make_unique<BlockWeightedSums<T, R>>(
          red, plan.block_scores(ws), plan.block_weights_ref(ws), lane_major, rows, TL);

  // Outer instructions for the chunk (lanes = rows).
  for (const Step<T>& s : outer) {
    if (s.is_var) {
      const T* src = inputs[s.input] + r0 * s.dim;
      for (int64_t r = 0; r < rows; ++r)
        for (int32_t d = 0; d < s.dim; ++d) s.dst[d * RC + r] = src[r * s.dim + d];
    } else {
      s.k.fn(s.k, 0, rows);
    }
  }

  for (int64_t k = 0; k < n_spans; ++k)
  for (int64_t t0 = spans[k].begin, j1 = spans[k].end; t0 < j1; t0 += TL) {
    const int64_t nv = std::min(TL, j1 - t0);
    const int64_t L = std::min(TL, round_up(nv, 16));
    for (const Step<T>& s : inner) {
      if (s.is_var) {
        // Inner inputs come dim-major (see dim_major_inner_inputs): one contiguous copy per dim.
        const int32_t D = s.dim;
        for (int32_t d = 0; d < D; ++d)
          std::copy_n(inputs[s.input] + d * n_inner + t0, nv, s.dst + d * TL);
        for (int32_t d = 0; d < D; ++d)
          for (int64_t l = nv; l < L; ++l) s.dst[d * TL + l] = T(0);
      } else {
        s.k.fn(s.k, 0, L);
      }
    }
    for (const BlockDot& b : plan.block_dots())
      small_matmul(plan.reg_ptr(b.outer_reg, ws), 1, RC, plan.reg_ptr(b.inner_reg, ws), TL, b.dim,
                   plan.block_ptr(b, ws), TL, rows, L);
    for (int64_t r = 0; r < rows; ++r) {
      for (const Step<T>& s : pair) s.k.fn(s.k, r, L);
      if constexpr (HasTileWeights<R>::value) {
        if (weighted_sums) {
          weighted_sums->row(states + r * S, r, nv);
          continue;
        }
      }
      for (size_t k = 0; k < results.size(); ++k) {
        const ResultRef<T>& rr = results[k];
        views[k].ptr = rr.ref.base + r * rr.ref.row_step;
        views[k].dim_stride = rr.ref.dim_stride;
        if (scratch[k]) {
          T* sc = scratch[k].get();
          for (int32_t d = 0; d < rr.dim; ++d)
            for (int64_t l = 0; l < nv; ++l) sc[d * TL + l] = views[k].ptr[d * rr.ref.dim_stride];
          views[k].ptr = sc;
          views[k].dim_stride = TL;
        }
      }
      if (all_bcast)
        red.template accumulate<0, T>(states + r * S, views.data(), nv, t0);
      else
        red.template accumulate<1, T>(states + r * S, views.data(), nv, t0);
    }
    if constexpr (HasTileWeights<R>::value)
      if (weighted_sums) weighted_sums->finish_tile(states, S, t0, nv);
  }
}

// Writes one finalized row (the outputs concatenated, in double) into the output buffers.
class OutputWriter {
 public:
  OutputWriter(const OutputBuffer* outs, const std::vector<OutputInfo>& infos)
      : outs_(outs) {
    for (const OutputInfo& o : infos) {
      widths_.push_back(o.width());
      width_ += widths_.back();
    }
  }
  int64_t width() const { return width_; }

  void write(const double* row_values, int64_t row) const {
    const double* src = row_values;
    for (size_t k = 0; k < widths_.size(); ++k) {
      const int64_t w = widths_[k];
      const int64_t at = row * w;
      switch (outs_[k].type) {
        case ElementType::kF32: copy(src, static_cast<float*>(outs_[k].data) + at, w); break;
        case ElementType::kF64: copy(src, static_cast<double*>(outs_[k].data) + at, w); break;
        case ElementType::kS32: copy(src, static_cast<int32_t*>(outs_[k].data) + at, w); break;
        case ElementType::kS64: copy(src, static_cast<int64_t*>(outs_[k].data) + at, w); break;
      }
      src += w;
    }
  }

 private:
  template <class U>
  static void copy(const double* src, U* dst, int64_t n) {
    for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<U>(src[d]);
  }
  const OutputBuffer* outs_;
  std::vector<int64_t> widths_;
  int64_t width_ = 0;
};

// The inner inputs of dim > 1, transposed once per call to [dim][n_inner]: every tile of every
// row chunk then loads them with contiguous copies instead of a strided transposition.
template <class T>
class DimMajorInputs {
 public:
  DimMajorInputs(const std::vector<InputSpec>& specs, const T* const* inputs, int64_t n_inner)
      : ptrs_(inputs, inputs + specs.size()) {
    for (size_t i = 0; i < specs.size(); ++i) {
      const int64_t D = specs[i].dim;
      if (specs[i].role != kInner || D == 1) continue;
      auto copy = alloc_aligned<T>(D * n_inner);
      constexpr int64_t kBlock = 64;  // rows per block: reads and writes stay in cache
      for (int64_t j0 = 0; j0 < n_inner; j0 += kBlock) {
        const int64_t j1 = std::min(n_inner, j0 + kBlock);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t j = j0; j < j1; ++j) copy[d * n_inner + j] = inputs[i][j * D + d];
      }
      ptrs_[i] = copy.get();
      owned_.push_back(std::move(copy));
    }
  }
  const T* const* pointers() const { return ptrs_.data(); }

 private:
  std::vector<const T*> ptrs_;
  std::vector<std::unique_ptr<T[], FreeDeleter>> owned_;
};

// The lane-major weights of the block path when they are an inner input: the input itself when
// its rows are a whole number of SIMD vectors, else a padded copy (held by *copy).
template <class T>
LaneMajorWeights<T> lane_major_weights(const Plan<T>& plan, const Program& prog,
                                       const T* const* inputs, int64_t n_inner,
                                       std::unique_ptr<T[], FreeDeleter>* copy) {
  const int32_t k = plan.block_weights_input();
  if (k < 0) return {};
  const int64_t E = prog.inputs[k].dim;
  const int64_t E_pad = round_up(E, kMatmulColumnMultiple<T>);
  if (E == E_pad) return {inputs[k], E};
  *copy = alloc_aligned<T>(n_inner * E_pad);
  for (int64_t j = 0; j < n_inner; ++j) {
    std::copy_n(inputs[k] + j * E, E, copy->get() + j * E_pad);
    std::fill(copy->get() + j * E_pad + E, copy->get() + (j + 1) * E_pad, T(0));
  }
  return {copy->get(), E_pad};
}

// Block-sparse: one work item per chunk of a cluster's rows, reducing over that cluster's inner
// ranges only; rows outside every cluster get the empty value.
template <class T, class R>
bool run_block_sparse(const Plan<T>& plan, const R& red, const T* const* inputs,
                      LaneMajorWeights<T> lane_major, int64_t n_outer, int64_t n_inner,
                      const BlockRanges& ranges, const OutputWriter& writer, std::string* error) {
  struct Chunk {
    int64_t r0, rows, cluster;
  };
  const int64_t RC = plan.row_chunk();
  const int64_t S = red.state_size();
  const int64_t W = writer.width();
  std::vector<Chunk> chunks;
  std::vector<char> covered(n_outer, 0);
  for (int64_t c = 0; c < ranges.n_clusters; ++c) {
    const int64_t a = ranges.clusters[2 * c], b = ranges.clusters[2 * c + 1];
    for (int64_t r = a; r < b; ++r) {
      if (covered[r]) {
        *error = "ranges: outer clusters overlap at row " + std::to_string(r) +
                 " (cluster " + std::to_string(c) + "); clusters must be disjoint";
        return false;
      }
      covered[r] = 1;
    }
    for (int64_t r0 = a; r0 < b; r0 += RC) chunks.push_back({r0, std::min(RC, b - r0), c});
  }
  {
    std::vector<double> st(S), row(W);
    red.init(st.data());
    red.finalize(st.data(), row.data());
    for (int64_t r = 0; r < n_outer; ++r)
      if (!covered[r]) writer.write(row.data(), r);
  }
  const bool ok = parallel_for(int64_t(chunks.size()), [&](int64_t k) {
    const Chunk& chunk = chunks[k];
    // Adjacent ranges (neighbouring clusters of the other axis) merge into one span: fewer,
    // fuller tiles.
    std::vector<InnerSpan> spans;
    for (int64_t t = ranges.first_range(chunk.cluster); t < ranges.slice_ends[chunk.cluster]; ++t) {
      const InnerSpan s{ranges.inner_ranges[2 * t], ranges.inner_ranges[2 * t + 1]};
      if (s.end <= s.begin) continue;
      if (!spans.empty() && spans.back().end == s.begin) spans.back().end = s.end;
      else spans.push_back(s);
    }
    std::vector<double> st(chunk.rows * S), row(W);
    run_item<T, R>(plan, red, inputs, lane_major, n_inner, chunk.r0, chunk.rows, spans.data(),
                   int64_t(spans.size()), st.data());
    for (int64_t r = 0; r < chunk.rows; ++r) {
      red.finalize(st.data() + r * S, row.data());
      writer.write(row.data(), chunk.r0 + r);
    }
  });
  if (!ok) *error = "jaxkeops CPU executor: internal failure (out of memory?)";
  return ok;
}

template <class T, class R>
bool run(const Program& prog, const T* const* inputs, int64_t n_outer, int64_t n_inner,
         const OutputBuffer* outs, std::string* error, const BlockRanges* ranges) {
  const R red(prog.reduction_params, prog.result_dims);
  const int64_t S = red.state_size();
  const std::vector<OutputInfo> infos = red.outputs();
  const OutputWriter writer(outs, infos);
  const int64_t W = writer.width();
  if (n_outer <= 0) return true;
  if (n_inner <= 0) {
    std::vector<double> st(S), row(W);
    red.init(st.data());
    red.finalize(st.data(), row.data());
    for (int64_t r = 0; r < n_outer; ++r) writer.write(row.data(), r);
    return true;  // (with ranges too: no inner index, nothing interacts)
  }

  Plan<T> plan(prog, n_outer, weights_form<R>());
  plan.run_params(inputs);
  const int64_t RC = plan.row_chunk();
  const int64_t TL = plan.tile();
  const int64_t n_chunks = (n_outer + RC - 1) / RC;
  const int64_t nt = num_threads();

  // Split the inner axis when there are too few row chunks to feed every thread; the partial
  // states of a row are combined in inner order afterwards.
  int64_t n_splits = 1;
  if (n_chunks < 4 * nt) {
    const int64_t want = (4 * nt + n_chunks - 1) / n_chunks;
    const int64_t by_size = std::max<int64_t>(1, n_inner / (4 * TL));
    n_splits = std::min(want, by_size);
  }
  int64_t range = round_up((n_inner + n_splits - 1) / n_splits, TL);
  n_splits = (n_inner + range - 1) / range;

  std::unique_ptr<T[], FreeDeleter> padded_weights;
  const LaneMajorWeights<T> lane_major =
      lane_major_weights(plan, prog, inputs, n_inner, &padded_weights);
  DimMajorInputs<T> dim_major(prog.inputs, inputs, n_inner);
  inputs = dim_major.pointers();
  bool ok;
  if (ranges) {
    ok = run_block_sparse<T, R>(plan, red, inputs, lane_major, n_outer, n_inner, *ranges, writer,
                                error);
    if (!ok) return false;
  } else if (n_splits == 1) {
    ok = parallel_for(n_chunks, [&](int64_t c) {
      const int64_t r0 = c * RC;
      const int64_t rows = std::min(RC, n_outer - r0);
      std::vector<double> st(rows * S), row(W);
      const InnerSpan all{0, n_inner};
      run_item<T, R>(plan, red, inputs, lane_major, n_inner, r0, rows, &all, 1, st.data());
      for (int64_t r = 0; r < rows; ++r) {
        red.finalize(st.data() + r * S, row.data());
        writer.write(row.data(), r0 + r);
      }
    });
  } else {
    std::vector<double> partial(n_chunks * n_splits * RC * S);
    ok = parallel_for(n_chunks * n_splits, [&](int64_t item) {
      const int64_t c = item / n_splits, s = item % n_splits;
      const int64_t r0 = c * RC;
      const int64_t rows = std::min(RC, n_outer - r0);
      const InnerSpan part{s * range, std::min(n_inner, (s + 1) * range)};
      run_item<T, R>(plan, red, inputs, lane_major, n_inner, r0, rows, &part, 1,
                     partial.data() + item * RC * S);
    });
    if (ok) {
      std::vector<double> row(W);
      for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t r0 = c * RC;
        const int64_t rows = std::min(RC, n_outer - r0);
        for (int64_t r = 0; r < rows; ++r) {
          double* acc = partial.data() + (c * n_splits) * RC * S + r * S;
          for (int64_t s = 1; s < n_splits; ++s)
            red.combine(acc, partial.data() + (c * n_splits + s) * RC * S + r * S);
          red.finalize(acc, row.data());
          writer.write(row.data(), r0 + r);
        }
      }
    }
  }
  if (!ok) *error = "jaxkeops CPU executor: internal failure (out of memory?)";
  return ok;
}

}  // namespace

template <class T>
bool execute(const Program& prog, const T* const* inputs, int64_t n_outer, int64_t n_inner,
             const OutputBuffer* outs, std::string* error, const BlockRanges* ranges) {
  bool ok = false;
  try {
    bool known = dispatch_reduction(prog.reduction, [&](auto tag) {
      using R = typename decltype(tag)::type;
      ok = run<T, R>(prog, inputs, n_outer, n_inner, outs, error, ranges);
    });
    if (!known) *error = "jaxkeops CPU executor: unknown reduction";
  } catch (const std::exception& e) {
    *error = std::string("jaxkeops CPU executor: ") + e.what();
    ok = false;
  }
  return ok;
}

template bool execute<float>(const Program&, const float* const*, int64_t, int64_t,
                             const OutputBuffer*, std::string*, const BlockRanges*);
template bool execute<double>(const Program&, const double* const*, int64_t, int64_t,
                              const OutputBuffer*, std::string*, const BlockRanges*);

}  // namespace jaxkeops::cpu
