"""The CUDA executor's tile interpreter, run on the host: the CPU module's target
`jaxkeops_reduce_gpu_emulation` runs the kernels' own per-thread code (src/cuda/tile_interpreter.h,
reducers.cuh, thread_steps.h) block after block, with the launch plan of an H100. Every program
goes through it exactly as the CUDA lowering would send it (same program bytes, operands and
attributes), and the results are checked against the dense float64 oracle: every reduction, both
axes, D in {1, 3, 8, 17}, float32 and float64, sizes 1 and ragged tiles, every op of the table,
batch dims with broadcasting, the split reduction, an empty reduced axis, NaN and ties."""

import contextlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close, dense

import jaxkeops.reference as reference
from jaxkeops import LazyTensor, Pm, Vi, Vj
from jaxkeops import _native
from jaxkeops.program import compile_program

EMULATION = "jaxkeops_reduce_gpu_emulation"
INDEX = np.int64  # the tests run with jax_enable_x64 (conftest)


@contextlib.contextmanager
def on_emulated_gpu():
    """Lower jaxkeops reductions on the CPU to the GPU emulation instead of the CPU executor
    (the lowering reads the target name when it runs; caches are cleared on both sides so that
    no executable compiled for the other target is reused)."""
    saved = _native.REDUCE_TARGET
    jax.clear_caches()
    _native.REDUCE_TARGET = EMULATION
    try:
        yield
    finally:
        _native.REDUCE_TARGET = saved
        jax.clear_caches()


@pytest.fixture
def emulated():
    with on_emulated_gpu():
        yield


def grids(lazy, formulas, axis):
    """The float64 grids (n_outer, n_inner, dim) of formulas over lazy's variables (the project's
    dense reference, jaxkeops.reference.grid_values), evaluated once per formula set: the grid
    over i (axis 0) is the transpose of the grid over j."""
    key = (id(lazy), tuple(formulas))
    if key not in _GRIDS:
        cats = tuple(v.cat for v in lazy.variables)
        ops = [jnp.asarray(v.array, jnp.float64) for v in lazy.variables]
        g = _jit_grids(tuple(formulas), cats, lazy.ni or 1, lazy.nj or 1, *ops)
        _GRIDS.clear()  # one carrier at a time; keeps `lazy` alive so that its id stays unique
        _GRIDS[key] = (lazy, [np.asarray(x) for x in g])
    g = _GRIDS[key][1]
    return g if axis == 1 else [x.transpose(1, 0, 2) for x in g]


_GRIDS = {}


# Jitted: one compilation per formula instead of one per jnp op (test time).
@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _jit_grids(formulas, cats, ni, nj, *operands):
    return reference.grid_values(formulas, cats, operands, 1, ni, nj)


def oracle(lazy, reduction, axis, formulas=None, params=()):
    """The dense float64 oracle: the reference grid reduced in numpy (as tests/oracle.py's
    `dense`, much faster at these sizes, which keeps this file fast)."""
    return reduce_grids(reduction, grids(lazy, formulas or (lazy.formula,), axis), params)


def reduce_grids(reduction, g, params=()):
    """The reduction of the float64 grids g (scores, then weights) over their axis 1."""
    s = g[0]
    with np.errstate(all="ignore"):
        if reduction == "Sum":
            return (s.sum(1),)
        if reduction == "LogSumExp":
            return (np.logaddexp.reduce(s, axis=1),)
        if reduction == "LogSumExpWeight":
            return (np.logaddexp.reduce(s + np.log(g[1]), axis=1),)
        if reduction == "SumSoftMaxWeight":
            e = np.exp(s - s.max(1, keepdims=True))
            return ((e * g[1]).sum(1) / e.sum(1),)
        if reduction in ("Min", "Max", "ArgMin", "ArgMax", "Min_ArgMin", "Max_ArgMax"):
            best = s.min(1) if "Min" in reduction else s.max(1)
            index = (s.argmin(1) if "Min" in reduction else s.argmax(1)).astype(INDEX)
            picks = {"Min": (best,), "Max": (best,), "ArgMin": (index,), "ArgMax": (index,)}
            return picks.get(reduction, (best, index))
        K = params[0]
        order = np.argsort(s, axis=1, kind="stable")[:, :K]
        values = np.take_along_axis(s, order, axis=1)
        if s.shape[2] == 1:
            values, order = values[..., 0], order[..., 0]
        picks = {"KMin": (values,), "ArgKMin": (order.astype(INDEX),)}
        return picks.get(reduction, (values, order.astype(INDEX)))


