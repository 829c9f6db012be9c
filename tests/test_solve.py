"""K @ v, transposition and K.solve against dense float64 jnp / numpy."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import LazyTensor, Pm, SolveInfo, Vi, Vj
from jaxkeops import solve as cg
from jaxkeops.primitive import keops_reduce_p

from oracle import assert_close


def gauss(x, y, s):
    return (-Vi(x).sqdist(Vj(y)) * Pm(s)).exp()


def gauss_dense(x, y, s):
    return jnp.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * s[0])


def dense_solve(x, s, alpha, b):
    return jnp.linalg.solve(alpha * jnp.eye(x.shape[0]) + gauss_dense(x, x, s), b)


def _points(rng, M, D, dtype=np.float64):
    return rng.normal(size=(M, D)).astype(dtype), rng.uniform(0.4, 1.0, size=(1,)).astype(dtype)


# --- K @ v and K.T ---------------------------------------------------------------------------


@pytest.mark.parametrize("M,N,D", [(1, 7, 1), (37, 53, 3), (300, 17, 2)])
@pytest.mark.parametrize("E", [None, 1, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_and_transpose(rng, M, N, D, E, dtype):
    x, y = rng.normal(size=(M, D)).astype(dtype), rng.normal(size=(N, D)).astype(dtype)
    s = np.array([0.5], dtype)
    K, K_dense = gauss(x, y, s), np.asarray(gauss_dense(x.astype(np.float64), y, s))
    v = rng.normal(size=(N,) if E is None else (N, E)).astype(dtype)
    w = rng.normal(size=(M,) if E is None else (M, E)).astype(dtype)
    out, out_t = K @ v, K.T @ w
    assert out.dtype == dtype and out_t.dtype == dtype
    assert_close(out, K_dense @ v, dtype, scale=np.abs(K_dense) @ np.abs(v) + 1e-300)
    assert_close(out_t, K_dense.T @ w, dtype, scale=np.abs(K_dense.T) @ np.abs(w) + 1e-300)
    assert K.T.shape == (N, M) and K.t().shape == (N, M)
    assert K.T.T.formula == K.formula


def test_transpose_swaps_categories(rng):
    x, y = rng.normal(size=(9, 2)), rng.normal(size=(4, 2))
    V = Vi(x) - Vj(y)  # (9, 4, 2)
    V_t = V.T  # (4, 9, 2): entry (a, b) is x_b - y_a
    assert V_t.shape == (4, 9, 2)
    np.testing.assert_allclose(V_t.sum(1), x.sum(0) - 9 * y, rtol=1e-12)
    np.testing.assert_allclose(V_t.sum(0), 4 * x - y.sum(0), rtol=1e-12)
    # combined with a LazyTensor built directly on the swapped roles: x_b - y_a + (y_a - x_b) = 0
    assert np.all(np.asarray((V_t + (Vi(y) - Vj(x))).sum(1)) == 0)
    # a parameter stays a parameter
    p = Pm(np.array([2.0]))
    np.testing.assert_allclose((Vi(x).sqnorm2() * p).T.sum(0), 2 * (x**2).sum(1)[:, None])


def test_matmul_errors():
    K = gauss(np.ones((5, 2)), np.ones((6, 2)), np.ones(1))
    with pytest.raises(ValueError, match=r"K @ v: v has shape \(5,\); expected \(6,\) or \(6, E\)"):
        K @ np.ones(5)
    with pytest.raises(ValueError, match=r"v has shape \(6, 2, 1\).*batch"):
        K @ np.ones((6, 2, 1))
    with pytest.raises(TypeError, match=r"v has dtype float32; expected float64"):
        K @ np.ones(6, np.float32)
    with pytest.raises(TypeError, match=r"v is a LazyTensor"):
        K @ Vj(np.ones((6, 1)))
    with pytest.raises(ValueError, match=r"K has shape \(5, 6, 2\).*scalar"):
        (Vi(np.ones((5, 2))) - Vj(np.ones((6, 2)))) @ np.ones(6)


# --- solve: values -----------------------------------------------------------------------------


@pytest.mark.parametrize("M,D", [(1, 1), (61, 2), (150, 5)])
@pytest.mark.parametrize("E", [None, 3])
def test_solve_matches_dense(rng, M, D, E):
    x, s = _points(rng, M, D)
    b = rng.normal(size=(M,) if E is None else (M, E))
    alpha = 0.3
    a, info = gauss(x, x, s).solve(b, alpha=alpha, eps=1e-12, return_info=True)
    ref = np.asarray(dense_solve(x, s, alpha, b))
    assert a.shape == b.shape
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
    assert isinstance(info, SolveInfo)
    assert info.status.shape == info.residual.shape == (() if E is None else (E,))
    assert bool(info.converged) and np.all(np.asarray(info.residual) <= 1e-12)
    assert 1 <= int(info.iterations) <= cg.default_maxiter(M)
    # the reported residual is the true one (recomputed densely)
    A = alpha * np.eye(M) + np.asarray(gauss_dense(x, x, s))
    true = np.linalg.norm((A @ np.asarray(a) - b).reshape(M, -1), axis=0) / np.linalg.norm(
        b.reshape(M, -1), axis=0)
    np.testing.assert_allclose(np.asarray(info.residual).reshape(-1), true, atol=1e-13)


def test_solve_float32(rng):
    M = 203
    x, s = _points(rng, M, 3, np.float32)
    b = rng.normal(size=(M, 2)).astype(np.float32)
    a, info = gauss(x, x, s).solve(b, alpha=0.5, return_info=True)
    assert a.dtype == np.float32 and info.residual.dtype == np.float32
    ref = np.asarray(dense_solve(x.astype(np.float64), s.astype(np.float64), 0.5, b))
    assert bool(info.converged)
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_solve_lazy_right_hand_sides(rng):
    """b as Vi(b): sum over j; as Vj(b): sum over i (the transposed system)."""
    M = 40
    x, s = _points(rng, M, 2)
    w = rng.uniform(0.5, 2.0, size=(M, 1))
    # K_ij = w_i G_ij w_j is symmetric; K.solve(Vj(b)) solves the system of K.T (same here) but
    # must read b along j.
    K = Vi(w) * gauss(x, x, s) * Vj(w)
    K_dense = w * np.asarray(gauss_dense(x, x, s)) * w.T
    b = rng.normal(size=(M, 2))
    ref = np.linalg.solve(0.2 * np.eye(M) + K_dense, b)
    for rhs in (b, Vi(b), Vj(b), LazyTensor(b[:, None, :]), LazyTensor(b[None, :, :])):
        np.testing.assert_allclose(K.solve(rhs, alpha=0.2, eps=1e-12), ref, atol=1e-9)


def _equations(jaxpr, into_solves=True):
    """Every equation of a jaxpr and of the jaxprs nested in it (jit, loops; optionally not
    those inside custom_linear_solve)."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name == "custom_linear_solve" and not into_solves:
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub, into_solves)


