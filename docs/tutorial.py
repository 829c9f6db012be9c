"""jaxkeops tutorial: symbolic matrices and their reductions, the steps of the KeOps "fancy
reductions" walk-through (Sum, LogSumExp, Min/Max and their arg versions, K-min, SumSoftMaxWeight;
then linear solves).

Run it: `python docs/tutorial.py`. Every step prints the shapes it gets and checks the values
against a dense jnp computation, so the script doubles as a smoke test of the installation.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import LazyTensor, Vi, Vj

jax.config.update("jax_enable_x64", True)  # float64 for the dense checks below

M, N, D = 1000, 2000, 3
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(M, D)), jnp.float32)
y = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)


def check(name, value, expected, rtol=1e-4):
    value, expected = np.asarray(value, np.float64), np.asarray(expected, np.float64)
    assert value.shape == expected.shape, (name, value.shape, expected.shape)
    err = np.abs(value - expected).max() / max(np.abs(expected).max(), 1e-30)
    assert err <= rtol, f"{name}: relative error {err:.2e}"
    print(f"{name:<55} shape {str(value.shape):<12} ok (rel. err {err:.1e})")


# --- Symbolic matrices ---------------------------------------------------------------------------
# An (M, 1, D) array is indexed by i, a (1, N, D) array by j. Operations build a formula;
# nothing of size M×N is computed or stored.
x_i = LazyTensor(x[:, None, :])  # (M, 1, D) LazyTensor
y_j = LazyTensor(y[None, :, :])  # (1, N, D) LazyTensor

V_ij = x_i - y_j  # (M, N, D) symbolic tensor of differences
S_ij = (V_ij**2).sum(-1)  # (M, N) symbolic matrix of squared distances
print(S_ij)
print(V_ij)

# The same dense quantities, for checking (fine at this size; impossible at M = N = 10^6).
x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
V_dense = x64[:, None, :] - y64[None, :, :]
S_dense = (V_dense**2).sum(-1)

# --- Sum reductions ------------------------------------------------------------------------------
# Reduce over j with axis=1 (or dim=1), over i with axis=0: results are plain jax arrays.
check("Sum reduction of S_ij wrt. the 'N' dimension", S_ij.sum(dim=1), S_dense.sum(1)[:, None])
check("Sum reduction of V_ij wrt. the 'M' dimension", V_ij.sum(axis=0), V_dense.sum(0))

# A Gaussian kernel product a_i = sum_j exp(-|x_i - y_j|^2) b_j, jitted: LazyTensors are built
# inside the function from (traced) arrays, like any jnp code.
b = jnp.asarray(rng.normal(size=(N, 4)), jnp.float32)


@jax.jit
def gaussian_product(x, y, b):
    K_ij = (-Vi(x).sqdist(Vj(y))).exp()
    return (K_ij * Vj(b)).sum(axis=1)


check("Gaussian kernel product (jit), sum over j", gaussian_product(x, y, b),
      np.exp(-S_dense) @ np.asarray(b, np.float64))
# --- LogSumExp: a stable log-sum-exp over i or j -----------------------------------------------
# log sum_i exp(S_ij), computed with a running maximum inside the kernel: scores of any magnitude
# neither overflow nor vanish. S must be scalar; the result keeps a trailing dim of 1.
def dense_logsumexp(s, axis):
    m = s.max(axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(s - m).sum(axis))


check("LogSumExp reduction of S_ij wrt. the 'M' dimension", S_ij.logsumexp(dim=0),
      dense_logsumexp(S_dense, 0)[:, None])

# With a weight w_ij (scalar or vector), log sum_j exp(S_ij) w_ij: here w_ij = exp(V_ij) > 0
# (where a weighted sum is negative its log is NaN).
W_ij = V_ij.exp()
W_dense = np.exp(V_dense)
m_dense = S_dense.max(1, keepdims=True)
check("LogSumExp of S_ij, with 'weight' exp(V_ij), wrt. 'N'",
      S_ij.logsumexp(dim=1, weight=W_ij),
      m_dense + np.log((np.exp(S_dense - m_dense)[:, :, None] * W_dense).sum(1)))

# Masked pairs are -inf scores: they count for nothing (log 0 = -inf here masks every j >= N/2).
mask_j = Vj(jnp.asarray((np.arange(N) < N // 2)[:, None], jnp.float32))
check("LogSumExp of S_ij with half of the j's masked (-inf)",
      (-S_ij + mask_j.log()).logsumexp(dim=1), dense_logsumexp(-S_dense[:, : N // 2], 1)[:, None])

# --- Min, Max and their arg versions ------------------------------------------------------------
# Per component, following NumPy; indices are int32 (int64 with jax_enable_x64, as here) and ties
# go to the lowest index. float32 may order near-ties differently from the float64 check, so
# indices are checked through the dense values they point at.
def values_at(dense, index, axis):
    """dense[i, index[i, ...], ...] for indices of a reduction over j (axis=1), or over i."""
    d3 = dense if dense.ndim == 3 else dense[..., None]
    d3 = d3 if axis == 1 else d3.transpose(1, 0, 2)
    index = np.asarray(index)
    assert index.dtype == np.int64
    idx3 = index.reshape(index.shape[0], -1, d3.shape[2])
    return np.take_along_axis(d3, idx3, axis=1).reshape(index.shape)


check("Min    reduction of S_ij wrt. the 'M' dimension", S_ij.min(dim=0), S_dense.min(0)[:, None])
check("ArgMin reduction of S_ij wrt. the 'N' dimension",
      values_at(S_dense, S_ij.argmin(dim=1), 1), S_dense.min(1)[:, None])
check("Max    reduction of V_ij wrt. the 'M' dimension", V_ij.max(dim=0), V_dense.max(0))
check("ArgMax reduction of V_ij wrt. the 'N' dimension",
      values_at(V_dense, V_ij.argmax(dim=1), 1), V_dense.max(1))

# Both quantities in a single pass:
m_i, s_i = S_ij.min_argmin(dim=0)
check("Min-ArgMin reduction on S_ij wrt. 'M': min", m_i, S_dense.min(0)[:, None])
check("Min-ArgMin reduction on S_ij wrt. 'M': argmin", values_at(S_dense, s_i, 0), m_i)
m_i, s_i = V_ij.max_argmax(dim=1)
check("Max-ArgMax reduction on V_ij wrt. 'N': max", m_i, V_dense.max(1))
check("Max-ArgMax reduction on V_ij wrt. 'N': argmax", values_at(V_dense, s_i, 1), m_i)

# --- K-min: the K smallest values and their indices (K-nearest neighbours) -----------------------
# Ascending; (M, K) for a scalar formula, (M, K, D) for a vector one (per component).
K = 5
check("KMin    reduction of S_ij wrt. the 'M' dimension", S_ij.Kmin(K=K, dim=0),
      np.sort(S_dense, 0)[:K].T)
check("ArgKMin reduction of S_ij wrt. the 'N' dimension",
      values_at(S_dense, S_ij.argKmin(K=K, dim=1), 1), np.sort(S_dense, 1)[:, :K])

# It even works on vector formulas:
K = 7
check("KMin    reduction of V_ij wrt. the 'M' dimension", V_ij.Kmin(K=K, dim=0),
      np.sort(V_dense, 0)[:K].transpose(1, 0, 2))
check("ArgKMin reduction of V_ij wrt. the 'N' dimension",
      values_at(V_dense, V_ij.argKmin(K=K, dim=1), 1), np.sort(V_dense, 1)[:, :K])

# A K-nearest-neighbour search, jitted: the values and the indices in one pass.
knn = jax.jit(lambda x, y: Vi(x).sqdist(Vj(y)).Kmin_argKmin(K=3, axis=1))
d_knn, i_knn = knn(x, y)
check("3 nearest neighbours (jit): squared distances", d_knn, np.sort(S_dense, 1)[:, :3])
check("3 nearest neighbours (jit): indices", values_at(S_dense, i_knn, 1), d_knn)

# --- SumSoftMaxWeight: softmax-weighted averages -----------------------------------------------
# a_i = sum_j exp(s_ij) v_ij / sum_j exp(s_ij), with scalar scores and vector weights (running
# maximum again: this is attention without the M×N matrix).
a_i = S_ij.sumsoftmaxweight(V_ij, dim=1)
P_dense = np.exp(S_dense - m_dense)
check("SumSoftMaxWeight of S_ij, with weights V_ij, wrt. 'N'", a_i,
      (P_dense[:, :, None] * V_dense).sum(1) / P_dense.sum(1, keepdims=True))

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
print("tutorial finished: all checks passed")
