// A small matrix product C = A · B for the row-block paths of the CPU executor.
//
// The pair-by-pair interpreter evaluates a formula one outer row at a time, so a dot product
// q_i · k_j of large dim loads every k_j value once per row. BLAS-like register blocking
// reuses each loaded value for several rows instead: a block of kRows rows × kVecs vectors of
// columns stays in registers while the shared dimension is walked. The executor uses it for the
// two matrix-product-shaped parts of dot-product formulas (attention and the like):
//   scores   S[row][lane] = Σ_d q[d][row] k[d][lane]   (a Scalprod of an outer and an inner
//                                                       register, for all rows of a chunk)
//   weights  N[row][e]    = Σ_lane w[row][lane] v[lane][e]  (softmax numerators of a tile)
// Each output element is one sum in the shared dimension's order, in T.
#pragma once

#include <cstdint>
#include <cstring>

namespace jaxkeops::cpu {

#if defined(__AVX512F__)
inline constexpr int kSimdBytes = 64;
#elif defined(__AVX__)
inline constexpr int kSimdBytes = 32;
#else
inline constexpr int kSimdBytes = 16;
#endif

// GCC/Clang vector extensions: one SIMD register of T, whatever the instruction set.
template <class T>
struct SimdOf;
template <>
struct SimdOf<float> {
  typedef float type __attribute__((vector_size(kSimdBytes)));
};
template <>
struct SimdOf<double> {
  typedef double type __attribute__((vector_size(kSimdBytes)));
};
template <class T>
using Simd = typename SimdOf<T>::type;
template <class T>
inline constexpr int64_t kSimdLanes = kSimdBytes / int64_t(sizeof(T));

// Column counts passed to small_matmul must be multiples of this.
template <class T>
inline constexpr int64_t kMatmulColumnMultiple = kSimdLanes<T>;

namespace detail {

template <class T>
inline Simd<T> simd_load(const T* p) {
  Simd<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A (rows × K) is read as a[r * a_row + k * a_k], B (K × cols) as b[k * b_k + c] with cols =
// NV vectors, C (rows × cols) written as c[r * c_row + col].
template <class T, int NR, int NV>
void matmul_block(const T* a, int64_t a_row, int64_t a_k, const T* b, int64_t b_k, int64_t K,
                  T* c, int64_t c_row) {
  constexpr int64_t W = kSimdLanes<T>;
  Simd<T> acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Simd<T>{} + T(0);
  for (int64_t k = 0; k < K; ++k) {
    Simd<T> bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = simd_load(b + k * b_k + v * W);
    for (int r = 0; r < NR; ++r) {
      const Simd<T> ar = Simd<T>{} + a[r * a_row + k * a_k];
      for (int v = 0; v < NV; ++v) acc[r][v] += ar * bv[v];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(c + r * c_row + v * W, &acc[r][v], sizeof acc[r][v]);
}

// 6 rows × 4 vectors: 24 accumulators, 4 column loads and 6 broadcasts per step of K, within
// the 32 vector registers of AVX-512 (with AVX2's 16 the compiler spills a few accumulators).
inline constexpr int kBlockRows = 6;
inline constexpr int kBlockVecs = 4;

template <class T>
using MatmulBlockFn = void (*)(const T*, int64_t, int64_t, const T*, int64_t, int64_t, T*,
                               int64_t);

template <class T, int NR>
constexpr MatmulBlockFn<T> block_for_vecs(int nv) {
  return nv == 1 ? &matmul_block<T, NR, 1>
       : nv == 2 ? &matmul_block<T, NR, 2>
       : nv == 3 ? &matmul_block<T, NR, 3>
                 : &matmul_block<T, NR, 4>;
}

template <class T>
MatmulBlockFn<T> block_for(int nr, int nv) {
  switch (nr) {
    case 1: return block_for_vecs<T, 1>(nv);
    case 2: return block_for_vecs<T, 2>(nv);
    case 3: return block_for_vecs<T, 3>(nv);
    case 4: return block_for_vecs<T, 4>(nv);
    case 5: return block_for_vecs<T, 5>(nv);
    default: return block_for_vecs<T, 6>(nv);
  }
}

}  // namespace detail

// C[r][col] = Σ_{k < K} A[r][k] B[k][col] for r < rows, col < cols (cols a multiple of
// kMatmulColumnMultiple<T>); layouts as in detail::matmul_block. K = 0 gives zeros.
template <class T>
void small_matmul(const T* a, int64_t a_row, int64_t a_k, const T* b, int64_t b_k, int64_t K,
                  T* c, int64_t c_row, int64_t rows, int64_t cols) {
  constexpr int64_t W = kSimdLanes<T>;
  // Column strips outermost: a strip of B (K × 4 vectors) stays in L1 for every row block.
  for (int64_t c0 = 0; c0 < cols; c0 += detail::kBlockVecs * W) {
    const int64_t left = (cols - c0) / W;
    const int nv = int(left < detail::kBlockVecs ? left : detail::kBlockVecs);
    for (int64_t r0 = 0; r0 < rows; r0 += detail::kBlockRows) {
      const int nr = int(rows - r0 < detail::kBlockRows ? rows - r0 : detail::kBlockRows);
      detail::block_for<T>(nr, nv)(a + r0 * a_row, a_row, a_k, b + c0, b_k, K,
                                   c + r0 * c_row + c0, c_row);
    }
  }
}

}  // namespace jaxkeops::cpu