def test_solve_matrix_constant_along_an_axis(rng):
    """K_ij = c for all i, j (no i or j variable): the size comes from b."""
    M = 33
    c = rng.uniform(0.5, 2.0, size=(1,))
    b = rng.normal(size=(M, 2))
    a = Pm(c).solve(b, alpha=0.7, eps=1e-13)
    np.testing.assert_allclose(a, np.linalg.solve(0.7 * np.eye(M) + c[0], b), atol=1e-10)


def test_multiple_rhs_one_kernel_call_per_iteration(rng):
    x, s = _points(rng, 30, 2)
    b = rng.normal(size=(30, 4))
    jaxpr = jax.make_jaxpr(lambda b: gauss(x, x, s).solve(b, alpha=0.1))(b).jaxpr
    (solve_eqn,) = [e for e in _equations(jaxpr) if e.primitive.name == "custom_linear_solve"]
    solve_jaxpr = solve_eqn.params["jaxprs"].solve.jaxpr
    (loop,) = [e for e in solve_jaxpr.eqns if e.primitive is jax.lax.while_p]
    body = loop.params["body_jaxpr"].jaxpr
    assert [e.primitive for e in body.eqns].count(keops_reduce_p) == 1


# --- solve: stopping and reporting -----------------------------------------------------------


def test_zero_right_hand_side(rng):
    x, s = _points(rng, 20, 2)
    b = np.zeros((20, 2))
    b[:, 1] = rng.normal(size=20)
    a, info = gauss(x, x, s).solve(b, alpha=0.1, eps=1e-12, return_info=True)
    assert np.all(np.asarray(a[:, 0]) == 0) and np.all(np.asarray(info.status) == cg.CONVERGED)
    assert float(info.residual[0]) == 0.0
    np.testing.assert_allclose(a[:, 1], dense_solve(x, s, 0.1, b[:, 1]), atol=1e-9)


