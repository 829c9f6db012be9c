"""Derivatives of Sum reductions against dense float64 jnp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkeops import Pm, Vi, Vj
from jaxkeops.primitive import keops_reduce_p


def gauss_keops(x, y, b, s, axis=1):
    K = (-Vi(x).sqdist(Vj(y)) * Pm(s)).exp()
    return (K * (Vj(b) if axis == 1 else Vi(b))).sum(axis)


def gauss_dense(x, y, b, s, axis=1):
    K = jnp.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * s[0])
    return K @ b if axis == 1 else K.T @ b


def loss(fn, **kw):
    return lambda *a: jnp.sum(jnp.sin(fn(*a, **kw)))


def _args(rng, M, N, D, E, axis):
    return (
        rng.normal(size=(M, D)),
        rng.normal(size=(N, D)),
        rng.normal(size=(N if axis == 1 else M, E)),
        rng.uniform(0.3, 1.0, size=(1,)),
    )


@pytest.mark.parametrize("M,N,D", [(10, 20, 2), (200, 300, 2), (1, 7, 1)])
@pytest.mark.parametrize("axis", [0, 1])
def test_grad_all_arguments(rng, M, N, D, axis):
    args = _args(rng, M, N, D, 2, axis)
    for k in range(4):
        g = jax.grad(loss(gauss_keops, axis=axis), argnums=k)(*args)
        ref = jax.grad(loss(gauss_dense, axis=axis), argnums=k)(*args)
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("axis", [0, 1])
def test_jvp_and_vjp(rng, axis):
    args = _args(rng, 12, 17, 3, 2, axis)
    tangents = tuple(rng.normal(size=np.shape(a)) for a in args)
    out, t = jax.jvp(lambda *a: gauss_keops(*a, axis=axis), args, tangents)
    out_ref, t_ref = jax.jvp(lambda *a: gauss_dense(*a, axis=axis), args, tangents)
    np.testing.assert_allclose(out, out_ref, rtol=1e-12)
    np.testing.assert_allclose(t, t_ref, rtol=1e-10, atol=1e-12)
    ct = rng.normal(size=out.shape)
    vjp = jax.vjp(lambda *a: gauss_keops(*a, axis=axis), *args)[1](ct)
    vjp_ref = jax.vjp(lambda *a: gauss_dense(*a, axis=axis), *args)[1](ct)
    for a, b in zip(vjp, vjp_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_check_grads_second_order(rng):
    args = _args(rng, 6, 9, 2, 1, 1)
    check_grads(gauss_keops, args, order=2, modes=("fwd", "rev"))


def test_third_order_in_parameter(rng):
    x, y, b, s = _args(rng, 10, 20, 2, 1, 1)

    def third(fn):
        f = lambda s: loss(fn)(x, y, b, s)  # noqa: E731
        d1 = lambda s: jax.grad(f)(s).sum()  # noqa: E731
        d2 = lambda s: jax.grad(d1)(s).sum()  # noqa: E731
        return jax.grad(d2)(s)

    np.testing.assert_allclose(third(gauss_keops), third(gauss_dense), rtol=1e-9)


def test_jvp_of_grad(rng):
    args = _args(rng, 10, 20, 2, 1, 1)
    t = rng.normal(size=args[0].shape)
    f = lambda fn: lambda x: jax.grad(loss(fn), argnums=0)(x, *args[1:])  # noqa: E731
    _, jg = jax.jvp(f(gauss_keops), (args[0],), (t,))
    _, jg_ref = jax.jvp(f(gauss_dense), (args[0],), (t,))
    np.testing.assert_allclose(jg, jg_ref, rtol=1e-9, atol=1e-12)


def test_grad_jaxpr_holds_only_reductions_and_linear_work(rng):
    M, N = 50, 70
    args = _args(rng, M, N, 3, 1, 1)
    jaxpr = jax.make_jaxpr(jax.grad(loss(gauss_keops), argnums=(0, 1, 2, 3)))(*args)
    for eqn in jaxpr.jaxpr.eqns:
        for v in eqn.outvars:
            size = int(np.prod(v.aval.shape)) if v.aval.shape else 1
            assert size <= 3 * max(M, N), (eqn.primitive, v.aval.shape)
    reductions = [e for e in jaxpr.jaxpr.eqns if e.primitive is keops_reduce_p]
    assert len(reductions) >= 2
