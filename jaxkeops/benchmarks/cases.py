"""The benchmark cases: each builds jaxkeops and its same-run baselines for one workload."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import Vi, Vj
from jaxkeops.benchmarks.harness import Candidate


@dataclasses.dataclass
class Benchmark:
    default_size: tuple[int, int]
    make: Callable  # (M, N) -> (candidates, pairs, title); the last candidate is the reference


def row_chunked(row_fn, x, *rest, rows=256):
    """The usual hand-written alternative: `lax.map` over blocks of rows of x."""
    M = x.shape[0]
    blocks = -(-M // rows)
    xp = jnp.pad(x, ((0, blocks * rows - M), (0, 0))).reshape(blocks, rows, x.shape[1])
    out = jax.lax.map(lambda xb: row_fn(xb, *rest), xp)
    return out.reshape(blocks * rows, -1)[:M]


def _gaussian_dense(x, y, b):
    d2 = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, -1)
    return jnp.exp(-d2) @ b


def _gaussian_sum_d100(M, N):
    candidates, pairs, title = _gaussian_sum(M, N, D=100)
    return candidates, pairs, title


def _gaussian_sum(M, N, D=3):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(M, D)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32)
    keops = jax.jit(lambda x, y, b: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1))
    chunked = jax.jit(lambda x, y, b: row_chunked(_gaussian_dense, x, y, b))
    candidates = [
        Candidate("jaxkeops", lambda: keops(x, y, b)),
        Candidate("lax.map row-chunked jnp", lambda: chunked(x, y, b)),
    ]
    return candidates, M * N, f"Gaussian sum, M={M}, N={N}, D={D}, float32"


def _vmap_gaussian(M, N, D=3, B=64):
    """vmap over B problems of size M×N against one problem of B·M rows (same pair count)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, M, D)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32)
    one = lambda x, y, b: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1)  # noqa: E731
    batched = jax.jit(jax.vmap(one, (0, None, None)))
    tall = jax.jit(one)
    x_tall = x.reshape(B * M, D)
    candidates = [
        Candidate(f"jax.vmap over {B} problems", lambda: batched(x, y, b)),
        Candidate(f"one problem of {B}×{M} rows", lambda: tall(x_tall, y, b)),
    ]
    return candidates, B * M * N, f"vmap of a Gaussian sum: {B} × (M={M}, N={N}), D={D}, float32"


def _gaussian_grad(M, N, D=3):
    """Gradient of a Gaussian sum with respect to x (forward + backward) against the forward."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(M, D)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32)
    forward = lambda x, y, b: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1)  # noqa: E731
    grad = jax.jit(jax.grad(lambda x, y, b: forward(x, y, b).sum()))
    fwd = jax.jit(forward)
    chunked = jax.jit(jax.grad(lambda x, y, b: row_chunked(_gaussian_dense, x, y, b).sum()))
    candidates = [
        Candidate("jaxkeops gradient wrt x", lambda: grad(x, y, b)),
        Candidate("lax.map row-chunked jnp gradient", lambda: chunked(x, y, b)),
        Candidate("jaxkeops forward", lambda: fwd(x, y, b)),
    ]
    return candidates, M * N, f"Gradient of a Gaussian sum wrt x, M={M}, N={N}, D={D}, float32"


BENCHMARKS = {
    "gaussian": Benchmark((20000, 20000), _gaussian_sum),
    "vmap": Benchmark((2000, 2000), _vmap_gaussian),
    "gaussian_grad": Benchmark((20000, 20000), _gaussian_grad),
    "gaussian_d100": Benchmark((10000, 10000), _gaussian_sum_d100),
}