def test_maxiter_reached_is_reported_truthfully(rng):
    M = 120
    x, s = _points(rng, M, 2)
    b = rng.normal(size=(M, 2))
    a, info = jax.jit(lambda b: gauss(x, x, s).solve(b, alpha=1e-3, maxiter=3,
                                                    return_info=True))(b)
    assert int(info.iterations) == 3
    assert np.all(np.asarray(info.status) == cg.MAX_ITER) and not bool(info.converged)
    A = 1e-3 * np.eye(M) + np.asarray(gauss_dense(x, x, s))
    true = np.linalg.norm(A @ np.asarray(a) - b, axis=0) / np.linalg.norm(b, axis=0)
    np.testing.assert_allclose(info.residual, true, rtol=1e-6)
    assert np.all(true > 1e-6)


def test_negative_definite_system_stops_at_once(rng):
    x, s = _points(rng, 50, 2)
    b = rng.normal(size=(50,))
    a, info = (-gauss(x, x, s)).solve(b, alpha=1e-10, return_info=True)
    assert int(info.iterations) == 1 and int(info.status) == cg.NOT_POSITIVE_DEFINITE
    assert np.all(np.asarray(a) == 0)  # no update along a direction of negative curvature


def test_indefinite_system_stops_within_maxiter_and_reports_it(rng):
    M = 80
    x, s = _points(rng, M, 2)
    K_dense = np.asarray(gauss_dense(x, x, s))
    eigenvalues, vectors = np.linalg.eigh(K_dense)
    alpha = -float(np.median(eigenvalues)) - 1e-3  # αI + K has eigenvalues of both signs
    shifted = eigenvalues + alpha
    assert shifted.min() < 0 < shifted.max()
    # b mostly along a negative-curvature direction: bᵀ(αI+K)b < 0, met at the first step
    neg, pos = np.argmin(shifted), np.argmax(shifted)
    weight = 0.5 * np.sqrt(-shifted[neg] / shifted[pos])
    b_bad = vectors[:, neg] + weight * vectors[:, pos]
    a, info = gauss(x, x, s).solve(b_bad, alpha=alpha, return_info=True)
    assert int(info.status) == cg.NOT_POSITIVE_DEFINITE and int(info.iterations) == 1
    # a random b: CG may run into negative curvature later, or not; whatever happens it stops
    # within maxiter and only claims convergence when the answer is right
    b = rng.normal(size=(M, 3))
    a, info = gauss(x, x, s).solve(b, alpha=alpha, maxiter=40, eps=1e-10, return_info=True)
    assert int(info.iterations) <= 40
    A = alpha * np.eye(M) + K_dense
    true = np.linalg.norm(A @ np.asarray(a) - b, axis=0) / np.linalg.norm(b, axis=0)
    for status, residual in zip(np.asarray(info.status), true):
        assert status in (cg.CONVERGED, cg.MAX_ITER, cg.NOT_POSITIVE_DEFINITE)
        if status == cg.CONVERGED:
            assert residual <= 1e-8
    assert not bool(info.converged) or np.all(true <= 1e-8)


def test_non_finite_values_stop_and_are_reported(rng):
    x, s = _points(rng, 25, 2)
    b = rng.normal(size=(25, 2))
    b[3, 1] = np.nan
    a, info = gauss(x, x, s).solve(b, alpha=0.1, eps=1e-12, return_info=True)
    assert list(np.asarray(info.status)) == [cg.CONVERGED, cg.NOT_FINITE]
    np.testing.assert_allclose(a[:, 0], dense_solve(x, s, 0.1, b[:, 0]), atol=1e-9)
    x_bad = x.copy()
    x_bad[7, 0] = np.nan  # a NaN row and column of K: every column meets it at the first step
    a, info = jax.jit(lambda x: gauss(x, x, s).solve(b[:, 0], alpha=0.1, return_info=True))(x_bad)
    assert int(info.status) == cg.NOT_FINITE and int(info.iterations) == 1


def test_solve_errors():
    x = np.ones((5, 2))
    K = gauss(x, x, np.ones(1))
    with pytest.raises(ValueError, match=r"b has shape \(4,\); expected \(5,\) or \(5, E\)"):
        K.solve(np.ones(4))
    with pytest.raises(TypeError, match=r"b has dtype float32; expected float64"):
        K.solve(np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"square"):
        gauss(x, np.ones((6, 2)), np.ones(1)).solve(np.ones(5))
    with pytest.raises(ValueError, match=r"scalar LazyTensor"):
        (Vi(x) - Vj(x)).solve(np.ones(5))
    with pytest.raises(ValueError, match=r"single i variable"):
        K.solve(Vi(x).sqnorm2())
    with pytest.raises(TypeError, match=r"alpha has dtype float32; expected float64"):
        K.solve(np.ones(5), alpha=np.float32(0.1))
    with pytest.raises(ValueError, match=r"maxiter=-1"):
        K.solve(np.ones(5), maxiter=-1)
    with pytest.raises(ValueError, match=r"eps=-1"):
        K.solve(np.ones(5), eps=-1.0)