def abs_sum(lazy, axis):
    """Sum over the reduced axis of |F|: the scale that rounding errors of a Sum grow with."""
    return np.abs(grids(lazy, (lazy.formula,), axis)[0]).sum(1)


def run(lazy, reduction, axis, formulas=None, params=()):
    """The reduction through the emulated GPU executor, outputs as numpy arrays."""
    outs = lazy._reduce(reduction, axis, formulas=formulas, reduction_params=params)
    return tuple(np.asarray(o) for o in outs)


def test_the_emulation_target_is_what_runs(rng):
    """The lowering really calls the emulation (a test that would pass on the CPU executor
    alone would prove nothing), and a direct ffi_call with compile_program's bytes agrees."""
    x = rng.normal(size=(9, 3))
    y = rng.normal(size=(21, 3))
    b = rng.normal(size=(21, 2))
    F = (-Vi(x).sqdist(Vj(y))).exp() * Vj(b)
    with on_emulated_gpu():
        hlo = jax.jit(lambda x: (-Vi(x).sqdist(Vj(y))).exp().sum(1)).lower(x).as_text()
        assert EMULATION in hlo
        out = run(F, "Sum", 1)[0]
    assert _native.REDUCE_TARGET == "jaxkeops_reduce"
    program = compile_program((F.formula,), tuple(v.cat for v in F.variables), (3, 3, 2), "Sum",
                              (), 1)
    direct = jax.ffi.ffi_call(EMULATION, jax.ShapeDtypeStruct((9, 2), jnp.float64))(
        x, y, b, program=program, n_inner=np.int64(21))
    (ref,) = dense(F, "Sum", 1)  # tests/oracle.py's, once: the numpy oracle agrees with it
    assert_close(oracle(F, "Sum", 1)[0], ref, np.float64, rtol64=1e-13)
    assert_close(out, ref, np.float64, scale=abs_sum(F, 1))
    assert_close(direct, ref, np.float64, scale=abs_sum(F, 1))


# ---------------------------------------------------------------- every reduction

# (M, N): one pair, and sizes that are not multiples of the sub-tile (16), the j tile (128) or
# the block of rows (128); the last one is split along the inner axis (few rows, long axis).
SIZES = [(1, 1), (37, 300), (130, 45), (5, 3001)]
REDUCTIONS = ["Sum", "LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight", "Min", "Max", "ArgMin",
              "ArgMax", "Min_ArgMin", "Max_ArgMax", "KMin", "ArgKMin", "KMin_ArgKMin"]


