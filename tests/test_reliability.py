"""Regression tests for the reliability findings of issue 15 (item 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import Vi, Vj


# --- gradients at "no value" slots of the selection reductions are zero ------------------------


def _nan_rows(rng, m=6, n=9, d=2):
    x = rng.standard_normal((m, d))
    y = rng.standard_normal((n, d))
    x[1, 0] = np.nan  # row 1: every score is NaN -> no value (+inf, index -1)
    return x, y


def _finite_part(v):
    return jnp.where(jnp.isfinite(v), v, 0.0)


@pytest.mark.parametrize("method", ["min", "max", "min_argmin", "max_argmax"])
def test_gradient_of_an_all_nan_row_is_zero(rng, method):
    x, y = _nan_rows(rng)

    def reduce(x, y):
        out = getattr(Vi(x).sqdist(Vj(y)), method)(axis=1)
        return out[0] if isinstance(out, tuple) else out

    values = reduce(x, y)
    assert np.isinf(values[1]).all()
    gx, gy = jax.grad(lambda x, y: _finite_part(reduce(x, y)).sum(), argnums=(0, 1))(x, y)
    assert np.isfinite(gx).all() and np.isfinite(gy).all()
    np.testing.assert_array_equal(gx[1], 0.0)
    # The other rows: 2 (x_i - y_j*) at the selected j*, as the dense reference.
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    pick = np.nanargmin if method.startswith("min") else np.nanargmax
    for i in (0, 2, 3, 4, 5):
        j = pick(d2[i])
        np.testing.assert_allclose(gx[i], 2 * (x[i] - y[j]), rtol=1e-10)
    # Forward mode: zero tangent at the no-value slot.
    _, tangent = jax.jvp(lambda y: reduce(x, y), (y,), (np.ones_like(y),))
    assert np.isfinite(tangent[0]).all() and tangent[1] == 0.0


def test_gradient_of_empty_kmin_slots_is_zero(rng):
    x, y = _nan_rows(rng)
    y[3:, 0] = np.nan  # only 3 finite scores per row: slots 3 and 4 of K = 5 are empty
    values, indices = Vi(x).sqdist(Vj(y)).Kmin_argKmin(K=5, axis=1)
    assert (np.asarray(indices)[:, 3:] == -1).all() and np.isinf(values[:, 3:]).all()
    gx, gy = jax.grad(
        lambda x, y: _finite_part(Vi(x).sqdist(Vj(y)).Kmin(K=5, axis=1)).sum(), argnums=(0, 1)
    )(x, y)
    assert np.isfinite(gx).all() and np.isfinite(gy).all()
    np.testing.assert_array_equal(gy[3:], 0.0)  # never selected
    # Dense reference for the finite part: each selected pair contributes 2 (x_i - y_j).
    expected = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in np.asarray(indices)[i]:
            if j >= 0:
                expected[i] += 2 * (x[i] - y[j])
    np.testing.assert_allclose(gx, expected, rtol=1e-10)


# --- Round never overflows ---------------------------------------------------------------------


def _round(x, d):
    """x.round(d) through a reduction (a Sum over one j)."""
    one = np.ones((1, 1), x.dtype)
    return np.asarray((Vi(x).round(d) * Vj(one)).sum(axis=1))


def _round_half_away(y):
    return np.where(y >= 0, np.floor(y + 0.5), np.ceil(y - 0.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_with_large_decimals_keeps_the_value(rng, dtype):
    x = (rng.standard_normal((57, 2)) * 10.0 ** rng.integers(-8, 8, (57, 2))).astype(dtype)
    x[0] = [1.25, -3.5]
    big = 39 if dtype == np.float32 else 300
    np.testing.assert_array_equal(_round(x, big), x)  # was NaN: 10^d overflowed
    np.testing.assert_array_equal(_round(x, -big), np.zeros_like(x))
    # Ordinary decimals: round half away from zero, as C's round().
    hundred = dtype(100)  # the kernels scale in the data's dtype
    np.testing.assert_allclose(_round(x, 2), _round_half_away(x * hundred) / hundred,
                               rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-30)
    assert np.isnan(_round(np.array([[np.nan]], dtype), 5)).all()
    np.testing.assert_array_equal(_round(np.array([[np.inf, -np.inf]], dtype), 3),
                                  [[np.inf, -np.inf]])


# --- errors at trace time, naming the argument -------------------------------------------------


def test_feature_dimension_above_the_limit():
    with pytest.raises(ValueError, match="feature dimension D = 65537 exceeds the limit of 65536"):
        Vi(np.ones((2, 65537), np.float32))
    x = Vi(np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="OneHot: the output dimension 70000 exceeds the limit"):
        x.one_hot(70000)
    big = Vi(np.ones((2, 40000), np.float32))
    with pytest.raises(ValueError, match="Concat: the output dimension 80000 exceeds"):
        big.concat(big)


def test_kmin_slots_above_the_limit():
    def kmin(x, y):
        return (Vi(x) - Vj(y)).Kmin(K=257, axis=1)

    shapes = (jax.ShapeDtypeStruct((3, 65536), np.float32),
              jax.ShapeDtypeStruct((300, 65536), np.float32))
    with pytest.raises(ValueError, match="K=257 .* exceeds the limit of 16777216"):
        jax.eval_shape(kmin, *shapes)


def test_integer_power_out_of_int32():
    x = Vi(np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="Pow: the integer exponent is 2147483648"):
        x ** 2**31
    with pytest.raises(ValueError, match="Pow: the integer exponent is -2147483648"):
        x ** -(2**31)


@pytest.mark.parametrize("bad", [1.0, True, "1", np.float32(1)])
def test_axis_must_be_an_int(bad):
    D = Vi(np.ones((4, 2), np.float32)).sqdist(Vj(np.ones((3, 2), np.float32)))
    with pytest.raises(TypeError, match=r"axis is .*; expected an int"):
        D.sum(axis=bad)
    with pytest.raises(TypeError, match=r"axis is .*; expected an int"):
        D.min(axis=bad)
    with pytest.raises(TypeError, match=r"dim is .*; expected an int"):
        D.logsumexp(dim=bad)
    np.testing.assert_allclose(D.sum(axis=np.int64(1)), np.zeros((4, 1)))  # NumPy ints are ints


def test_tensordot_terms_above_the_limit():
    x = Vi(np.ones((1, 65536), np.float32))
    y = Vj(np.ones((1, 65536), np.float32))
    # (256, 256) x (256, 256) contracting one axis: 2^24 terms each, 2^25 in all.
    a = x.keops_tensordot(y, (256, 256), (256, 256), (1,), (0,))
    b = x.keops_tensordot(y * 2.0, (256, 256), (256, 256), (1,), (0,))
    with pytest.raises(ValueError, match="TensorDots have 33554432 terms .* limit is 16777216"):
        (a + b).sum(axis=1)


def test_native_decoder_bounds_tensordot_tables_of_a_crafted_program(monkeypatch):
    from jaxkeops import program as program_module

    monkeypatch.setattr(program_module, "MAX_TENSORDOT_TERMS", 1 << 40)
    program_module.compile_program.cache_clear()
    x = Vi(np.ones((1, 65536), np.float32))
    y = Vj(np.ones((1, 65536), np.float32))
    a = x.keops_tensordot(y, (256, 256), (256, 256), (1,), (0,))
    b = x.keops_tensordot(y * 3.0, (256, 256), (256, 256), (1,), (0,))
    with pytest.raises(Exception, match="TensorDots have 33554432 terms in all"):
        jax.block_until_ready((a + b).sum(axis=1))
    program_module.compile_program.cache_clear()


# --- the native program cache is bounded by bytes ----------------------------------------------


def test_program_cache_is_bounded_by_bytes():
    from jaxkeops import _native

    x = Vi(np.ones((1, 32768), np.float32))
    y = Vj(np.ones((2, 32768), np.float32))
    for k in range(7):  # 2^22 terms each: ~50 MiB of table per distinct formula, 350 in all
        F = x.keops_tensordot(y, (128, 256), (256, 128), (1,), (0,)) * float(k + 2)
        out = F.sum(axis=1)
        np.testing.assert_allclose(out, np.full((1, 16384), 2 * 256 * (k + 2)))
        entries, size = _native.cpu.program_cache_stats()
        assert size <= 256 << 20, (k, entries, size)
    assert size >= 40 << 20  # the tables are counted


# --- empty outputs return at once, whatever the batch ------------------------------------------


def test_empty_output_with_a_large_batch_returns_at_once():
    from jaxkeops import LazyTensor

    # M = 0 under batch dims (10^3, 10^3): the handler returns before its loop over the 10^6
    # batch indices. (Much larger batches are slow in jax itself: any jnp op on an empty array
    # of shape (10^4, 10^4, 0, ...) takes ~10 s there.)
    x = np.ones((10**3, 10**3, 0, 1, 2), np.float32)
    y = np.ones((1, 1, 1, 3, 2), np.float32)
    for axis in (2, 3):
        out = (LazyTensor(x) - LazyTensor(y)).sum(axis=axis)
        assert out.shape == ((10**3, 10**3, 3, 2) if axis == 2 else (10**3, 10**3, 0, 2))
        if axis == 2:  # reducing over the empty axis: zeros
            assert not np.asarray(out).any()


# --- the CPU row-block path agrees with the validator on register reuse ------------------------


def test_row_block_sum_with_a_later_write_to_the_score_register(rng):
    from jaxkeops._native import REDUCE_TARGET
    from jaxkeops.program import Instruction, Program

    OUTER, INNER, PAIR = 1, 2, 3
    VAR, ADD, SUBTRACT, MULT = 0, 2, 3, 4
    E = 20  # weights wide enough for the row-block path
    program = Program(
        reduction_code=0, reduction_params=(),
        inputs=((OUTER, 1), (INNER, 1), (INNER, E)),
        registers=((OUTER, 1), (INNER, 1), (INNER, E), (PAIR, 1), (PAIR, E)),
        instructions=(
            Instruction(VAR, 0, (), (0,)),
            Instruction(VAR, 1, (), (1,)),
            Instruction(VAR, 2, (), (2,)),
            Instruction(SUBTRACT, 3, (0, 1)),   # s = x_i - y_j
            Instruction(MULT, 4, (3, 2)),       # result = s * v_j
            Instruction(ADD, 3, (0, 1)),        # a later write to s's register (valid, unread)
        ),
        results=(4,),
    ).serialize()
    M, N = 61, 203
    x = rng.standard_normal((M, 1)).astype(np.float32)
    y = rng.standard_normal((N, 1)).astype(np.float32)
    v = rng.standard_normal((N, E)).astype(np.float32)
    out = jax.ffi.ffi_call(REDUCE_TARGET, jax.ShapeDtypeStruct((M, E), np.float32))(
        x, y, v, program=program, n_inner=np.int64(N))
    expected = (x.astype(np.float64) - y[:, 0].astype(np.float64)[None, :]) @ v.astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# --- a NaN score makes its row NaN for the logsumexp family, wherever the tiles fall -----------


@pytest.mark.parametrize("n_nan", [1, 255, 256, 257, 600])
@pytest.mark.parametrize("method", ["logsumexp", "logsumexp_weight", "sumsoftmaxweight"])
def test_nan_scores_give_nan_rows(rng, method, n_nan):
    M, N, E = 5, 700, 17  # E >= 16: the weighted kinds also take the CPU's row-block path
    x = rng.standard_normal((M, 1))
    y = rng.standard_normal((N, 1))
    s = rng.standard_normal((N, 1))
    s[100:100 + n_nan] = np.nan  # row-independent NaN scores: a whole tile of 256 for n >= 256
    w = rng.uniform(0.5, 1.5, (N, E))
    S = -Vi(x).sqdist(Vj(y)) + Vj(s)
    if method == "logsumexp":
        out = S.logsumexp(axis=1)
    elif method == "logsumexp_weight":
        out = S.logsumexp(axis=1, weight=Vj(w))
    else:
        out = S.sumsoftmaxweight(Vj(w), axis=1)
    assert np.isnan(np.asarray(out)).all()
    # An all-NaN row is NaN too (not -inf), and rows without NaN are unaffected.
    x2 = np.concatenate([x, [[np.nan]]])
    S2 = -Vi(x2).sqdist(Vj(y)) + Vj(np.where(np.isnan(s), 0.0, s))
    out2 = np.asarray(S2.logsumexp(axis=1))
    assert np.isnan(out2[-1]).all() and np.isfinite(out2[:-1]).all()


# --- non-integer Python constants travel as data -----------------------------------------------


def test_eager_calls_with_varying_constants_reuse_one_program(rng):
    from jaxkeops.program import compile_program

    x = rng.standard_normal((31, 3)).astype(np.float32)
    y = rng.standard_normal((47, 3)).astype(np.float32)
    b = rng.standard_normal((47, 2)).astype(np.float32)
    d2 = ((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)
    sizes = set()
    for c in 0.15 + 0.25 * np.arange(12):  # none of them an integer
        out = ((-Vi(x).sqdist(Vj(y)) * float(c)).exp() * Vj(b)).sum(axis=1)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, np.exp(-d2 * c) @ b, rtol=2e-5, atol=1e-6)
        sizes.add(compile_program.cache_info().currsize)
    assert len(sizes) == 1  # one program for all twelve constants
    # Integer constants stay in the formula (derivative rules, powers, 1 / (1 + s)).
    assert "IntCst(2)" in repr((Vi(x) * 2).formula)


def test_many_constants_travel_as_one_parameter_vector(rng):
    x = rng.standard_normal((23, 1))
    y = rng.standard_normal((31, 1))
    coefficients = 0.3 + 0.01 * np.arange(100)  # 100 non-integer constants: a polynomial

    def poly(x, y):
        d = Vi(x) - Vj(y)
        F = d * 0.0
        for c in coefficients:
            F = F * d + float(c)
        return F.sum(axis=1)

    jaxpr = jax.make_jaxpr(poly)(x, y)
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "keops_reduce"]
    assert len(eqn.invars) == 3  # x, y and one vector of the 100 constants (CUDA allows 64)
    d = x - y.T
    expected = np.zeros_like(d)
    for c in coefficients:
        expected = expected * d + c
    np.testing.assert_allclose(poly(x, y), expected.sum(1, keepdims=True), rtol=1e-10)
    g = jax.grad(lambda x: poly(x, y).sum())(x)
    deriv = np.zeros_like(d)
    value = np.zeros_like(d)
    for c in coefficients:
        deriv = deriv * d + value
        value = value * d + c
    np.testing.assert_allclose(g, deriv.sum(1, keepdims=True), rtol=1e-9)
