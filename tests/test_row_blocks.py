"""The CPU executor's row-block paths (src/cpu/small_matmul.h), against dense float64 numpy.

Dot products q_i · k_j of dim >= 16 are computed for blocks of rows by a small matrix product,
and so are the weighted sums Σ_j s_ij v_j with v an inner register of dim >= 16: the numerators
of a LogSumExpWeight / SumSoftMaxWeight, and a Sum of s * v (K @ v with many columns). These
tests cover the paths and their boundaries (dims 15/16/17, weights that are an input as is, a
padded copy of one, or a computed register), ragged sizes (rows not a multiple of the 6-row
blocks or 48-row chunks, tiles not full), the split inner axis, masks, huge scores, batch dims,
vmap and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close

from jaxkeops import LazyTensor, Vi, Vj

# (M, N): single pair, one row over a long axis, ragged blocks/chunks/tiles, and few row chunks
# over a long axis (the executor splits the inner axis and combines in order).
SIZES = [(1, 1), (1, 700), (203, 517), (97, 3001)]
# (D, E): both paths, only the weights path (D < 16), only the dot path (E < 16), the smallest
# dims taking each path, dims that are not a whole number of SIMD vectors.
DIMS = [(64, 64), (15, 40), (64, 8), (16, 16), (100, 17)]


def attention_data(rng, M, N, D, E, dtype, scale=1.0):
    q = (rng.normal(size=(M, D)) * scale * D**-0.25).astype(dtype)
    k = (rng.normal(size=(N, D)) * D**-0.25).astype(dtype)
    v = rng.normal(size=(N, E)).astype(dtype)
    return q, k, v


def softmax_dense(scores, v):
    """Σ_j softmax_j(scores_ij) v_j and log Σ_j exp(scores_ij) v_j in float64."""
    scores = np.asarray(scores, np.float64)
    m = scores.max(1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(scores - m)
    num = w @ np.asarray(v, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / w.sum(1, keepdims=True), m + np.log(num)


def row_scale(v, rows):
    """The magnitude a softmax average of v's rows is rounded against."""
    return np.broadcast_to(np.abs(np.asarray(v, np.float64)).max(), (rows, v.shape[1]))


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("D,E", DIMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_matches_dense(rng, M, N, D, E, dtype):
    q, k, v = attention_data(rng, M, N, D, E, dtype)
    out = (Vi(q) | Vj(k)).sumsoftmaxweight(Vj(v), axis=1)
    assert out.shape == (M, E) and out.dtype == dtype
    ref, _ = softmax_dense(q.astype(np.float64) @ k.T.astype(np.float64), v)
    assert_close(out, ref, dtype, rtol32=2e-5, scale=row_scale(v, M))


@pytest.mark.parametrize("D,E", [(64, 64), (16, 20)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduction_over_i(rng, D, E, dtype):
    """axis=0: the j-indexed variables are the outer ones."""
    M, N = 311, 59
    q, k, v = attention_data(rng, N, M, D, E, dtype)  # q indexed by j, k and v by i
    out = (Vi(k) | Vj(q)).sumsoftmaxweight(Vi(v), axis=0)
    ref, _ = softmax_dense(q.astype(np.float64) @ k.T.astype(np.float64), v)
    assert_close(out, ref, dtype, rtol32=2e-5, scale=row_scale(v, N))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_with_vector_weight(rng, dtype):
    M, N, D, E = 130, 1000, 32, 24
    q, k, _ = attention_data(rng, M, N, D, E, dtype)
    v = rng.uniform(0.5, 2.0, size=(N, E)).astype(dtype)  # positive: the log is defined
    out = (Vi(q) | Vj(k)).logsumexp(axis=1, weight=Vj(v))
    _, ref = softmax_dense(q.astype(np.float64) @ k.T.astype(np.float64), v)
    assert_close(out, ref, dtype, rtol32=1e-5, scale=np.abs(ref) + 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_computed_scores_weights_and_masks(rng, dtype):
    """The block dot read by further pair instructions, masked pairs (-inf scores, some rows
    fully masked within a tile), and weights computed per tile (not an input as is)."""
    M, N, D, E = 101, 777, 48, 33
    q, k, v = attention_data(rng, M, N, D, E, dtype)
    g = rng.normal(size=(N, 1)).astype(dtype)
    g[rng.random(N) < 0.3] = -np.inf
    g[:300] = -np.inf  # the first tiles of every row are fully masked
    S = (Vi(q) | Vj(k)) * 0.5 + Vj(g)
    W = (Vj(v) * 0.5).exp() - 1.0
    out = S.sumsoftmaxweight(W, axis=1)
    scores = 0.5 * (q.astype(np.float64) @ k.T.astype(np.float64)) + g[:, 0].astype(np.float64)
    w = np.exp(0.5 * v.astype(np.float64)) - 1.0
    ref, _ = softmax_dense(scores, w)
    assert_close(out, ref, dtype, rtol32=2e-5, scale=row_scale(w, M))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_scores(rng, dtype):
    """Scores of magnitude ~1e3 whose maximum moves from tile to tile."""
    M, N, D, E = 60, 2000, 64, 16
    q, k, v = attention_data(rng, M, N, D, E, dtype, scale=300.0)
    out = (Vi(q) | Vj(k)).sumsoftmaxweight(Vj(v), axis=1)
    scores = q.astype(np.float64) @ k.T.astype(np.float64)
    ref, _ = softmax_dense(scores, v)
    # a score's rounding error (~eps · |q||k|) moves its weight by that much, relatively
    tol = 2e-4 if dtype == np.float32 else 1e-9
    assert_close(out, ref, dtype, rtol32=tol, rtol64=tol, scale=row_scale(v, M))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_dot_as_the_result_of_other_reductions(rng, dtype):
    """Maximum inner product search: the block dot read directly as the reduced values."""
    M, N, D, K = 71, 1500, 32, 5
    q, k, _ = attention_data(rng, M, N, D, 1, dtype)
    scores = q.astype(np.float64) @ k.T.astype(np.float64)
    S = Vi(q) | Vj(k)
    value, index = S.max_argmax(axis=1)
    # float32 rounding may swap near-ties: compare the scores of the chosen indices
    chosen = np.take_along_axis(scores, np.asarray(index), axis=1)
    assert_close(chosen, scores.max(1, keepdims=True), dtype, rtol32=1e-5)
    assert_close(value, scores.max(1, keepdims=True), dtype, rtol32=1e-5)
    top = (-S).Kmin(K, axis=1)
    assert_close(-np.asarray(top), -np.sort(-scores, axis=1)[:, :K], dtype, rtol32=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_dot_inside_a_sum(rng, dtype):
    """The dot path under a plain Sum (exp(q · k) b), where the weights path does not apply."""
    M, N, D = 157, 1203, 40
    q, k, b = attention_data(rng, M, N, D, 3, dtype, scale=0.5)
    out = ((Vi(q) | Vj(k)).exp() * Vj(b)).sum(axis=1)
    ref = np.exp(q.astype(np.float64) @ k.T.astype(np.float64)) @ b.astype(np.float64)
    terms = np.exp(q.astype(np.float64) @ k.T.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert_close(out, ref, dtype, rtol32=1e-5, scale=terms)


def test_batch_dims_and_vmap(rng):
    B, M, N, D, E = 3, 70, 150, 32, 16
    q = rng.normal(size=(B, M, 1, D)) * D**-0.25
    k = rng.normal(size=(B, 1, N, D)) * D**-0.25
    v = rng.normal(size=(1, 1, N, E))  # broadcast along the batch
    out = (LazyTensor(q) | LazyTensor(k)).sumsoftmaxweight(LazyTensor(v), axis=2)
    assert out.shape == (B, M, E)
    for b in range(B):
        ref, _ = softmax_dense(q[b, :, 0] @ k[b, 0].T, v[0, 0])
        assert_close(out[b], ref, np.float64, scale=row_scale(v[0, 0], M))

    def attend(q, k, v):
        return (Vi(q) | Vj(k)).sumsoftmaxweight(Vj(v), axis=1)

    out = jax.vmap(attend, (0, 0, None))(q[:, :, 0], k[:, 0], v[0, 0])
    for b in range(B):
        ref, _ = softmax_dense(q[b, :, 0] @ k[b, 0].T, v[0, 0])
        assert_close(out[b], ref, np.float64, scale=row_scale(v[0, 0], M))


def test_gradients_match_dense(rng):
    """Gradients of attention in q, k and v (their formulas use the block paths too)."""
    M, N, D, E = 53, 171, 24, 20
    q, k, v = attention_data(rng, M, N, D, E, np.float64)
    cot = rng.normal(size=(M, E))

    def keops(q, k, v):
        return jnp.sum((Vi(q) | Vj(k)).sumsoftmaxweight(Vj(v), axis=1) * cot)

    def dense(q, k, v):
        return jnp.sum(jax.nn.softmax(q @ k.T, axis=1) @ v * cot)

    got = jax.grad(keops, argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(dense, argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11 * np.abs(w).max())


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("E", [16, 20, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_scalar_times_vector(rng, M, N, E, dtype):
    """K @ v with E columns: a Sum of s_ij * v_j, with s a generic formula (Gaussian, D = 3) or a
    block dot (D = 32), on either side of the product."""
    x, y, v = (rng.normal(size=(n, d)).astype(dtype) for n, d in ((M, 3), (N, 3), (N, E)))
    x64, y64, v64 = (a.astype(np.float64) for a in (x, y, v))
    K = np.exp(-((x64[:, None, :] - y64[None, :, :]) ** 2).sum(-1))
    gauss = (-Vi(x).sqdist(Vj(y))).exp()
    assert_close((gauss * Vj(v)).sum(axis=1), K @ v64, dtype, rtol32=1e-5, scale=K @ np.abs(v64))
    assert_close(gauss @ v, K @ v64, dtype, rtol32=1e-5, scale=K @ np.abs(v64))

    q, k, _ = attention_data(rng, M, N, 32, E, dtype, scale=0.5)
    K = np.exp(q.astype(np.float64) @ k.T.astype(np.float64))
    out = (Vj(v) * (Vi(q) | Vj(k)).exp()).sum(axis=1)
    assert_close(out, K @ v64, dtype, rtol32=1e-5, scale=K @ np.abs(v64))
    K = q.astype(np.float64) @ k.T.astype(np.float64)  # the block dot itself as the scalar
    out = ((Vi(q) | Vj(k)) * Vj(v)).sum(axis=1)
    assert_close(out, K @ v64, dtype, rtol32=1e-5, scale=np.abs(K) @ np.abs(v64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_product_with_computed_or_shared_factors(rng, dtype):
    """Weights computed per tile (transposed into the matrix product), and a product that
    another instruction also reads (it is then formed as usual)."""
    M, N, E = 133, 901, 18
    x, y = (rng.normal(size=(n, 2)).astype(dtype) for n in (M, N))
    v = rng.normal(size=(N, E)).astype(dtype)
    x64, y64, v64 = (a.astype(np.float64) for a in (x, y, v))
    K = 1.0 / (1.0 + ((x64[:, None, :] - y64[None, :, :]) ** 2).sum(-1))
    s = 1.0 / (1.0 + Vi(x).sqdist(Vj(y)))
    w = (Vj(v) * 0.5).sin()
    ref = K @ np.sin(0.5 * v64)
    assert_close((s * w).sum(axis=1), ref, dtype, rtol32=1e-5, scale=K @ np.abs(v64))
    P = s * Vj(v)
    out = (P + P.cos()).sum(axis=1)
    ref = (K[:, :, None] * v64[None] + np.cos(K[:, :, None] * v64[None])).sum(1)
    assert_close(out, ref, dtype, rtol32=1e-5, scale=np.abs(ref) + N)


def test_float32_sums_over_a_long_axis(rng):
    """The row-block sums add each tile in float32 and the tiles in float64: 2·10^5 positive
    terms per output stay within 1e-5 relative."""
    M, N, E = 5, 200_000, 16
    x, y = (rng.uniform(size=(n, 1)).astype(np.float32) for n in (M, N))
    v = rng.uniform(0.5, 1.5, size=(N, E)).astype(np.float32)
    out = ((-Vi(x).sqdist(Vj(y))).exp() * Vj(v)).sum(axis=1)
    K = np.exp(-(x.astype(np.float64) - y.astype(np.float64).T) ** 2)
    ref = K @ v.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
