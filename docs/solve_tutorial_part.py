"""jaxkeops tutorial, part "Solving linear systems" (standalone; to be merged into tutorial.py).

Run it: `python docs/solve_tutorial_part.py`. Like tutorial.py, every step checks its values
against a dense computation (numpy / jnp in float64), so the script doubles as a smoke test.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import LazyTensor

jax.config.update("jax_enable_x64", True)  # float64 for the dense checks below

M, D = 1000, 3
rng = np.random.default_rng(0)


def check(name, value, expected, rtol=1e-4):
    value, expected = np.asarray(value, np.float64), np.asarray(expected, np.float64)
    assert value.shape == expected.shape, (name, value.shape, expected.shape)
    err = np.abs(value - expected).max() / max(np.abs(expected).max(), 1e-30)
    assert err <= rtol, f"{name}: relative error {err:.2e}"
    print(f"{name:<55} shape {str(value.shape):<12} ok (rel. err {err:.1e})")


# --- Solving linear systems ----------------------------------------------------------------------
# For a symmetric positive definite symbolic matrix K (here a Gaussian kernel on one point cloud),
# `K.solve(b, alpha)` solves (alpha·Id + K) a = b by conjugate gradient; every iteration is one
# kernel product, so memory stays linear in M.
x = jnp.asarray(rng.normal(size=(M, D)), jnp.float32)  # random point cloud


def gaussian_kernel(x):
    x_i = LazyTensor(x[:, None, :])  # (M, 1, D) LazyTensor
    x_j = LazyTensor(x[None, :, :])  # (1, M, D) LazyTensor
    return (-((x_i - x_j) ** 2).sum(-1)).exp()  # symbolic (M, M) Gaussian kernel matrix


K_xx = gaussian_kernel(x)
alpha = 0.1  # "ridge" regularization
b_i = jnp.asarray(rng.normal(size=(M, 4)), jnp.float32)  # 4 right-hand sides, indexed by i
a_i, info = K_xx.solve(b_i, alpha=alpha, return_info=True)  # the 4 columns are solved together
print(f"a_i is a jax array of shape {a_i.shape}; {int(info.iterations)} iterations, "
      f"relative residuals {np.asarray(info.residual)}")

# Unlike KeOps, the iterations are bounded (by default 10·M) and the outcome is reported per
# column, as arrays that survive jit: info.status is 0 (converged), 1 (maxiter reached),
# 2 (the system is not positive definite) or 3 (a NaN or infinity appeared).
assert bool(info.converged), np.asarray(info.status)

# `K @ v` is the Sum reduction of K_ij v_j: check that (alpha·Id + K) a ≈ b.
c_i = alpha * a_i + K_xx @ a_i
mse = float(((c_i - b_i) ** 2).mean())
print(f"Mean squared reconstruction error: {mse:.2e}")
assert mse <= 1e-6

# The same solve with numpy on the dense (M, M) matrix, in float64.
x64 = np.asarray(x, np.float64)
K_dense = np.exp(-((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1))
a_dense = np.linalg.solve(alpha * np.eye(M) + K_dense, np.asarray(b_i, np.float64))
print(f"max |a_i - a_dense| = {np.abs(np.asarray(a_i) - a_dense).max():.1e}")
assert np.abs(np.asarray(a_i) - a_dense).max() <= 1e-3
check("K.solve(b, alpha) against numpy.linalg.solve", a_i, a_dense, rtol=1e-4)

# The transposed matrix: K.T (or K.t()) swaps the roles of i and j.
check("K_xx.T @ a_i (symmetric kernel: equals K_xx @ a_i)", K_xx.T @ a_i, K_dense @ np.asarray(
    a_i, np.float64))

# --- Differentiating through a solve --------------------------------------------------------------
# `solve` is differentiable (jax.grad, jax.jvp, any order) with respect to b, alpha and the
# arrays the kernel depends on. The derivative comes from a second solve (implicit
# differentiation), never from unrolling the CG loop.


def loss(x):
    return jnp.sum(gaussian_kernel(x).solve(b_i, alpha=alpha) ** 2)


g_i = jax.jit(jax.grad(loss))(x)
print(f"g_i = d/dx sum(a_i**2) is a jax array of shape {g_i.shape}")


def dense_loss(x):  # the same loss with a dense float64 solve
    K = jnp.exp(-((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return jnp.sum(jnp.linalg.solve(alpha * jnp.eye(M) + K, jnp.asarray(b_i, jnp.float64)) ** 2)


# Finite-difference check of the dense solve along a random direction u.
u = rng.normal(size=(M, D))
h = 1e-5
finite_difference = (dense_loss(x64 + h * u) - dense_loss(x64 - h * u)) / (2 * h)
check("<grad of sum(a**2) wrt. x, u> against finite differences", jnp.sum(g_i * u),
      finite_difference, rtol=1e-3)
print("solve tutorial part finished: all checks passed")
