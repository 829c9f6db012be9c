"""Every reduction of the table (logsumexp, min/max and arg versions, K-min, softmax weights)
against the dense float64 oracle: scalar and vector formulas, both axes, both dtypes, sizes that
are not multiples of the tiles, ties, masked (-inf) pairs, huge scores, empty reduced axes and
the trace-time errors. (Sum has its own file, test_sum.py.)"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close

import jaxkeops.reference as reference
from jaxkeops.reductions import REDUCTIONS
from jaxkeops import LazyTensor, Pm, Vi, Vj
from jaxkeops.primitive import keops_reduce

# (M, N): single pairs, tiny, ragged tiles and row chunks, and few rows over a long axis (the
# executor splits the reduced axis and combines partial results in inner order).
SIZES = [(1, 1), (7, 13), (203, 517), (3, 6001)]
INDEX = np.int64  # the tests run with jax_enable_x64 (conftest): indices are int64


def grid(rng, M, N, D, dtype):
    x = rng.normal(size=(M, D)).astype(dtype)
    y = rng.normal(size=(N, D)).astype(dtype)
    return Vi(x), Vj(y)


def formulas(x_i, y_j):
    """A scalar formula and a vector one (dim D) with values of both signs."""
    S = x_i.sqdist(y_j) - (x_i | y_j)
    V = (x_i - y_j) * (x_i + 0.5)
    return S, V


class Oracle:
    """The dense float64 oracle (the reduction table's jnp references on the materialised grid,
    as tests/oracle.py), computing the grid of each formula once. `carrier` holds the
    variables of every formula asked about."""

    def __init__(self, carrier, axis):
        self.cats = tuple(v.cat for v in carrier.variables)
        self.operands = [jnp.asarray(v.array, jnp.float64) for v in carrier.variables]
        self.axis = axis
        self.sizes = (carrier.ni, carrier.nj) if axis == 1 else (carrier.nj, carrier.ni)
        self.grids = {}

    def grid(self, formula):
        if formula not in self.grids:
            self.grids[formula] = _jit_grid(formula, self.cats, self.axis, self.sizes,
                                            *self.operands)
        return self.grids[formula]

    def __call__(self, reduction, *formulas, params=()):
        values = tuple(self.grid(f) for f in formulas)
        return tuple(np.asarray(o) for o in _jit_dense(reduction, params, *values))


# Jitted: one compilation per oracle call instead of one per jnp op (test time).
@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _jit_grid(formula, cats, axis, sizes, *operands):
    return reference.grid_values((formula,), cats, operands, axis, *sizes)[0]


@partial(jax.jit, static_argnums=(0, 1))
def _jit_dense(reduction, params, *values):
    return REDUCTIONS[reduction].dense(values, params)


def check_indices(index, grid, best, dtype):
    """Indices are valid and select values equal to the oracle's best (float32 may swap
    near-ties, so indices are checked through the values they select). index: (n, D) or
    (n, K[, D]) as the reductions give them."""
    g = np.asarray(grid)
    index = np.asarray(index)
    assert index.dtype == INDEX
    assert (index >= 0).all() and (index < g.shape[1]).all()
    idx3 = index.reshape(index.shape[0], -1, g.shape[2])
    picked = np.take_along_axis(g, idx3, axis=1).reshape(np.shape(best))
    assert (np.diff(np.sort(idx3, axis=1), axis=1) > 0).all()  # distinct within a row
    special = ~np.isfinite(best)
    np.testing.assert_array_equal(picked[special], best[special])
    assert_close(picked[~special], best[~special], dtype, rtol32=1e-5, rtol64=1e-12)


def scores_and_weight(S, weight):
    """The oracle's view of a weighted reduction: one LazyTensor holding the variables of both,
    and the two formulas."""
    weight_formula, variables, ni, nj = S._merge(weight)
    return LazyTensor._make(S.formula, variables, ni, nj), (S.formula, weight_formula)


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_min_max_and_arg_versions(rng, M, N, dtype, axis):
    x_i, y_j = grid(rng, M, N, 3 if M % 2 else 7, dtype)
    for F in formulas(x_i, y_j):
        oracle = Oracle(F, axis)
        n_outer, dim = (M if axis == 1 else N), F.formula.dim
        for name, lower in (("Min", "min"), ("Max", "max")):
            best, ref_index = oracle(f"{name}_Arg{name}", F.formula)
            value = getattr(F, lower)(axis=axis)
            index = getattr(F, "arg" + lower)(dim=axis)  # dim= is an alias of axis=
            both = getattr(F, f"{lower}_arg{lower}")(axis)
            assert value.shape == index.shape == (n_outer, dim)
            assert value.dtype == dtype and index.dtype == INDEX
            assert_close(value, best, dtype, rtol32=1e-5, rtol64=1e-12)
            check_indices(index, oracle.grid(F.formula), best, dtype)
            np.testing.assert_array_equal(both[0], value)
            np.testing.assert_array_equal(both[1], index)
            if dtype == np.float64:  # no rounding differences: the very same index
                np.testing.assert_array_equal(index, ref_index)


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_kmin_family(rng, M, N, dtype, axis):
    x_i, y_j = grid(rng, M, N, 3 if N % 2 else 7, dtype)
    for F in formulas(x_i, y_j):
        oracle = Oracle(F, axis)
        n_outer, n_in, dim = oracle.sizes[0], oracle.sizes[1], F.formula.dim
        ks = sorted({k for k in (1, 5, 64, n_in) if k <= n_in})
        # The K smallest in order: the oracle for a smaller K is a prefix of the largest one.
        best_all, index_all = oracle("KMin_ArgKMin", F.formula, params=(ks[-1],))
        for K in ks:
            best, ref_index = best_all[:, :K], index_all[:, :K]
            shape = (n_outer, K) if dim == 1 else (n_outer, K, dim)
            value, index = F.Kmin_argKmin(K, axis)
            assert value.shape == index.shape == shape
            assert value.dtype == dtype
            assert_close(value, best, dtype, rtol32=1e-5, rtol64=1e-12)
            assert (np.diff(np.asarray(value), axis=1) >= 0).all()  # ascending
            check_indices(index, oracle.grid(F.formula), best, dtype)
            if dtype == np.float64:
                np.testing.assert_array_equal(index, ref_index)
        # The single-output reductions give the same (one K is enough: same kernel)
        np.testing.assert_array_equal(F.Kmin(K, axis=axis), value)
        np.testing.assert_array_equal(F.argKmin(K=K, dim=axis), index)


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_logsumexp_and_softmax_weights(rng, M, N, dtype, axis):
    D = 3 if (M + N) % 2 else 7
    x_i, y_j = grid(rng, M, N, D, dtype)
    S, V = formulas(x_i, y_j)
    n_outer = M if axis == 1 else N
    b = rng.uniform(0.5, 1.5, size=(N if axis == 1 else M, 2)).astype(dtype)
    w_pos = Vj(b) if axis == 1 else Vi(b)  # positive weights: log is defined everywhere
    oracle = Oracle(S, axis)
    rtol32 = 1e-5

    out = S.logsumexp(axis=axis)
    assert out.shape == (n_outer, 1) and out.dtype == dtype
    (ref,) = oracle("LogSumExp", S.formula)
    # log Σ exp: an absolute error of rtol * (|log Σ| + max|S|) is all rounding can explain
    scale = np.abs(ref) + np.abs(oracle.grid(S.formula)).max()
    assert_close(out, ref, dtype, rtol32=rtol32, scale=scale)

    for weight, E in ((w_pos, 2), (V, D), (S, 1)):
        # The weight's own variables (V holds the parameter 0.5) join the scores' ones.
        carrier_w, (S_formula, w_formula) = scores_and_weight(S, weight)
        oracle = Oracle(carrier_w, axis)
        soft = S.sumsoftmaxweight(weight, axis=axis)
        assert soft.shape == (n_outer, E) and soft.dtype == dtype
        (ref_soft,) = oracle("SumSoftMaxWeight", S_formula, w_formula)
        w_scale = np.abs(np.asarray(oracle.grid(w_formula))).max(1)
        assert_close(soft, ref_soft, dtype, rtol32=rtol32, scale=w_scale)

        lse_w = S.logsumexp(axis=axis, weight=weight)
        assert lse_w.shape == (n_outer, E) and lse_w.dtype == dtype
        (ref_w,) = oracle("LogSumExpWeight", S_formula, w_formula)
        if weight is w_pos:
            assert_close(lse_w, ref_w, dtype, rtol32=rtol32, scale=np.abs(ref_w) + scale)
        else:  # signed weights: the log of a negative sum is NaN, as in the oracle
            lse_w = np.asarray(lse_w)
            # a sum that is ~0 may change sign by rounding; it may do so only rarely
            assert (np.isnan(lse_w) == np.isnan(ref_w)).mean() > 0.98
            sel = np.isfinite(ref_w) & np.isfinite(lse_w) & (ref_w > np.log(1e-3) + ref_w.max())
            assert_close(lse_w[sel], ref_w[sel], dtype, rtol32=1e-3, rtol64=1e-8,
                         scale=np.abs(ref_w[sel]) + scale.max())


@pytest.mark.parametrize("axis", [0, 1])
def test_ties_go_to_the_lowest_index(rng, axis):
    """Integer-valued data: exact ties in float32, in the plain and in the split executor paths,
    for arg-min/max and K-min (equal values in ascending index order)."""
    for M, N in ((40, 300), (3, 9000)):
        x = rng.integers(-2, 3, size=(M, 2)).astype(np.float32)
        y = rng.integers(-2, 3, size=(N, 2)).astype(np.float32)
        S = Vi(x).sqdist(Vj(y))
        V = Vi(x) - Vj(y)
        oracle = Oracle(S, axis)  # V has the same variables
        n_in = oracle.sizes[1]
        for F in (S, V):
            for name, method in (("Min", F.min_argmin), ("Max", F.max_argmax)):
                best, index = oracle(f"{name}_Arg{name}", F.formula)
                value, out = method(axis)
                np.testing.assert_array_equal(value, best)
                np.testing.assert_array_equal(out, index)
            ks = [k for k in (1, 5, 64) if k <= n_in]
            _, index = oracle("KMin_ArgKMin", F.formula, params=(ks[-1],))
            for K in ks:
                np.testing.assert_array_equal(F.argKmin(K, axis), index[:, :K])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_masked_pairs(rng, dtype, axis):
    """-inf scores (log 0) are masked pairs; some outer rows are fully masked."""
    M, N = 53, 3001
    x = rng.normal(size=(M, 2)).astype(dtype)
    y = rng.normal(size=(N, 2)).astype(dtype)
    keep_i = (rng.random((M, 1)) < 0.8).astype(dtype)
    keep_j = (rng.random((N, 1)) < 0.5).astype(dtype)
    keep_i[:2] = 0  # fully masked rows (axis 1)
    keep_j[:2] = 0  # fully masked columns (axis 0)
    S = -Vi(x).sqdist(Vj(y)) + (Vi(keep_i) * Vj(keep_j)).log()
    w = (Vj(y) if axis == 1 else Vi(x)).exp()  # positive: logsumexp(weight=w) is finite
    carrier, (_, w_formula) = scores_and_weight(S, w)
    oracle = Oracle(carrier, axis)
    g = np.asarray(oracle.grid(S.formula))
    assert np.isneginf(g).any() and np.isfinite(g).any()

    def close(out, ref):
        """Equal non-finite entries (-inf, NaN), close finite ones."""
        out = np.asarray(out)
        np.testing.assert_array_equal(out[~np.isfinite(ref)], ref[~np.isfinite(ref)])
        with np.errstate(invalid="ignore"):  # inf - inf in the error of the non-finite ones
            assert_close(out, ref, dtype, rtol32=1e-5, scale=np.abs(ref) + 1)

    close(S.logsumexp(axis), oracle("LogSumExp", S.formula)[0])
    soft = S.sumsoftmaxweight(w, axis)
    close(soft, oracle("SumSoftMaxWeight", S.formula, w_formula)[0])
    assert np.isnan(np.asarray(soft)[:2]).all()  # nothing to average
    close(S.logsumexp(axis, weight=w), oracle("LogSumExpWeight", S.formula, w_formula)[0])
    for name in ("Min", "Max"):
        best, index = oracle(f"{name}_Arg{name}", S.formula)
        value, out = getattr(S, f"{name.lower()}_arg{name.lower()}")(axis)
        close(value, best)
        if name == "Min" or dtype == np.float64:  # -inf ties: the first one
            np.testing.assert_array_equal(out, index)
        else:
            check_indices(out, g, best, dtype)
    _, ref_i = oracle("KMin_ArgKMin", S.formula, params=(50,))
    for K in (1, 5, 50):
        v, i = S.Kmin_argKmin(K, axis)
        close(v, np.take_along_axis(g, ref_i[:, :K, None], axis=1)[..., 0])
        # the -inf entries come first, in index order; the finite ones may swap near-ties
        masked = np.isneginf(np.asarray(v))
        np.testing.assert_array_equal(np.asarray(i)[masked], ref_i[:, :K][masked])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_huge_scores_neither_overflow_nor_vanish(rng, dtype, axis):
    """Scores of +-1e4: exp overflows/underflows, the running maximum does not."""
    M, N = 19, 2500
    a = rng.uniform(-1, 1, size=(M, 1)).astype(dtype)
    b = rng.uniform(-1, 1, size=(N, 1)).astype(dtype)
    w = rng.uniform(0.5, 2, size=(N if axis == 1 else M, 3)).astype(dtype)
    W = Vj(w) if axis == 1 else Vi(w)
    atol = 4e-3 if dtype == np.float32 else 1e-9  # float32 rounds S ~ 1e4 by ~1e-3 already
    for offset in (1e4, -1e4):
        S = Vi(a) * Vj(b) * 3.0 + offset
        carrier, (_, w_formula) = scores_and_weight(S, W)
        oracle = Oracle(carrier, axis)
        out = np.asarray(S.logsumexp(axis), np.float64)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, oracle("LogSumExp", S.formula)[0], rtol=0, atol=atol)
        lse_w = np.asarray(S.logsumexp(axis, weight=W), np.float64)
        np.testing.assert_allclose(lse_w, oracle("LogSumExpWeight", S.formula, w_formula)[0],
                                   rtol=0, atol=atol)
        assert_close(S.sumsoftmaxweight(W, axis),
                     oracle("SumSoftMaxWeight", S.formula, w_formula)[0], dtype, rtol32=2e-3)


def test_float32_sum_of_a_million_positive_terms(rng):
    """Relative error <= 1e-6 against float64 (in fact float64-level: tiles sum in double)."""
    M, N = 3, 1_000_000
    a = rng.uniform(0.5, 1.5, size=(M, 1)).astype(np.float32)
    b = rng.uniform(0.0, 1.0, size=(N, 1)).astype(np.float32)
    out = np.asarray((Vi(a) * Vj(b)).sum(1), np.float64)
    ref = a.astype(np.float64) * b.astype(np.float64).sum()
    # one float32 rounding per product (relative 6e-8, unbiased), then exact-enough sums
    assert (np.abs(out - ref) / ref).max() <= 1e-6


@pytest.mark.parametrize("axis", [0, 1])
def test_empty_reduced_axis(rng, axis):
    """Documented values: Sum 0, LogSumExp -inf, Min +inf, Max -inf, arg indices -1,
    SumSoftMaxWeight NaN; K-min refuses (K > 0 = the reduced size)."""
    n_outer, D = 6, 3
    x = rng.normal(size=(n_outer if axis == 1 else 0, D)).astype(np.float32)
    y = rng.normal(size=(0 if axis == 1 else n_outer, D)).astype(np.float32)
    S, V = formulas(Vi(x), Vj(y))
    W = Vj(y) if axis == 1 else Vi(x)
    full = lambda v, d: np.full((n_outer, d), v)  # noqa: E731
    np.testing.assert_array_equal(V.sum(axis), full(0.0, D))
    np.testing.assert_array_equal(S.logsumexp(axis), full(-np.inf, 1))
    np.testing.assert_array_equal(S.logsumexp(axis, weight=W), full(-np.inf, D))
    np.testing.assert_array_equal(S.sumsoftmaxweight(W, axis), full(np.nan, D))
    np.testing.assert_array_equal(V.min(axis), full(np.inf, D))
    np.testing.assert_array_equal(V.max(axis), full(-np.inf, D))
    for method in (V.argmin, V.argmax):
        out = method(axis)
        assert out.dtype == INDEX
        np.testing.assert_array_equal(out, full(-1, D))
    m, i = V.max_argmax(axis)
    np.testing.assert_array_equal(m, full(-np.inf, D))
    np.testing.assert_array_equal(i, full(-1, D))
    with pytest.raises(ValueError, match=r"Kmin: K=1, expected 1 <= K <= 0"):
        V.Kmin(1, axis)


def test_index_dtype_is_int32_without_x64(rng):
    x = rng.normal(size=(30, 2)).astype(np.float32)
    y = rng.normal(size=(40, 2)).astype(np.float32)
    with jax.enable_x64(False):
        S = Vi(x).sqdist(Vj(y))
        i = S.argmin(1)
        v, k = S.Kmin_argKmin(3, 0)
        assert i.dtype == np.int32 and k.dtype == np.int32 and v.dtype == np.float32
    with jax.enable_x64(True):
        S = Vi(x).sqdist(Vj(y))
        np.testing.assert_array_equal(S.argmin(1), i)
        np.testing.assert_array_equal(S.argKmin(3, 0), k)


def test_every_reduction_inside_jit(rng):
    M, N, D = 45, 77, 3
    x = rng.normal(size=(M, D))
    y = rng.normal(size=(N, D))
    b = rng.normal(size=(N, 2))

    def all_reductions(x, y, b, p):
        S = -Vi(x).sqdist(Vj(y)) * Pm(p)
        V = Vi(x) * Vj(y)
        return (S.logsumexp(1), S.logsumexp(1, weight=Vj(b).exp()), S.sumsoftmaxweight(Vj(b), 1),
                V.min(0), V.max(1), V.argmin(0), V.argmax(1), *V.min_argmin(1),
                *V.max_argmax(0), S.Kmin(4, 1), V.argKmin(5, 0), *V.Kmin_argKmin(6, 1))

    args = (x, y, b, np.array([0.5]))
    jitted = jax.jit(all_reductions)(*args)
    eager = all_reductions(*args)
    assert len(jitted) == len(eager) == 15
    for a, e in zip(jitted, eager):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=1e-12)


@pytest.mark.parametrize("reduction,params,n_formulas,axis", [
    ("LogSumExpWeight", (), 2, 0), ("SumSoftMaxWeight", (), 2, 1), ("Min_ArgMin", (), 1, 1),
    ("Max_ArgMax", (), 1, 0), ("KMin_ArgKMin", (7,), 1, 0), ("KMin_ArgKMin", (7,), 1, 1),
])
def test_chunked_fallback_matches_dense(rng, monkeypatch, reduction, params, n_formulas, axis):
    """The pure-JAX path of platforms without a native kernel: several and integer outputs."""
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 3000)  # many blocks, a ragged last one
    x_i, y_j = grid(rng, 37, 101, 3, np.float64)
    S, V = formulas(x_i, y_j)
    carrier, fs = scores_and_weight(S, V)
    fs = fs if n_formulas == 2 else fs[1:]
    cats = tuple(v.cat for v in carrier.variables)
    ops = [jnp.asarray(v.array) for v in carrier.variables]
    kw = dict(reduction=reduction, reduction_params=params, axis=axis, ni=37, nj=101)
    chunked = reference.chunked_reduce(fs, cats, ops, **kw)
    ref = reference.dense_reduce(fs, cats, ops, **kw)
    for c, r in zip(chunked, ref):
        assert c.dtype == r.dtype
        np.testing.assert_allclose(c, r, rtol=1e-12)


def test_trace_time_errors():
    x = np.ones((5, 3), np.float32)
    y = np.ones((8, 3), np.float32)
    S = Vi(x).sqdist(Vj(y))
    V = Vi(x) - Vj(y)
    with pytest.raises(ValueError, match=r"Kmin: K=0, expected 1 <= K <= 8"):
        S.Kmin(0, axis=1)
    with pytest.raises(ValueError, match=r"argKmin: K=6, expected 1 <= K <= 5"):
        S.argKmin(6, axis=0)
    with pytest.raises(TypeError, match=r"Kmin_argKmin: K is 2.0; expected a Python int"):
        S.Kmin_argKmin(2.0, axis=1)
    with pytest.raises(ValueError, match=r"logsumexp: the scores S_ij have dimension 3"):
        V.logsumexp(axis=1)
    with pytest.raises(ValueError, match=r"logsumexp: the scores S_ij have dimension 3"):
        V.logsumexp(axis=1, weight=S)
    with pytest.raises(ValueError, match=r"sumsoftmaxweight: the scores S_ij have dimension 3"):
        V.sumsoftmaxweight(S, axis=1)
    with pytest.raises(ValueError, match=r"sumsoftmaxweight: the weight .* does not fit.* 8 and 9"):
        S.sumsoftmaxweight(Vj(np.ones((9, 2), np.float32)), axis=1)
    with pytest.raises(TypeError, match=r"logsumexp: weight is an array of shape \(8, 2\)"):
        S.logsumexp(axis=1, weight=np.ones((8, 2), np.float32))
    with pytest.raises(TypeError, match=r"share a dtype"):
        S.sumsoftmaxweight(Vj(np.ones((8, 2), np.float64)), axis=1)
    with pytest.raises(ValueError, match=r"min: axis=3; expected 0"):
        S.min(3)
    with pytest.raises(ValueError, match=r"Kmin: axis=None; expected 0"):
        S.Kmin(2)
    assert S.min().formula.dim == V.argmax(dim=-1).formula.dim == 1  # the feature axis
    with pytest.raises(ValueError, match=r"argmax: axis=0 and dim=1 disagree"):
        S.argmax(axis=0, dim=1)

    @jax.jit
    def f(x, y):
        return Vi(x).sqdist(Vj(y)).Kmin(9, axis=1)

    with pytest.raises(ValueError, match=r"K=9, expected 1 <= K <= 8"):
        f(x, y)


def test_scores_constant_along_the_reduced_axis(rng):
    """Results that do not vary along the reduced axis (outer-only registers) take the
    broadcast paths of the executor: alone, or next to a weight that varies."""
    M, N, K = 9, 700, 6
    a = rng.normal(size=(M, 1))
    y = rng.normal(size=(N, 2))
    b = rng.uniform(0.5, 1.5, size=(N, 2))
    S = Vi(a) * 2.0  # no j variable in the formula ...
    x_i, y_j = Vi(a), Vj(y)
    operands = [x_i.variables[0].array, y_j.variables[0].array]
    cats = (x_i.formula.cat, y_j.formula.cat)  # ... but a j axis of size N in the call

    def call(reduction, params=()):
        return keops_reduce(operands, formulas=(S.formula,), var_cats=cats, reduction=reduction,
                            reduction_params=params, axis=1, ni=M, nj=N)

    v = 2.0 * a
    value, index = call("Min_ArgMin")
    np.testing.assert_array_equal(value, v)
    np.testing.assert_array_equal(index, np.zeros((M, 1)))
    value, index = call("KMin_ArgKMin", (K,))
    np.testing.assert_array_equal(value, np.repeat(v, K, axis=1))
    np.testing.assert_array_equal(index, np.tile(np.arange(K), (M, 1)))
    (lse,) = call("LogSumExp")
    np.testing.assert_allclose(lse, v + np.log(N), rtol=1e-12)
    # Mixed: constant scores, varying weights: a plain average of the weights.
    soft = S.sumsoftmaxweight(Vj(b), axis=1)
    np.testing.assert_allclose(soft, np.tile(b.mean(0), (M, 1)), rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1])
def test_batch_dims_and_vmap(rng, axis):
    """KeOps batch dims (axis counts them) and jax.vmap: several outputs, index outputs and the
    (K, D) rows of a vector K-min all keep the batch dims in front."""
    B, M, N, D, K = 3, 20, 25, 2, 4
    x = rng.normal(size=(B, M, 1, D))
    y = rng.normal(size=(1, 1, N, D))
    w = rng.normal(size=(B, M, 1, 3)) if axis == 0 else rng.normal(size=(B, 1, N, 3))
    S, V = LazyTensor(x).sqdist(LazyTensor(y)), LazyTensor(x) - LazyTensor(y)
    s, v = ((x - y) ** 2).sum(-1, keepdims=True), np.broadcast_to(x - y, (B, M, N, D))
    red = 1 + axis  # the reduced grid axis of the dense arrays
    order_s, order_v = np.argsort(s, red, kind="stable"), np.argsort(v, red, kind="stable")
    first = lambda a: np.moveaxis(np.moveaxis(a, red, 1)[:, :K], 1, -2)  # noqa: E731
    value, index = S.Kmin_argKmin(K, axis=1 + axis)
    assert value.shape == index.shape == (B, (M, N)[1 - axis], K)
    np.testing.assert_array_equal(index, first(order_s)[..., 0])
    np.testing.assert_allclose(value, first(np.take_along_axis(s, order_s, red))[..., 0])
    value, index = V.Kmin_argKmin(K, dim=1 + axis)
    assert value.shape == index.shape == (B, (M, N)[1 - axis], K, D)
    np.testing.assert_array_equal(index, first(order_v))
    m, i = V.max_argmax(1 + axis)
    np.testing.assert_array_equal(i, v.argmax(red))
    np.testing.assert_allclose(m, v.max(red))
    e = np.exp(-s - (-s).max(red, keepdims=True))
    np.testing.assert_allclose((-S).sumsoftmaxweight(LazyTensor(w), 1 + axis),
                               (e * w).sum(red) / e.sum(red), rtol=1e-12)
    # jax.vmap folds the mapped axis into the batch dims: one kernel call.
    knn = jax.vmap(lambda x: Vi(x).sqdist(Vj(y[0, 0])).Kmin_argKmin(K, axis=1))
    value, index = knn(x[:, :, 0])
    assert index.shape == (B, M, K) and index.dtype == INDEX
    np.testing.assert_array_equal(index, np.argsort(s[..., 0], 2, kind="stable")[..., :K])