# --- solve: transformations ----------------------------------------------------------------


def test_solve_under_jit_with_traced_alpha(rng):
    M = 70
    x, s = _points(rng, M, 3)
    b = rng.normal(size=(M, 2))

    @jax.jit
    def f(x, s, alpha, b):
        return gauss(x, x, s).solve(b, alpha=alpha, eps=1e-12, return_info=True)

    a, info = f(x, s, jnp.float64(0.25), b)
    np.testing.assert_allclose(a, dense_solve(x, s, 0.25, b), atol=1e-9)
    assert bool(info.converged)


def test_solve_under_vmap(rng):
    M = 40
    x, s = _points(rng, M, 2)
    b = rng.normal(size=(3, M))
    alphas = np.array([0.1, 0.5, 2.0])
    a = jax.vmap(lambda al, b: gauss(x, x, s).solve(b, alpha=al, eps=1e-12))(alphas, b)
    ref = jax.vmap(lambda al, b: dense_solve(x, s, al, b))(alphas, b)
    np.testing.assert_allclose(a, ref, atol=1e-9)


def _loss(solver):
    return lambda x, s, alpha, b: jnp.sum(jnp.sin(solver(x, s, alpha, b)))


def keops_solver(x, s, alpha, b):
    return gauss(x, x, s).solve(b, alpha=alpha, eps=1e-13)


@pytest.mark.parametrize("M,E", [(60, 1), (143, 3)])
def test_gradients_wrt_points_bandwidth_alpha_and_b(rng, M, E):
    x, s = _points(rng, M, 2)
    args = (x, s, jnp.float64(0.2), rng.normal(size=(M, E)))
    g = jax.jit(jax.grad(_loss(keops_solver), argnums=(0, 1, 2, 3)))(*args)
    ref = jax.grad(_loss(dense_solve), argnums=(0, 1, 2, 3))(*args)
    for name, u, v in zip(("x", "bandwidth", "alpha", "b"), g, ref):
        err = np.abs(np.asarray(u) - v).max() / np.abs(v).max()
        assert err <= 1e-8, (name, err)


def test_forward_mode_and_second_order(rng):
    M = 50
    x, s = _points(rng, M, 2)
    b = rng.normal(size=(M, 2))
    args = (x, s, jnp.float64(0.3), b)
    tangents = (rng.normal(size=x.shape), rng.normal(size=(1,)), jnp.float64(0.7),
                rng.normal(size=b.shape))
    _, t = jax.jvp(keops_solver, args, tangents)
    _, t_ref = jax.jvp(dense_solve, args, tangents)
    np.testing.assert_allclose(t, t_ref, atol=1e-8 * np.abs(t_ref).max())

    def second(solver):  # d²/dα² and d²/(dα ds) of the loss, by reverse over reverse
        d_alpha = jax.grad(_loss(solver), argnums=2)
        return jax.grad(lambda al, s: d_alpha(x, s, al, b), argnums=(0, 1))(args[2], s)

    for u, v in zip(second(keops_solver), second(dense_solve)):
        np.testing.assert_allclose(u, v, rtol=1e-7)


def test_gradient_does_not_unroll_the_loop(rng):
    """The backward pass is a solve (custom_linear_solve), not a differentiated while loop."""
    x, s = _points(rng, 30, 2)
    b = rng.normal(size=(30, 2))
    jaxpr = jax.make_jaxpr(jax.grad(_loss(keops_solver), argnums=(0, 3)))(x, s, 0.2, b).jaxpr
    names = [e.primitive.name for e in _equations(jaxpr, into_solves=False)]
    assert names.count("custom_linear_solve") >= 2  # the solve and the solve of its transpose
    assert "while" not in names and "scan" not in names


# --- lineax adapter ----------------------------------------------------------------------------


