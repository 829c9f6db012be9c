"""Gaussian-process regression in Equinox, with jaxkeops kernel matrices that are never stored.

An RBF kernel k(x, x') = exp(-|x - x'|² / (2 ℓ²)) with a learnable lengthscale ℓ and noise σ is
fitted to data drawn from a GP with a known lengthscale, by Adam (optax) on the negative log
marginal likelihood

    NLL(ℓ, σ) = ½ yᵀ A⁻¹ y + ½ log det A + (n/2) log 2π,      A = K_ℓ + σ² I.

Only kernel products (`K @ v`) and conjugate-gradient solves (`K.solve`) are used, so the same
code runs at sizes where A cannot be stored. The log-determinant has no CG-friendly value, but
its gradient does: ∂ log det A = tr(A⁻¹ ∂A), estimated with Hutchinson probes z (random ±1
vectors, E[z zᵀ] = I) as the mean of (A⁻¹ z)ᵀ ∂A z. The training loss is the surrogate

    ½ yᵀ A⁻¹ y  +  ½ mean_s stop_gradient(A⁻¹ z_s)ᵀ (A z_s)

whose gradient is an unbiased estimate of the NLL's gradient (its value is not the NLL). The
data-fit term is differentiated through the solve (implicit differentiation: one more solve);
the probe term through `K @ z`. All right-hand sides [y, z_1, ..., z_S] go through one CG solve.
Fresh probes are drawn at every step.

To show that the loss decreases, the exact NLL is evaluated densely (Cholesky) before and after
training: that check materialises A and is only for this small demonstration.

Run: `python docs/examples/gp_regression_equinox.py` (needs `pip install ".[examples]"`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkeops import Pm, Vi, Vj

# CG on a GP system (condition number up to ~n/σ²) needs float64 to converge tightly.
jax.config.update("jax_enable_x64", True)


def make_data(n: int, lengthscale: float, noise: float, seed: int):
    """n points in [0, 10] and y = f(x) + noise, with f drawn from the GP prior of the RBF kernel
    of the given lengthscale (exact draw: a Cholesky factor of the n×n data covariance)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 10.0, size=(n, 1)), axis=0)
    cov = np.exp(-((x - x.T) ** 2) / (2 * lengthscale**2)) + noise**2 * np.eye(n)
    y = np.linalg.cholesky(cov) @ rng.normal(size=n)
    return jnp.asarray(x), jnp.asarray(y)


class RBFGaussianProcess(eqx.Module):
    """A zero-mean GP with an RBF kernel (unit output scale); parameters stored as logs."""

    log_lengthscale: jax.Array
    log_noise: jax.Array

    def __init__(self, lengthscale: float, noise: float):
        self.log_lengthscale = jnp.log(jnp.asarray(lengthscale, jnp.float64))
        self.log_noise = jnp.log(jnp.asarray(noise, jnp.float64))

    @property
    def lengthscale(self):
        return jnp.exp(self.log_lengthscale)

    @property
    def noise_variance(self):
        return jnp.exp(2 * self.log_noise)

    def kernel(self, x1, x2):
        """The symbolic (n1, n2) kernel matrix; ℓ enters as a (traced) parameter."""
        return (-Vi(x1).sqdist(Vj(x2)) / (2 * Pm(self.lengthscale) ** 2)).exp()

    def surrogate_loss(self, x, y, probes):
        """Data fit + Hutchinson log-det surrogate (see the module docstring), divided by n."""
        K = self.kernel(x, x)
        rhs = jnp.concatenate([y[:, None], probes], axis=1)
        solved = K.solve(rhs, alpha=self.noise_variance, eps=1e-8)  # A⁻¹ [y, z_1..z_S]
        data_fit = 0.5 * jnp.dot(y, solved[:, 0])
        a_probes = K @ probes + self.noise_variance * probes  # A z_s, differentiable
        logdet_term = 0.5 * jnp.mean(jnp.sum(jax.lax.stop_gradient(solved[:, 1:]) * a_probes, 0))
        return (data_fit + logdet_term) / y.shape[0]

    def predict(self, x, y, x_new):
        """Posterior mean at x_new: K(x_new, x) A⁻¹ y."""
        weights = self.kernel(x, x).solve(y, alpha=self.noise_variance, eps=1e-8)
        return self.kernel(x_new, x) @ weights


def exact_nll(model: RBFGaussianProcess, x, y):
    """The exact NLL divided by n, densely (Cholesky): for checking the small demo only."""
    n = y.shape[0]
    cov = jnp.exp(-((x - x.T) ** 2) / (2 * model.lengthscale**2)) + model.noise_variance * jnp.eye(n)
    chol = jnp.linalg.cholesky(cov)
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    nll = 0.5 * y @ alpha + jnp.sum(jnp.log(jnp.diag(chol))) + 0.5 * n * math.log(2 * math.pi)
    return nll / n


def main(size: int = 500, steps: int = 100, seed: int = 0, probes: int = 16,
         learning_rate: float = 0.1, true_lengthscale: float = 0.5, true_noise: float = 0.1,
         verbose: bool = True):
    """Fit the GP to `size` points for `steps` Adam steps. Returns the outcomes as a dict:
    fitted and true lengthscale and noise, exact NLL per point before and after training."""
    x, y = make_data(size, true_lengthscale, true_noise, seed)
    model = RBFGaussianProcess(lengthscale=2.0, noise=0.5)  # deliberately far from the truth
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, opt_state, x, y, key):
        z = jax.random.rademacher(key, (y.shape[0], probes), dtype=jnp.float64)
        loss, grads = eqx.filter_value_and_grad(RBFGaussianProcess.surrogate_loss)(model, x, y, z)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    nll_before = float(exact_nll(model, x, y))
    key = jax.random.key(seed)
    for step in range(steps):
        key, step_key = jax.random.split(key)
        model, opt_state, _ = train_step(model, opt_state, x, y, step_key)
        if verbose and (step % 25 == 0 or step == steps - 1):
            print(f"step {step:4d}  lengthscale {float(model.lengthscale):.4f}  "
                  f"noise {float(jnp.sqrt(model.noise_variance)):.4f}")
    nll_after = float(exact_nll(model, x, y))

    # The posterior mean through the same symbolic kernel (checked against the dense formula).
    x_new = jnp.linspace(0.0, 10.0, 50)[:, None]
    mean = model.predict(x, y, x_new)
    dense_cov = jnp.exp(-((x - x.T) ** 2) / (2 * model.lengthscale**2))
    dense_mean = jnp.exp(-((x_new - x.T) ** 2) / (2 * model.lengthscale**2)) @ jnp.linalg.solve(
        dense_cov + model.noise_variance * jnp.eye(size), y)
    outcome = {
        "lengthscale": float(model.lengthscale),
        "true_lengthscale": true_lengthscale,
        "noise": float(jnp.sqrt(model.noise_variance)),
        "true_noise": true_noise,
        "nll_before": nll_before,
        "nll_after": nll_after,
        "prediction_error": float(jnp.max(jnp.abs(mean - dense_mean))),
    }
    if verbose:
        print(f"lengthscale {outcome['lengthscale']:.4f} (data made with {true_lengthscale}), "
              f"noise {outcome['noise']:.4f} (data made with {true_noise})")
        print(f"exact NLL per point: {nll_before:.4f} before, {nll_after:.4f} after training")
        print(f"posterior mean vs dense: max abs difference {outcome['prediction_error']:.2e}")
    return outcome


if __name__ == "__main__":
    main()