def check_reduction(lazy, reduction, axis, dtype, score, vector, weight):
    """One reduction of `vector` (dim D) or `score` (dim 1, with `weight`) against the oracle."""
    K = 3

    def in_lazy(F):
        """F's formula numbered as `lazy`'s variables (lazy holds all of F's, parameters from
        non-integer constants included)."""
        return lazy._merge(F)[0]

    if reduction in ("LogSumExp",):
        F, formulas, params = score, None, ()
    elif reduction in ("LogSumExpWeight", "SumSoftMaxWeight"):
        F, formulas, params = score, (in_lazy(score), in_lazy(weight)), ()
    elif reduction.startswith("K") or reduction == "ArgKMin":
        F, formulas, params = vector, None, (K,)
    else:
        F, formulas, params = vector, None, ()
    formulas = formulas or (in_lazy(F),)
    outs = run(lazy, reduction, axis, formulas=formulas, params=params)
    gs = grids(lazy, formulas, axis)
    refs = reduce_grids(reduction, gs, params)
    assert len(outs) == len(refs)
    g = gs[0]
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        if np.issubdtype(ref.dtype, np.integer):
            assert out.dtype == INDEX
            # Indices select values equal to the oracle's best (float32 may swap near-ties).
            best = refs[0] if len(refs) == 2 else reduce_grids(
                reduction.replace("Arg", ""), gs, params)[0]
            n_inner = g.shape[1]
            assert (out >= 0).all() and (out < n_inner).all()
            rows = np.arange(g.shape[0]).reshape((-1,) + (1,) * (out.ndim - 1))
            if out.ndim == 2 and reduction in ("ArgKMin", "KMin_ArgKMin") and g.shape[2] == 1:
                picked = g[rows, out, 0]
            elif out.ndim == 3:  # (n, K, D)
                picked = g[rows, out, np.arange(g.shape[2])]
            else:  # (n, D)
                picked = g[rows, out, np.arange(g.shape[2])]
            assert_close(picked, best.reshape(picked.shape), dtype, rtol32=1e-5, rtol64=1e-12)
            if reduction.startswith("K") or reduction == "ArgKMin":  # K distinct indices
                srt = np.sort(out.reshape(out.shape[0], K, -1), axis=1)
                assert (np.diff(srt, axis=1) > 0).all()
        else:
            assert out.dtype == dtype
            scale = np.abs(g).sum(1) if reduction == "Sum" else None
            assert_close(out, ref, dtype, rtol32=2e-5 if reduction != "Sum" else 1e-5,
                         rtol64=1e-11, scale=scale)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_reduction_both_axes_dims(emulated, rng, reduction, dtype):
    """D in {1, 3, 8, 17} (8 in float64 and 17: the pair registers exceed the thread's local
    array and live in the workspace), both axes, one of the sizes above per D (and (1, 1))."""
    configs = [(1, SIZES[0]), (1, SIZES[1]), (3, SIZES[2]), (8, SIZES[3]), (17, SIZES[1])]
    for D, (M, N) in configs:
        x = rng.normal(size=(M, D)).astype(dtype)
        y = rng.normal(size=(N, D)).astype(dtype)
        wi = rng.uniform(0.5, 1.5, size=(M, D)).astype(dtype)  # positive: logs of their sums
        wj = rng.uniform(0.5, 1.5, size=(N, D)).astype(dtype)
        x_i, y_j = Vi(x), Vj(y)
        # Variables x, y (Var 0, 1) in every formula, then the weights: one numbering.
        score = x_i.sqdist(y_j) * -0.5 + (x_i | y_j)
        vector = (x_i - y_j) * (x_i + 0.5)
        weight = (x_i - y_j).sum(-1).exp() * Vi(wi) * Vj(wj)
        lazy = score + vector.sum(-1) + weight.sum(-1)  # carries every variable
        for axis in (0, 1):
            if (reduction.startswith("K") or reduction == "ArgKMin") and (N, M)[axis] < 3:
                continue
            check_reduction(lazy, reduction, axis, dtype, score, vector, weight)


# ---------------------------------------------------------------- every op

def test_every_op_through_the_tile_interpreter(emulated, rng):
    """Every case of test_ops (every op family: elementwise unary / binary / ternary, Pow, Round,
    Sum, SqNorm2, Scalprod, SqDist, Min/Max/Arg, OneHot, Extract, Concat, TensorDot), its arguments
    i, j or parameter at random, summed over both axes; float32 and float64 alternate."""
    from test_ops import CASES, _formula, _inputs

    for k, case in enumerate(CASES):
        dtype = (np.float32, np.float64)[k % 2]
        cats, arrays, u, v = _inputs(rng, case, dtype, m=19, n=35)
        F = _formula(case, cats, arrays, u, v)
        for axis in (0, 1):
            (out,) = run(F, "Sum", axis)
            (g,) = grids(F, (F.formula,), axis)
            assert out.dtype == dtype, case.name
            assert_close(out, g.sum(1), dtype, rtol32=1e-4, rtol64=1e-10, scale=np.abs(g).sum(1))


