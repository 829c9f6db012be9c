"""A Flax (nnx) attention layer whose softmax runs in jaxkeops, trained with optax.

Multi-head attention softmax(q kᵀ / √d) v without the (T, S) score matrix: the scores are the
symbolic matrix `(Vi(q) | Vj(k)) * scale` and `.sumsoftmaxweight(Vj(v), axis=1)` computes
Σ_j exp(s_ij) v_j / Σ_j exp(s_ij) with a running maximum (safe at any magnitude of the scores).
Heads and the batch are ordinary `jax.vmap`s over a one-head function; the projections are
`nnx.Linear` layers, and gradients reach them through the reduction.

The layer can also run its core with `jax.nn.dot_product_attention` (`dense=True`): the example
checks that both give the same outputs and the same gradients, then trains the jaxkeops layer
for a few Adam steps to imitate a fixed random "teacher" layer.

Run: `python docs/examples/kernel_attention_flax.py` (needs `pip install ".[examples]"`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxkeops import Vi, Vj


def keops_attention(q, k, v):
    """softmax(q kᵀ / √H) v for q (B, T, N, H), k and v (B, S, N, H): (B, T, N, H), the layout of
    `jax.nn.dot_product_attention`."""
    scale = 1.0 / math.sqrt(q.shape[-1])

    def one_head(q, k, v):  # (T, H), (S, H), (S, H) -> (T, H)
        scores = (Vi(q) | Vj(k)) * scale  # symbolic (T, S)
        return scores.sumsoftmaxweight(Vj(v), axis=1)

    over_heads = jax.vmap(one_head, in_axes=1, out_axes=1)
    return jax.vmap(over_heads)(q, k, v)


class KernelAttention(nnx.Module):
    """Multi-head (cross- or self-) attention with query, key, value and output projections."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nnx.Linear(d_model, d_model, rngs=rngs)
        self.key = nnx.Linear(d_model, d_model, rngs=rngs)
        self.value = nnx.Linear(d_model, d_model, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, rngs=rngs)

    def _heads(self, x):  # (B, T, d_model) -> (B, T, N, H)
        return x.reshape(x.shape[:-1] + (self.num_heads, -1))

    def __call__(self, x, context=None, *, dense: bool = False):
        """x (B, T, d_model) attends to context (B, S, d_model) (default: x itself)."""
        context = x if context is None else context
        q, k, v = (self._heads(self.query(x)), self._heads(self.key(context)),
                   self._heads(self.value(context)))
        core = jax.nn.dot_product_attention if dense else keops_attention
        out = core(q, k, v)
        return self.out(out.reshape(out.shape[:-2] + (-1,)))


def mse(model, x, target, dense: bool = False):
    return jnp.mean((model(x, dense=dense) - target) ** 2)


def compare_with_dense(batch: int = 2, length: int = 13, d_model: int = 16, num_heads: int = 2,
                       seed: int = 0):
    """Max abs differences between the jaxkeops and the dense layer: outputs, and the gradient of
    an MSE loss with respect to each projection's kernel."""
    model = KernelAttention(d_model, num_heads, rngs=nnx.Rngs(seed))
    keys = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(keys[0], (batch, length, d_model), jnp.float32)
    target = jax.random.normal(keys[1], (batch, length, d_model), jnp.float32)
    output_error = jnp.max(jnp.abs(nnx.jit(lambda m, x: m(x))(model, x)
                                   - nnx.jit(lambda m, x: m(x, dense=True))(model, x)))
    grads = nnx.grad(mse)(model, x, target)
    dense_grads = nnx.grad(lambda m, x, t: mse(m, x, t, dense=True))(model, x, target)
    gradient_errors = {
        name: float(jnp.max(jnp.abs(getattr(grads, name).kernel[...]
                                    - getattr(dense_grads, name).kernel[...])))
        for name in ("query", "key", "value", "out")
    }
    return {"output_error": float(output_error), "gradient_errors": gradient_errors}


def train(batch: int = 8, length: int = 64, d_model: int = 32, num_heads: int = 4,
          steps: int = 100, seed: int = 0, learning_rate: float = 1e-2, verbose: bool = True):
    """Train the layer for `steps` Adam steps to imitate a fixed random teacher layer (dense) on
    random inputs. Returns the losses (before, after) and the gradient norm of each projection's
    kernel at the first step."""
    student = KernelAttention(d_model, num_heads, rngs=nnx.Rngs(seed))
    teacher = KernelAttention(d_model, num_heads, rngs=nnx.Rngs(seed + 1))
    optimizer = nnx.Optimizer(student, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def train_step(student, optimizer, x):
        target = teacher(x, dense=True)
        loss, grads = nnx.value_and_grad(mse)(student, x, target)
        optimizer.update(student, grads)
        norms = {name: jnp.linalg.norm(getattr(grads, name).kernel[...])
                 for name in ("query", "key", "value", "out")}
        return loss, norms

    # A fixed evaluation batch, fresh training batches.
    key = jax.random.key(seed)
    key, eval_key = jax.random.split(key)
    x_eval = jax.random.normal(eval_key, (batch, length, d_model), jnp.float32)
    evaluate = nnx.jit(lambda m, x: mse(m, x, teacher(x, dense=True)))
    loss_before = float(evaluate(student, x_eval))
    first_norms = None
    for step in range(steps):
        key, step_key = jax.random.split(key)
        x = jax.random.normal(step_key, (batch, length, d_model), jnp.float32)
        loss, norms = train_step(student, optimizer, x)
        first_norms = first_norms or {name: float(n) for name, n in norms.items()}
        if verbose and (step % 20 == 0 or step == steps - 1):
            print(f"step {step:4d}  training loss {float(loss):.5f}")
    loss_after = float(evaluate(student, x_eval))
    return {"loss_before": loss_before, "loss_after": loss_after,
            "first_gradient_norms": first_norms}


def main(size: int = 64, steps: int = 100, seed: int = 0, verbose: bool = True):
    """Compare with the dense layer at a small size, then train at sequence length `size`."""
    comparison = compare_with_dense(seed=seed)
    if verbose:
        print(f"jaxkeops vs jax.nn.dot_product_attention: outputs differ by at most "
              f"{comparison['output_error']:.1e}; gradients (per projection) by at most "
              + ", ".join(f"{k} {v:.1e}" for k, v in comparison["gradient_errors"].items()))
    training = train(length=size, steps=steps, seed=seed, verbose=verbose)
    if verbose:
        print(f"evaluation loss {training['loss_before']:.5f} before, "
              f"{training['loss_after']:.5f} after {steps} steps")
    return {**comparison, **training}


if __name__ == "__main__":
    main()