def test_lineax_operator(rng):
    lx = pytest.importorskip("lineax")
    from jaxkeops import lineax_operator

    M = 45
    x, s = _points(rng, M, 2)
    b = rng.normal(size=(M,))

    def solve(x, b):
        op = lineax_operator(gauss(x, x, s), alpha=0.4, symmetric=True,
                             positive_semidefinite=True)
        return lx.linear_solve(op, b, solver=lx.CG(rtol=1e-12, atol=1e-12)).value

    np.testing.assert_allclose(solve(x, b), dense_solve(x, s, 0.4, b), atol=1e-9)
    loss = lambda solver: lambda x, b: jnp.sum(jnp.sin(solver(x, b)))  # noqa: E731
    g = jax.grad(loss(solve), argnums=(0, 1))(x, b)
    ref = jax.grad(loss(lambda x, b: dense_solve(x, s, 0.4, b)), argnums=(0, 1))(x, b)
    for u, v in zip(g, ref):
        np.testing.assert_allclose(u, v, atol=1e-8 * np.abs(v).max())
    rect = lineax_operator(gauss(x, x[:7], s))  # (45, 7): input (7,), output (45,)
    v = rng.normal(size=(7,))
    np.testing.assert_allclose(rect.mv(v), gauss_dense(x, x[:7], s) @ v, rtol=1e-12)
    with pytest.raises(ValueError, match=r"square"):
        lineax_operator(gauss(x, x[:7], s), alpha=1.0)


# --- solve with batch dims, and the non-convergence warning ------------------------------------


def _batched_gauss(x, s):
    """K of shape (*B, M, M) from x shaped (*B, M, D) and a scale s shaped (*B', 1, 1, 1)."""
    xi = LazyTensor(x[..., :, None, :])
    xj = LazyTensor(x[..., None, :, :])
    return (-((xi - xj) ** 2).sum(-1) / LazyTensor(s)).exp()


@pytest.mark.parametrize("vector", [True, False])
def test_batched_solve_matches_numpy_per_batch(rng, vector):
    B, M, D, E = (2, 3), 23, 3, 4
    x = rng.standard_normal(B + (M, D))
    s = rng.uniform(0.5, 2.0, (2, 1, 1, 1, 1))  # broadcast over the second batch dim
    b = rng.standard_normal((2, 1, M) if vector else (1, 3, M, E))  # broadcast batch dims too
    K = _batched_gauss(x, s)
    assert K.shape == B + (M, M)
    a, info = K.solve(b, alpha=0.3, eps=1e-12, return_info=True)
    assert a.shape == B + ((M,) if vector else (M, E))
    assert info.status.shape == B + (() if vector else (E,))
    assert bool(info.converged)
    for p in range(B[0]):
        for q in range(B[1]):
            d2 = ((x[p, q][:, None] - x[p, q][None]) ** 2).sum(-1)
            dense = 0.3 * np.eye(M) + np.exp(-d2 / s[p, 0, 0, 0, 0])
            rhs = b[p, 0] if vector else b[0, q]
            np.testing.assert_allclose(a[p, q], np.linalg.solve(dense, rhs), rtol=1e-7, atol=1e-9)


def test_batched_solve_gradient(rng):
    B, M = 3, 11
    x = rng.standard_normal((B, M, 2))
    b = rng.standard_normal((B, M))
    s = np.ones((1, 1, 1, 1))

    def loss(b):
        return (_batched_gauss(x, s).solve(b, alpha=0.5, eps=1e-12) ** 2).sum()

    g = jax.grad(loss)(b)
    for p in range(B):
        A = 0.5 * np.eye(M) + np.exp(-((x[p][:, None] - x[p][None]) ** 2).sum(-1))
        a = np.linalg.solve(A, b[p])
        np.testing.assert_allclose(g[p], 2 * np.linalg.solve(A, a), rtol=1e-6)


def test_batched_solve_bad_shapes(rng):
    K = _batched_gauss(rng.standard_normal((2, 5, 3)), np.ones((1, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"b has shape \(5,\); expected \(2, 5,\) or \(2, 5, E\)"):
        K.solve(np.ones(5))
    with pytest.raises(ValueError, match="batch dims equal to K's or 1"):
        K.solve(np.ones((3, 5)))


def test_unconverged_solve_warns_unless_info_is_asked(rng):
    M = 17
    x = rng.standard_normal((M, 2))
    K = gauss(x, x, np.ones(1))
    b = rng.standard_normal(M)
    with pytest.warns(RuntimeWarning, match="did not converge.*not positive definite.*"
                                            "return_info=True"):
        a = K.solve(b, alpha=-5.0)  # indefinite: alpha·I + K has negative eigenvalues
        jax.block_until_ready(a)
        jax.effects_barrier()
    with pytest.warns(RuntimeWarning, match="maximum number of iterations"):
        jax.block_until_ready(jax.jit(lambda b: K.solve(b, alpha=1e-3, maxiter=2))(b))
        jax.effects_barrier()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged, or info asked for: no warning
        jax.block_until_ready(K.solve(b, alpha=1.0))
        jax.block_until_ready(K.solve(b, alpha=-5.0, return_info=True))
        jax.effects_barrier()
