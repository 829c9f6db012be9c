"""jaxkeops tutorial: symbolic matrices and their reductions.

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
print("tutorial finished: all checks passed")
