"""Combining per-shard reductions into the reduction over the whole inner axis.

When the reduced (inner) axis is split across the devices of one or more mesh axes, each device
reduces its own block of the inner axis and these functions combine the blocks' results with
collectives over those mesh axes (`axes`, a tuple of mesh axis names, major to minor). They run
inside a manual SPMD context: the body that `custom_partitioning` lowers per device
(jaxkeops/partitioning.py) and `shard_map` (jaxkeops/sharded_reduce.py). All of them are
differentiable, and their results are the same on every shard of `axes` (psum-like collectives,
so that shard_map's check_vma types them invariant).

What each reduction needs from a block, and what communicates (per output row):
  Sum                          psum of the block sums
  LogSumExp                    pmax of the block results (the shift), psum of exp(L_b - shift)
  SumSoftMaxWeight,            per block the softmax average A_b and L_b = LSE(S) of the block:
  LogSumExpWeight              psum of exp(L_b - shift) A_b and of exp(L_b - shift)
  Min/Max (+ arg versions)     pmin/pmax of the values, pmin of the winning global index, psum
                               of the winning value (one block contributes; keeps gradients)
  K-min family                 each block's best K with global indices, gathered in shard order
                               (n·K per row), then a stable merge
Blocks with no unmasked pair (L_b = -inf, index -1) drop out of every combine.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def shard_offset(axes: tuple[str, ...], block_size: int) -> jax.Array:
    """Global index of this block's first inner element: shard number along `axes` × size."""
    return lax.axis_index(axes) * block_size


def _shift(L, axes):
    """The largest block log-sum-exp (a constant for differentiation), 0 where all are -inf."""
    m = lax.pmax(lax.stop_gradient(L), axes)
    return jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))


def combine_sum(block_sums, axes):
    return lax.psum(block_sums, axes)


def combine_logsumexp(L, axes):
    """log Σ_b exp(L_b) with the shift m = max_b L_b: m + log Σ_b exp(L_b - m)."""
    m = _shift(L, axes)
    return m + jnp.log(lax.psum(jnp.exp(L - m), axes))


def _weighted_terms(average, L, axes):
    """Per block exp(L_b - m) A_b and exp(L_b - m), empty blocks (L_b = -inf, A_b NaN) zeroed
    before the product so that no NaN reaches a value or a gradient."""
    empty = jnp.isneginf(L)
    scale = jnp.exp(L - _shift(L, axes))
    average = jnp.where(empty, jnp.zeros_like(average), average)
    return lax.psum(scale * average, axes), lax.psum(scale, axes), _shift(L, axes)


def combine_sumsoftmaxweight(average, L, axes):
    """Σ_j e^S w / Σ_j e^S from the block averages A_b = Σ_b e^S w / Σ_b e^S and L_b."""
    numerator, denominator, _ = _weighted_terms(average, L, axes)
    return numerator / denominator


def combine_logsumexp_weight(average, L, axes):
    """log Σ_j e^S w = m + log Σ_b exp(L_b - m) A_b (NaN where the weighted sum is negative, as
    on one device; a block's own negative sum does not matter)."""
    numerator, _, m = _weighted_terms(average, L, axes)
    return m + jnp.log(numerator)


def combine_pick(values, indices, offset, axes, *, is_max: bool):
    """Best value and the lowest global index reaching it (the single-device tie rule), from
    each block's best value and block-local index (-1: no value in the block)."""
    best = lax.stop_gradient(values)
    best = lax.pmax(best, axes) if is_max else lax.pmin(best, axes)
    none = np.iinfo(indices.dtype).max
    candidate = jnp.where((indices >= 0) & (lax.stop_gradient(values) == best),
                          indices + offset.astype(indices.dtype), none)
    index = lax.pmin(candidate, axes)
    found = index != none
    # Exactly one block holds the winning index: a psum of its value alone keeps the gradient.
    mine = found & (candidate == index)
    value = lax.psum(jnp.where(mine, values, jnp.zeros_like(values)), axes)
    value = jnp.where(found, value, best)
    return value, jnp.where(found, index, jnp.full_like(index, -1))


def gather_by_psum(x, axes, k_axis: int):
    """All blocks of x concatenated along k_axis in shard order, as an all-reduce of a
    zero-padded buffer: the result is typed invariant over `axes` (shard_map's check_vma
    accepts it as replicated), on every jax version we support, and it is differentiable."""
    n = lax.axis_size(axes)
    size = x.shape[k_axis]
    shape = x.shape[:k_axis] + (n * size,) + x.shape[k_axis + 1:]
    start = [jnp.zeros((), jnp.int32)] * x.ndim
    start[k_axis] = (lax.axis_index(axes) * size).astype(jnp.int32)
    buffer = lax.dynamic_update_slice(jnp.zeros(shape, x.dtype), x, start)
    return lax.psum(buffer, axes)


def gather_by_all_gather(x, axes, k_axis: int):
    """All blocks of x concatenated along k_axis in shard order (an XLA all-gather)."""
    return lax.all_gather(x, axes, axis=k_axis, tiled=True)


def combine_kmin(values, indices, offset, axes, *, K: int, k_axis: int,
                 gather: Callable = gather_by_all_gather):
    """The K smallest values over all blocks and their global indices, equal values in
    ascending index order, from each block's best K (index -1 in an empty slot). `k_axis` is
    the axis of the K slots (a trailing feature axis may follow it)."""
    global_indices = jnp.where(indices >= 0, indices + offset.astype(indices.dtype), -1)
    all_values = gather(values, axes, k_axis)
    all_indices = gather(global_indices, axes, k_axis)
    # Sort keys: the value (+ 0.0 makes -0.0 equal to 0.0, as the kernels compare), then the
    # global index with empty slots last.
    value_key = lax.stop_gradient(all_values) + jnp.zeros((), all_values.dtype)
    index_key = jnp.where(all_indices >= 0, all_indices, np.iinfo(all_indices.dtype).max)
    slot = lax.broadcasted_iota(jnp.int32, all_values.shape, k_axis)
    _, _, order = lax.sort((value_key, index_key, slot), dimension=k_axis, num_keys=2)
    order = lax.slice_in_dim(order, 0, K, axis=k_axis)
    return (jnp.take_along_axis(all_values, order, axis=k_axis),
            jnp.take_along_axis(all_indices, order, axis=k_axis))
