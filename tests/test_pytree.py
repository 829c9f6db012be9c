"""LazyTensor as a JAX citizen: a pytree (arrays are leaves, the formula is static), no truth
value and no hash (so no cache can mistake one LazyTensor for another), against the dense oracle."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import LazyTensor, Pm, Vi, Vj


def _data(seed, m=37, n=29, d=3):
    kx, ky, kb = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(kx, (m, d)), jax.random.normal(ky, (n, d)),
            jax.random.normal(kb, (n, 2)))


def _gaussian(x, y):
    return (-Vi(x).sqdist(Vj(y))).exp()


def _dense_gaussian_sum(x, y, b):
    x, y, b = (np.asarray(a, np.float64) for a in (x, y, b))
    return np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)) @ b


def test_flatten_unflatten_round_trip():
    x, y, b = _data(0)
    K = _gaussian(x, y) * Vj(b)
    leaves, treedef = jax.tree_util.tree_flatten(K)
    assert len(leaves) == 3 and all(isinstance(leaf, jax.Array) for leaf in leaves)
    K2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert K2.formula == K.formula and K2.shape == K.shape
    np.testing.assert_allclose(K2.sum(axis=1), _dense_gaussian_sum(x, y, b), rtol=1e-5)


def test_into_and_out_of_jit():
    x, y, b = _data(1)
    make = jax.jit(lambda x, y, b: _gaussian(x, y) * Vj(b))
    K = make(x, y, b)
    assert isinstance(K, LazyTensor) and K.shape == (37, 29, 2)
    reduce = jax.jit(lambda K: K.sum(axis=1))
    np.testing.assert_allclose(reduce(K), _dense_gaussian_sum(x, y, b), rtol=1e-5)
    # A second LazyTensor with other data (same formula and shapes): same executable, new values.
    x2, y2, b2 = _data(2)
    np.testing.assert_allclose(reduce(make(x2, y2, b2)), _dense_gaussian_sum(x2, y2, b2),
                               rtol=1e-5)


def test_through_scan_while_and_cond():
    x, y, b = _data(3)
    K = _gaussian(x, y)

    def body(carry, scale):
        K, total = carry
        return (K, total + scale * (K * Vj(b)).sum(axis=1)), None

    (K_out, total), _ = jax.lax.scan(body, (K, jnp.zeros((37, 2))), jnp.arange(1.0, 4.0))
    np.testing.assert_allclose(total, 6.0 * _dense_gaussian_sum(x, y, b), rtol=1e-5)
    assert K_out.formula == K.formula

    def cond_fun(state):
        return state[1] < 3

    def while_body(state):
        K, k = state
        return K, k + 1

    K_w, k = jax.lax.while_loop(cond_fun, while_body, (K, 0))
    assert int(k) == 3
    np.testing.assert_allclose((K_w * Vj(b)).sum(axis=1), _dense_gaussian_sum(x, y, b), rtol=1e-5)

    picked = jax.lax.cond(True, lambda K: (K * Vj(b)).sum(axis=1),
                          lambda K: jnp.zeros((37, 2)), K)
    np.testing.assert_allclose(picked, _dense_gaussian_sum(x, y, b), rtol=1e-5)


def test_vmap_in_axes_and_out_axes():
    x, y, b = _data(4)
    xs = jnp.stack([x, 0.5 * x, 2.0 * x])
    # Out of vmap: a LazyTensor with a batch dimension (KeOps-style batch).
    Kb = jax.vmap(lambda x: _gaussian(x, y))(xs)
    assert Kb.shape == (3, 37, 29)
    # Into vmap: mapped over its batch dimension.
    sums = jax.vmap(lambda K: (K * Vj(b)).sum(axis=1))(Kb)
    for k in range(3):
        np.testing.assert_allclose(sums[k], _dense_gaussian_sum(xs[k], y, b), rtol=1e-5)
    # in_axes given per leaf of a pytree that holds a LazyTensor and an array.
    out = jax.vmap(lambda K, b: (K * Vj(b)).sum(axis=1), in_axes=(0, None))(Kb, b)
    np.testing.assert_allclose(out, sums, rtol=1e-6)


class _GaussianModel(eqx.Module):
    kernel: LazyTensor

    def __call__(self, b):
        return (self.kernel * Vj(b)).sum(axis=1)


def test_equinox_module_field_through_filter_jit():
    x, y, b = _data(5)
    call = eqx.filter_jit(lambda model, b: model(b))
    np.testing.assert_allclose(call(_GaussianModel(_gaussian(x, y)), b),
                               _dense_gaussian_sum(x, y, b), rtol=1e-5)
    x2, y2, b2 = _data(6)
    np.testing.assert_allclose(call(_GaussianModel(_gaussian(x2, y2)), b2),
                               _dense_gaussian_sum(x2, y2, b2), rtol=1e-5)
    grads = eqx.filter_grad(lambda model: model(b).sum())(_GaussianModel(_gaussian(x, y)))
    assert isinstance(grads.kernel, LazyTensor)
    gx = jax.grad(lambda x: (_gaussian(x, y) * Vj(b)).sum(axis=1).sum())(x)
    np.testing.assert_allclose(grads.kernel.variables[0].array, gx, rtol=1e-5)


def test_static_argument_raises_instead_of_reusing_a_trace():
    f = jax.jit(lambda K: K.sum(axis=1), static_argnums=0)
    for seed in (7, 8, 9):  # three different LazyTensors: each call must raise, never be stale
        x, y, _ = _data(seed)
        with pytest.raises((TypeError, ValueError), match="hash"):
            f(_gaussian(x, y))


def test_no_truth_value_and_no_hash():
    x, y, _ = _data(10)
    K = _gaussian(x, y)
    with pytest.raises(TypeError, match="truth value of a LazyTensor is ambiguous"):
        bool(K == K)
    with pytest.raises(TypeError, match="truth value"):
        if K < 1.0:
            pass
    with pytest.raises(TypeError, match="unhashable"):
        hash(K)
    # The symbolic comparison itself still works: Equal(K, K) is 1 everywhere.
    np.testing.assert_allclose((K == K).sum(axis=1), np.full((37, 1), 29.0))


def test_param_and_weak_scalar_leaves():
    x, y, b = _data(11)
    K = (-Vi(x).sqdist(Vj(y)) * Pm(0.5)).exp() * Vj(b)
    K2 = jax.jit(lambda K: K)(K)
    assert K2.variables[2].weak  # the Python number stays weak through the round trip
    np.testing.assert_allclose(K2.sum(axis=1), K.sum(axis=1), rtol=1e-6)