def test_extract_transposed_and_uniform_pair_operands(emulated, rng):
    """ExtractT (from the gradient of Extract), and pair instructions whose operands are all
    i-side or parameters mixed with j-side ones in every position."""
    x = rng.normal(size=(23, 4))
    y = rng.normal(size=(40, 4))
    p = rng.normal(size=(4,))

    def f(y):
        F = (Vi(x) - Vj(y)).extract(1, 2) * Pm(p).extract(0, 2)
        return jnp.sum(jnp.sin(F.sum(1)))

    with on_emulated_gpu():
        g = jax.grad(f)(y)
    g_ref = jax.grad(f)(y)  # the CPU executor, itself checked against the oracle elsewhere
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)
    F = (Pm(p) * Vi(x)).clamp(Vj(y), Pm(p) + 1.0) + Vi(x).ifelse(Pm(p), Vj(y))
    for axis in (0, 1):
        (out,) = run(F, "Sum", axis)
        assert_close(out, oracle(F, "Sum", axis)[0], np.float64, scale=abs_sum(F, axis))


# ---------------------------------------------------------------- batch, split, empty, NaN, ties

@pytest.mark.parametrize("axis", [2, 3])
def test_batch_dims_with_broadcast(emulated, rng, axis):
    """KeOps-style batch dims (2, 3): x batched on both, y broadcast along the second, b and the
    parameter s along the first; then a vmap over a batch of its own."""
    x = rng.normal(size=(2, 3, 17, 1, 3))
    y = rng.normal(size=(2, 1, 1, 150, 3))
    b = (rng.normal(size=(1, 3, 1, 150, 2)) if axis == 3 else rng.normal(size=(1, 3, 17, 1, 2)))
    s = rng.uniform(0.5, 2.0, size=(2, 1, 1, 1, 1))
    K = (-LazyTensor(x).sqdist(LazyTensor(y)) * LazyTensor(s)).exp() * LazyTensor(b)
    out = np.asarray(K.sum(axis=axis))
    ref = (np.exp(-((x - y) ** 2).sum(-1, keepdims=True) * s) * b).sum(axis)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    out = np.asarray(jax.vmap(lambda xx: (-Vi(xx).sqdist(Vj(y[0, 0, 0]))).logsumexp(1))(x[0, :, :, 0]))
    for k in range(3):
        L = -Vi(x[0, k, :, 0]).sqdist(Vj(y[0, 0, 0]))
        assert_close(out[k], oracle(L, "LogSumExp", 1)[0], np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_reduction_keeps_lowest_index_on_ties(emulated, rng, dtype):
    """M = 3 rows over N = 5000: the plan splits the inner axis (132 emulated SMs) and combines
    the partial states in inner order. Quantised values make exact ties across chunks."""
    x = rng.integers(0, 3, size=(3, 2)).astype(dtype)
    y = rng.integers(0, 3, size=(5000, 2)).astype(dtype)
    F = Vi(x).sqdist(Vj(y))
    for reduction in ("Min_ArgMin", "ArgKMin", "Sum", "LogSumExp"):
        params = (4,) if reduction == "ArgKMin" else ()
        outs = run(F, reduction, 1, params=params)
        refs = oracle(F, reduction, 1, params=params)
        if reduction == "Min_ArgMin":
            np.testing.assert_array_equal(outs[0], refs[0])
            g = grids(F, (F.formula,), 1)[0][..., 0]
            first = np.argmax(g == g.min(1, keepdims=True), axis=1)
            np.testing.assert_array_equal(outs[1][:, 0], first)
        elif reduction == "ArgKMin":
            g = grids(F, (F.formula,), 1)[0][..., 0]
            stable = np.argsort(g, axis=1, kind="stable")[:, :4]
            np.testing.assert_array_equal(outs[0], stable)
        else:
            assert_close(outs[0], refs[0], dtype, rtol32=1e-5)


def test_empty_inner_axis(emulated, rng):
    x = rng.normal(size=(6, 2))
    y = np.zeros((0, 2))
    F = Vi(x).sqdist(Vj(y))
    (s,) = run(F, "Sum", 1)
    np.testing.assert_array_equal(s, np.zeros((6, 1)))
    (l,) = run(F, "LogSumExp", 1)
    assert (l == -np.inf).all()
    v, i = run(F, "Min_ArgMin", 1)
    assert (v == np.inf).all() and (i == -1).all()
    v, i = run(F, "Max_ArgMax", 1)
    assert (v == -np.inf).all() and (i == -1).all()


def test_nan_inf_and_masked_scores(emulated, rng):
    """NaN values are skipped by Min/Max (their index never chosen) and propagate through sums;
    -inf scores are masked pairs of a LogSumExp, +inf makes it +inf; ties keep the first index."""
    M, N = 4, 70
    y = rng.normal(size=(N, 1))
    y[[3, 40], 0] = np.nan
    x = np.zeros((M, 1))
    F = Vi(x) + Vj(y)
    v, i = run(F, "Min_ArgMin", 1)
    finite = np.nanargmin(y[:, 0])
    np.testing.assert_array_equal(i[:, 0], finite)
    (s,) = run(F, "Sum", 1)
    assert np.isnan(s).all()
    # LogSumExp with masked (-inf) and +inf scores.
    sc = rng.normal(size=(N, 1))
    sc[:30] = -np.inf
    sc_inf = sc.copy()
    sc_inf[50] = np.inf
    for scores in (sc, sc_inf):
        G = Vi(x) + Vj(scores)
        (l,) = run(G, "LogSumExp", 1)
        (ref,) = dense(G, "LogSumExp", 1)  # tests/oracle.py's: inf and -inf rules
        np.testing.assert_allclose(l, ref, rtol=1e-12)
    # Ties: equal values, first index wins, for Min, Max and KMin.
    t = np.ones((N, 1))
    T_ = Vi(x) * 0 + Vj(t)
    for red in ("ArgMin", "ArgMax"):
        (i,) = run(T_, red, 1)
        assert (i == 0).all()
    (i,) = run(T_, "ArgKMin", 1, params=(5,))
    np.testing.assert_array_equal(i, np.tile(np.arange(5), (M, 1)))


def test_wide_registers_and_long_programs_leave_shared_memory(emulated, rng):
    """Inner registers too wide for a 16-lane tile in shared memory (D = 1000, float64: the tile
    moves to the workspace, and so do the pair registers), and a pair program of more than 16 KiB
    (read from global memory instead of shared memory)."""
    x = rng.normal(size=(3, 1000))
    y = rng.normal(size=(40, 1000))
    F = (Vi(x) - Vj(y)).square().sum(-1)
    for axis in (0, 1):
        (out,) = run(F, "Sum", axis)
        (g,) = grids(F, (F.formula,), axis)
        assert_close(out, g.sum(1), np.float64, scale=np.abs(g).sum(1))
    x = rng.normal(size=(5, 1))
    y = rng.normal(size=(150, 1))
    x_i, y_j = Vi(x), Vj(y)
    G = x_i * 0.0
    for k in range(90):  # 4 pair instructions per term: 360 of 68 bytes
        G = G + ((x_i * (1.0 + k / 64) - y_j) * 0.5).square()
    for axis in (0, 1):
        (out,) = run(G, "Sum", axis)
        (g,) = grids(G, (G.formula,), axis)
        assert_close(out, g.sum(1), np.float64, scale=np.abs(g).sum(1))
