"""LazyTensor.grad / .diff / .grad_matrix (KeOps' symbolic derivatives) against jax derivatives
of the dense float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import Genred, LazyTensor, Pm, Vi, Vj

M, N, D = 9, 13, 3  # not multiples of any tile size


def _dense_f(x, y, p):
    """The dense (M, N, D) matrix of F(x_i, y_j, p) = sin(x_i * p - y_j) * exp(-|x_i - y_j|²)."""
    diff = x[:, None, :] - y[None, :, :]
    gauss = jnp.exp(-jnp.sum(diff ** 2, -1, keepdims=True))
    return jnp.sin(x[:, None, :] * p - y[None, :, :]) * gauss


def _lazy_f(xi, yj, pm):
    return (xi * pm - yj).sin() * (-xi.sqdist(yj)).exp()


def _inputs(rng, m=M, n=N, d=D):
    return (rng.uniform(-1, 1, (m, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(0.5, 1.5, (d,)),
            rng.normal(size=(m, d)), rng.normal(size=(n, d)))


@pytest.mark.parametrize("m,n", [(M, N), (1, 1)])
def test_grad_in_i_variable_summed_over_j(rng, m, n):
    x, y, p, e, _ = _inputs(rng, m, n)
    xi = Vi(x)
    F = _lazy_f(xi, Vj(y), Pm(p))
    # The gradient in x_i of Σ_ij <F_ij, e_i>, row by row: Σ_j of F.grad(x, e).
    ours = F.grad(xi, Vi(e)).sum(axis=1)
    want = jax.grad(lambda x: jnp.sum(_dense_f(x, y, p) * e[:, None, :]))(x)
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-12)
    assert F.grad(xi, Vi(e)).ndim == D


def test_grad_in_j_variable_and_parameter(rng):
    x, y, p, e, _ = _inputs(rng)
    yj, pm = Vj(y), Pm(p)
    F = _lazy_f(Vi(x), yj, pm)
    ours_y = F.grad(yj, Vi(e)).sum(axis=0)
    ours_p = F.grad(pm, Vi(e)).sum(axis=0).sum(axis=0)  # Σ_j Σ_i: a parameter's gradient
    dense = lambda y, p: jnp.sum(_dense_f(x, y, p) * e[:, None, :])
    want_y, want_p = jax.grad(dense, argnums=(0, 1))(y, p)
    np.testing.assert_allclose(ours_y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours_p, want_p, rtol=1e-12, atol=1e-12)


def test_grad_of_scalar_formula_with_scalar_gradin_and_second_order(rng):
    x, y, _, _, b = _inputs(rng, d=2)
    xi, yj = Vi(x), Vj(y)
    K = (-xi.sqdist(yj)).exp()  # scalar formula: gradin is a scalar (here a j variable b[:, :1])
    w = b[:, :1]
    g = K.grad(xi, Vj(w))
    dense_k = lambda x: jnp.exp(-jnp.sum((x[:, None] - y[None]) ** 2, -1))
    np.testing.assert_allclose(g.sum(axis=1), jax.grad(lambda x: jnp.sum(dense_k(x) * w[:, 0]))(x),
                               rtol=1e-12, atol=1e-12)
    # The derivative is a formula like any other: differentiate it again, symbolically...
    u = rng.normal(size=x.shape)
    h = g.grad(xi, Vi(u)).sum(axis=1)
    hvp = jax.jvp(jax.grad(lambda x: jnp.sum(dense_k(x) * w[:, 0])), (x,), (u,))[1]
    np.testing.assert_allclose(h, hvp, rtol=1e-11, atol=1e-11)
    # ... or with jax.grad through its reduction.
    def grad_sum(x):
        xi = Vi(x)
        return (-xi.sqdist(Vj(y))).exp().grad(xi, Vj(w)).sum(axis=1)

    via_jax = jax.grad(lambda x: jnp.sum(grad_sum(x) * u))(x)
    np.testing.assert_allclose(via_jax, hvp, rtol=1e-11, atol=1e-11)


def test_diff_is_the_forward_derivative(rng):
    x, y, p, u, _ = _inputs(rng)
    xi = Vi(x)
    F = _lazy_f(xi, Vj(y), Pm(p))
    ours = F.diff(xi, Vi(u)).sum(axis=1)
    want = jax.jvp(lambda x: jnp.sum(_dense_f(x, y, p), axis=1), (x,), (u,))[1]
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-12)
    assert F.diff(xi, Vi(u)).ndim == D


def test_grad_matrix_is_the_transposed_jacobian_row_by_row(rng):
    x, y, p, _, _ = _inputs(rng, m=4, n=5, d=2)
    xi = Vi(x)
    F = _lazy_f(xi, Vj(y), Pm(p))
    J = F.grad_matrix(xi)
    assert J.ndim == 4
    ours = np.asarray(J.sum(axis=1)).reshape(4, 2, 2)  # [i, k (coordinate of F), l (of x)]
    jac = jax.jacobian(lambda x: jnp.sum(_dense_f(x, y, p), axis=1))(x)  # [i, k, i', l]
    want = np.einsum("ikil->ikl", np.asarray(jac))
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-12)


def test_derivative_in_another_variable_is_refused_not_zero(rng):
    x, y, _, e, _ = _inputs(rng)
    F = Vi(x).sqnorm2() * Vj(y).sum(-1)
    # Vi(x) written again is another variable (as pykeops: variables are matched by identity).
    with pytest.raises(ValueError, match=r"grad\(v, gradin\): v is not a variable of this"):
        F.grad(Vi(x), Vi(e[:, :1]))
    with pytest.raises(ValueError, match=r"diff\(v, diffin\): v is not a variable of this"):
        F.diff(Vj(y), Vj(e[:2]))


def test_same_as_formula_string_grad_and_diff(rng):
    x, y, p, e, _ = _inputs(rng)
    xi, yj, ei = Vi(x), Vj(y), Vi(e)
    F = (-xi.sqdist(yj)).exp() * xi
    aliases = ["x = Vi(3)", "y = Vj(3)", "e = Vi(3)"]
    for method, text in (("grad", "Grad(Exp(-SqDist(x, y)) * x, x, e)"),
                         ("diff", "Diff(Exp(-SqDist(x, y)) * x, x, e)")):
        ours = getattr(F, method)(xi, ei).sum(axis=1)
        np.testing.assert_array_equal(ours, Genred(text, aliases, axis=1)(x, y, e))


def test_bad_arguments_are_named(rng):
    x, y, _, e, _ = _inputs(rng)
    xi = Vi(x)
    F = (xi - Vj(y)).sqnorm2()
    with pytest.raises(TypeError, match=r"grad\(v, gradin\): v is a LazyTensor with formula"):
        F.grad(xi * 2, Vi(e[:, :1]))
    with pytest.raises(TypeError, match=r"v is a ndarray"):
        F.grad(x, Vi(e[:, :1]))
    with pytest.raises(ValueError, match=r"gradin has dimension 3; expected 1"):
        F.grad(xi, Vi(e))
    with pytest.raises(ValueError, match=r"diffin has dimension 1; expected 3"):
        F.diff(xi, Vi(e[:, :1]))
