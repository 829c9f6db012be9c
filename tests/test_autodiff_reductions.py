"""Derivatives of every reduction family (logsumexp, softmax weights, min/max, K-min) against
dense jnp in float64: the tangents are jaxkeops reductions (or O(M) gathers), never M×N."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkeops import Pm, Vi, Vj
from jaxkeops.primitive import keops_reduce_p
from jaxkeops.reduction_derivatives import JVP_RULES
from jaxkeops.reductions import REDUCTIONS


def score(x, y, s):
    return -Vi(x).sqdist(Vj(y)) * Pm(s)


def score_dense(x, y, s):
    return -((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * s[0]


# name -> (jaxkeops function, dense function); arguments (x, y, w, s), w > 0 is indexed by j.
CASES = {
    "logsumexp_j": (lambda x, y, w, s: score(x, y, s).logsumexp(1),
                    lambda x, y, w, s: jax.scipy.special.logsumexp(score_dense(x, y, s), 1)[:, None]),
    "logsumexp_i": (lambda x, y, w, s: score(x, y, s).logsumexp(0),
                    lambda x, y, w, s: jax.scipy.special.logsumexp(score_dense(x, y, s), 0)[:, None]),
    "logsumexp_weight": (lambda x, y, w, s: score(x, y, s).logsumexp(1, weight=Vj(w)),
                         lambda x, y, w, s: jnp.log(jnp.exp(score_dense(x, y, s)) @ w)),
    "sumsoftmaxweight": (lambda x, y, w, s: score(x, y, s).sumsoftmaxweight(Vj(w), axis=1),
                         lambda x, y, w, s: jax.nn.softmax(score_dense(x, y, s), 1) @ w),
    "min_j": (lambda x, y, w, s: (Vi(x) - Vj(y)).min(1),
              lambda x, y, w, s: (x[:, None] - y[None]).min(1)),
    "min_i": (lambda x, y, w, s: (-score(x, y, s)).min(axis=0),
              lambda x, y, w, s: (-score_dense(x, y, s)).min(0)[:, None]),
    "max": (lambda x, y, w, s: (score(x, y, s) * Vj(w[:, :1])).max(1),
            lambda x, y, w, s: (score_dense(x, y, s) * w[None, :, 0]).max(1)[:, None]),
    "min_argmin": (lambda x, y, w, s: (-score(x, y, s)).min_argmin(1)[0],
                   lambda x, y, w, s: (-score_dense(x, y, s)).min(1)[:, None]),
    "kmin": (lambda x, y, w, s: (-score(x, y, s)).Kmin(4, axis=1),
             lambda x, y, w, s: jnp.sort(-score_dense(x, y, s), 1)[:, :4]),
    "kmin_vector": (lambda x, y, w, s: (Vi(x) - Vj(y)).Kmin(3, axis=0),
                    lambda x, y, w, s: jnp.sort(x[:, None] - y[None], 0)[:3].transpose(1, 0, 2)),
}
SELECTIONS = {"min_j", "min_i", "max", "min_argmin", "kmin", "kmin_vector"}


def _args(rng, M, N, D):
    return (rng.normal(size=(M, D)), rng.normal(size=(N, D)),
            rng.uniform(0.5, 1.5, size=(N, 3)), rng.uniform(0.3, 1.0, size=(1,)))


def _loss(f):
    return lambda *a: jnp.sum(jnp.sin(f(*a)))


def test_every_reduction_has_a_jvp_rule():
    assert set(JVP_RULES) == set(REDUCTIONS)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("M,N", [(10, 20), (200, 300)])
def test_gradients_match_dense(rng, name, M, N):
    f, g = CASES[name]
    args = _args(rng, M, N, 2)
    np.testing.assert_allclose(f(*args), g(*args), rtol=1e-12, atol=1e-12)
    for k in range(4):
        np.testing.assert_allclose(jax.grad(_loss(f), k)(*args), jax.grad(_loss(g), k)(*args),
                                   rtol=1e-9, atol=1e-11, err_msg=f"argument {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_higher_order_and_forward_modes(rng, name):
    f, g = CASES[name]
    args = _args(rng, 10, 20, 2)
    # jvp and vjp in all arguments
    tangents = tuple(rng.normal(size=np.shape(a)) for a in args)
    np.testing.assert_allclose(jax.jvp(f, args, tangents)[1], jax.jvp(g, args, tangents)[1],
                               rtol=1e-9, atol=1e-11)
    ct = rng.normal(size=np.shape(f(*args)))
    for a, b in zip(jax.vjp(f, *args)[1](ct), jax.vjp(g, *args)[1](ct)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    # jacfwd / jacrev in x, hessian in (x, s), third order in s, jvp of grad
    for jac in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(jac(f, 0)(*args), jac(g, 0)(*args), rtol=1e-9, atol=1e-11)
    for k in (0, 3):
        np.testing.assert_allclose(jax.hessian(_loss(f), k)(*args), jax.hessian(_loss(g), k)(*args),
                                   rtol=1e-8, atol=1e-10)
    x, y, w, s = args

    def third(fn):
        d1 = lambda s: jax.grad(_loss(fn), 3)(x, y, w, s).sum()  # noqa: E731
        d2 = lambda s: jax.grad(d1)(s).sum()  # noqa: E731
        return jax.grad(d2)(s)

    np.testing.assert_allclose(third(f), third(g), rtol=1e-8, atol=1e-10)
    t = rng.normal(size=x.shape)
    jg = lambda fn: jax.jvp(lambda x: jax.grad(_loss(fn), 0)(x, y, w, s), (x,), (t,))[1]  # noqa: E731
    np.testing.assert_allclose(jg(f), jg(g), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_grads(rng, name):
    f, _ = CASES[name]
    args = _args(rng, 6, 9, 2)
    # Selections are piecewise smooth: a small step keeps finite differences off the kinks.
    eps = 1e-6 if name in SELECTIONS else 1e-4
    check_grads(f, args, order=2, modes=("fwd", "rev"), eps=eps)


def test_masked_logsumexp_gradient_is_finite(rng):
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(7, 2))
    mask = np.zeros((7, 1))
    mask[3:] = -np.inf  # pairs with j >= 3 are masked out

    def f(x):
        return (-Vi(x).sqdist(Vj(y)) + Vj(mask)).logsumexp(1).sum()

    def g(x):
        return jax.scipy.special.logsumexp(-((x[:, None] - y[None, :3]) ** 2).sum(-1), 1).sum()

    np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-10)


def test_large_scores_stay_stable(rng):
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(8, 2))
    big = 1e4
    f = lambda x: (-Vi(x).sqdist(Vj(y)) * big).logsumexp(1).sum()  # noqa: E731
    g = lambda x: jax.scipy.special.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) * big, 1).sum()  # noqa: E731
    gf = jax.grad(f)(x)
    assert np.all(np.isfinite(gf))
    np.testing.assert_allclose(gf, jax.grad(g)(x), rtol=1e-8)


def test_gradient_jaxpr_has_only_reductions_and_linear_work(rng):
    M, N = 40, 50
    args = _args(rng, M, N, 3)
    for name in ("logsumexp_weight", "sumsoftmaxweight", "kmin"):
        jaxpr = jax.make_jaxpr(jax.grad(_loss(CASES[name][0]), argnums=(0, 1, 2, 3)))(*args)
        assert any(e.primitive is keops_reduce_p for e in jaxpr.jaxpr.eqns)

        def sizes(jaxpr):
            for eqn in jaxpr.eqns:
                for v in eqn.outvars:
                    yield int(np.prod(v.aval.shape))
                for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
                    yield from sizes(sub)

        assert max(sizes(jaxpr.jaxpr)) <= 16 * max(M, N), name
