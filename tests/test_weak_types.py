"""Weak types (JAX's rule): weakly typed scalars — Python numbers, weak jnp scalars, a Python
float traced by jit, NumPy scalars — take the dtype of the strongly typed operands, also under
jax_enable_x64 (on in the tests, see conftest.py). Strongly typed mismatches stay an error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import Pm, Vi, Vj

SCALARS = {
    "python float to Pm": lambda: 0.7,
    "python int to Pm": lambda: 2,
    "weak jnp scalar": lambda: jnp.asarray(0.7),
    "numpy float64 scalar": lambda: np.float64(0.7),
    "numpy float32 scalar": lambda: np.float32(0.7),
}


def _inputs(rng, m=41, n=23, d=3):
    return (rng.standard_normal((m, d)).astype(np.float32),
            rng.standard_normal((n, d)).astype(np.float32),
            rng.standard_normal((n, 2)).astype(np.float32))


def _reductions(x, y, b, s):
    D = Vi(x).sqdist(Vj(y))
    K = (-D * Pm(s)).exp()
    return {
        "sum": (K * Vj(b)).sum(axis=1),
        "logsumexp": (-D / Pm(s)).logsumexp(axis=1),
        "argKmin": (D * Pm(s)).argKmin(K=3, axis=0),
        "solve": (-Vi(x).sqdist(Vj(x)) * Pm(s)).exp().solve(jnp.asarray(x[:, :1]), alpha=0.5),
        "constant": ((D * s).exp() * Vj(b)).sum(axis=1),  # a scalar written into the formula
    }


@pytest.mark.parametrize("kind", sorted(SCALARS))
def test_weak_scalars_follow_float32_data_under_x64(rng, kind):
    x, y, b = _inputs(rng)
    s = SCALARS[kind]()
    with jax.enable_x64(False):  # the float32-only run
        expected = {k: np.asarray(v) for k, v in _reductions(x, y, b, float(s)).items()}
    got = _reductions(x, y, b, s)
    for name, value in got.items():
        assert value.dtype in (jnp.float32, jnp.int64), (name, value.dtype)
        if value.dtype == jnp.float32:
            np.testing.assert_allclose(value, expected[name], rtol=2e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_python_float_traced_by_jit(rng):
    x, y, b = _inputs(rng)
    f = jax.jit(lambda x, y, b, s: ((-Vi(x).sqdist(Vj(y)) * Pm(s)).exp() * Vj(b)).sum(axis=1))
    out = f(x, y, b, 0.7)
    assert out.dtype == jnp.float32
    with jax.enable_x64(False):
        expected = np.asarray(f(x, y, b, 0.7))
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)
    # and its gradient with respect to the weak scalar
    g = jax.grad(lambda s: f(x, y, b, s).sum())(0.7)
    x64, y64, b64 = (a.astype(np.float64) for a in (x, y, b))
    d2 = ((x64[:, None] - y64[None]) ** 2).sum(-1)
    np.testing.assert_allclose(g, (-d2 * np.exp(-0.7 * d2) @ b64).sum(), rtol=1e-4)


def test_only_weak_scalars_promote_among_themselves(rng):
    x, y, b = _inputs(rng)
    # A formula whose only variables besides the weak one are float64: float64 result.
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    out = (-Vi(x64).sqdist(Vj(y64)) * Pm(0.7)).exp().sum(axis=1)
    assert out.dtype == jnp.float64


def test_strong_mismatch_is_still_an_error(rng):
    x, y, b = _inputs(rng)
    with pytest.raises(TypeError, match="must share a dtype.*parameter float64"):
        ((-Vi(x).sqdist(Vj(y)) * Pm(jnp.float64(0.7))).exp() * Vj(b)).sum(axis=1)
    with pytest.raises(TypeError, match="must share a dtype"):
        (Vi(x).sqdist(Vj(y.astype(np.float64)))).sum(axis=1)
