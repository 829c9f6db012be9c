"""Conjugate-gradient solves of (αI + K) a = b, differentiable by implicit differentiation.

`ridge_solve` is the engine behind `LazyTensor.solve`. It knows nothing about formulas: it gets
the kernel product a ↦ K a (one Sum reduction for all columns of a) and wraps the conjugate
gradient loop in `lax.custom_linear_solve(..., symmetric=True)`. JAX then never differentiates
through the loop: the tangent of the solution is another solve, whose right-hand side holds the
tangent of the kernel product (a Sum reduction again), and a cotangent is one solve with the
cotangent as right-hand side. That holds at every order, under jit and under vmap.

Differences from KeOps' conjugate gradient (same update formulas otherwise):

- Columns of b are separate systems, each with its own step sizes and its own stopping test
  ‖r_e‖ ≤ eps·‖b_e‖ (KeOps runs one CG on all columns stacked, stopping when the mean squared
  residual over all of them is below eps²). All active columns share one kernel call per
  iteration; a column that has stopped is frozen (its search direction is zeroed).
- The number of iterations is bounded: `maxiter`, by default `default_maxiter(n) = 10·n` for n
  unknowns per column (the convention of scipy's and jax.scipy's cg; exact arithmetic needs at
  most n). KeOps loops until convergence, forever on a system that is not positive definite.
- A column also stops, and says so, on non-positive curvature pᵀ(αI + K)p ≤ 0 (the system is not
  positive definite) and on a non-finite value; the offending update is not applied.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Per-column outcome of a solve (SolveInfo.status).
CONVERGED = 0  # ‖r‖ ≤ eps·‖b‖
MAX_ITER = 1  # maxiter iterations done without converging
NOT_POSITIVE_DEFINITE = 2  # a search direction p had pᵀ(αI + K)p ≤ 0
NOT_FINITE = 3  # b, the kernel product or an update was NaN or infinite
_ACTIVE = -1  # internal: still iterating

STATUS_NAMES = {
    CONVERGED: "converged",
    MAX_ITER: "maximum number of iterations reached",
    NOT_POSITIVE_DEFINITE: "system not positive definite",
    NOT_FINITE: "non-finite value",
}


class SolveInfo(NamedTuple):
    """What a solve did, as arrays (usable under jit and vmap).

    iterations: int32 scalar, the CG iterations done (one kernel product each).
    residual:   per column (shape (E,), or () for a 1-d b), the relative residual ‖r‖ / ‖b‖ of
                the returned solution as CG tracks it (its recurrence, not a recomputation; 0 for
                a zero column of b).
    status:     per column, CONVERGED, MAX_ITER, NOT_POSITIVE_DEFINITE or NOT_FINITE
                (`jaxkeops.solve.STATUS_NAMES` spells them out).
    """

    iterations: jax.Array
    residual: jax.Array
    status: jax.Array

    @property
    def converged(self) -> jax.Array:
        """True when every column converged."""
        return jnp.all(self.status == CONVERGED)


def default_maxiter(n: int) -> int:
    """Default iteration bound for n unknowns per column: 10·n (at least 10)."""
    return max(10, 10 * int(n))


def conjugate_gradient(matvec: Callable, b: jax.Array, *, eps, maxiter: int):
    """Solve matvec(a) = b column by column for b shaped (n, E), starting from a = 0.

    `matvec` must map (n, E) to (n, E) column by column (one kernel call for all columns).
    Returns (a, (iterations, relative residual (E,), status (E,)))."""
    b_norm2 = jnp.sum(b * b, axis=0)
    tolerance2 = (eps * eps) * b_norm2
    start_status = jnp.where(
        ~jnp.isfinite(b_norm2), NOT_FINITE, jnp.where(b_norm2 <= tolerance2, CONVERGED, _ACTIVE)
    ).astype(jnp.int32)

    def keep_going(state):
        iteration, _, _, _, _, status = state
        return (iteration < maxiter) & jnp.any(status == _ACTIVE)

    def step(state):
        iteration, a, r, p, r_norm2, status = state
        active = status == _ACTIVE
        p = jnp.where(active, p, 0)  # stopped columns cost nothing and cannot spread NaNs
        Ap = matvec(p)
        curvature = jnp.sum(p * Ap, axis=0)
        step_size = r_norm2 / jnp.where(curvature > 0, curvature, 1)
        a_new = a + step_size * p
        r_new = r - step_size * Ap
        r_norm2_new = jnp.sum(r_new * r_new, axis=0)
        finite = (
            jnp.isfinite(curvature) & jnp.isfinite(r_norm2_new) & jnp.all(jnp.isfinite(a_new), 0)
        )
        not_finite = active & ~finite
        not_pd = active & finite & (curvature <= 0)
        update = active & finite & (curvature > 0)
        converged = update & (r_norm2_new <= tolerance2)
        beta = r_norm2_new / jnp.where(r_norm2 > 0, r_norm2, 1)
        p_new = r_new + beta * p
        status = jnp.where(not_finite, NOT_FINITE, status)
        status = jnp.where(not_pd, NOT_POSITIVE_DEFINITE, status)
        status = jnp.where(converged, CONVERGED, status).astype(jnp.int32)
        return (
            iteration + 1,
            jnp.where(update, a_new, a),
            jnp.where(update, r_new, r),
            jnp.where(update, p_new, p),
            jnp.where(update, r_norm2_new, r_norm2),
            status,
        )

    state = (jnp.zeros((), jnp.int32), jnp.zeros_like(b), b, b, b_norm2, start_status)
    iterations, a, _, _, r_norm2, status = lax.while_loop(keep_going, step, state)
    status = jnp.where(status == _ACTIVE, MAX_ITER, status).astype(jnp.int32)
    residual = jnp.sqrt(r_norm2) / jnp.where(b_norm2 > 0, jnp.sqrt(b_norm2), 1)
    return a, (iterations, residual, status)


def ridge_solve(kernel_product: Callable, b: jax.Array, alpha, *, eps, maxiter: int):
    """Solve (αI + K) a = b for b shaped (n, E), K given by `kernel_product(a) = K a`.

    K must be symmetric (for implicit differentiation) and αI + K positive definite (for CG).
    Returns (a, SolveInfo)."""

    def matvec(a):
        return alpha * a + kernel_product(a)

    # custom_linear_solve also runs `solver` for tangent and cotangent solves (info dropped).
    solver = functools.partial(conjugate_gradient, eps=eps, maxiter=maxiter)
    a, (iterations, residual, status) = lax.custom_linear_solve(
        matvec, b, solve=solver, symmetric=True, has_aux=True
    )
    return a, SolveInfo(iterations, residual, status)


def warn_unless_converged(status) -> None:
    """Warn from the host when a solve whose info the caller did not ask for did not converge
    (under jit only then; under vmap the host sees every status and still warns only then)."""

    def report(status):
        status = np.asarray(status)
        failed = status != CONVERGED
        if failed.any():
            reasons = ", ".join(sorted({STATUS_NAMES[int(s)] for s in status[failed]}))
            warnings.warn(
                f"jaxkeops solve: {int(failed.sum())} of {status.size} system column(s) did not "
                f"converge ({reasons}); the returned solution is not accurate. Pass "
                "return_info=True to get a jaxkeops.SolveInfo (iterations, residual, status per "
                "column) and handle it, or raise maxiter / eps.",
                RuntimeWarning,
                stacklevel=2,
            )

    jax.lax.cond(jnp.any(status != CONVERGED),
                 lambda s: jax.debug.callback(report, s), lambda s: None, status)
