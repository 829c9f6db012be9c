"""Pure-JAX evaluation of reductions.

`dense_reduce` materialises the whole grid: the oracle of every test (run it in float64 at
small sizes). `chunked_reduce` is the same computation over blocks of outer rows with `lax.map`,
never holding more than a block of the grid: the fallback for platforms with no native kernel.
Both use the op table's jnp references, so there is one meaning per op.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.formula import Const, Node, Var, walk
from jaxkeops.ops import OPS
from jaxkeops.program import ROLE_INNER, ROLE_OUTER, category_role
from jaxkeops.ranges import block_mask, masked_reduce
from jaxkeops.reductions import REDUCTIONS

# Elements of one block of the grid (rows × inner × largest formula dim) in the fallback.
CHUNK_ELEMENTS = 1 << 22


def evaluate_formulas(formulas: tuple[Node, ...], leaves: dict[int, jax.Array], dtype):
    """Evaluate formulas with jnp; `leaves[index]` is a variable already shaped to broadcast."""
    values: dict[Node, jax.Array] = {}
    for node in walk(formulas):
        if isinstance(node, Var):
            values[node] = leaves[node.index]
        elif isinstance(node, Const):
            values[node] = jnp.asarray(node.values, dtype=dtype)
        else:
            args = [values[a] for a in node.args]
            values[node] = OPS[node.name].reference(*args, node.params).astype(dtype)
    return tuple(values[f] for f in formulas)


def _replicated(x):
    """x with an explicit sharding (a mesh with AxisType.Explicit axes) gathered, so that rows
    picked by indices have an unambiguous sharding; other arrays unchanged."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if any(entry is not None for entry in getattr(sharding, "spec", ())):
        whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        return jax.sharding.reshard(x, whole)
    return x


def _grid_leaves(var_cats, operands, axis, inner_rows=None):
    """Variables shaped to broadcast over (outer, inner, dim): outer ones (n_outer, 1, dim),
    inner ones (1, n_inner, dim) — or, given `inner_rows` (n_outer, P), the rows they pick
    (n_outer, P, dim) — and parameters (1, 1, dim)."""
    leaves = {}
    for index, (cat, x) in enumerate(zip(var_cats, operands)):
        role = category_role(cat, axis)
        if role == ROLE_OUTER:
            leaves[index] = x[:, None, :]
        elif role == ROLE_INNER:
            leaves[index] = x[None, :, :] if inner_rows is None else _replicated(x)[inner_rows]
        else:
            leaves[index] = x[None, None, :]
    return leaves


def grid_values(formulas, var_cats, operands, axis, n_outer, n_inner):
    """Formula values shaped (n_outer, n_inner, dim), variables given outer-first."""
    dtype = jnp.result_type(*operands) if operands else jnp.float32
    values = evaluate_formulas(formulas, _grid_leaves(var_cats, operands, axis), dtype)
    return tuple(jnp.broadcast_to(v, (n_outer, n_inner, v.shape[-1])) for v in values)


def _sizes(ni, nj, axis):
    return (ni, nj) if axis == 1 else (nj, ni)


def _over_batch(reduce_one):
    """Lift a single-problem reduction to operands with batch dims (see primitive.py): operands
    broadcast over the whole batch are passed once, the others are flattened and vmapped."""

    def reduce(formulas, var_cats, operands, *, batch_shape=(), **params):
        if not batch_shape:
            return reduce_one(formulas, var_cats, operands, **params)
        nb, size = len(batch_shape), int(np.prod(batch_shape))
        flat, in_axes = [], []
        for x in operands:
            if all(b == 1 for b in x.shape[:nb]):
                flat.append(x.reshape(x.shape[nb:]))
                in_axes.append(None)
            else:
                x = jnp.broadcast_to(x, tuple(batch_shape) + x.shape[nb:])
                flat.append(x.reshape((size,) + x.shape[nb:]))
                in_axes.append(0)
        if size == 0 or all(a is None for a in in_axes):  # nothing varies along the batch
            flat = [x if a is None else jnp.zeros(x.shape[1:], x.dtype) for x, a in zip(flat, in_axes)]
            outs = reduce_one(formulas, var_cats, flat, **params)
            return tuple(jnp.broadcast_to(o, tuple(batch_shape) + o.shape) for o in outs)
        outs = jax.vmap(lambda *ops: reduce_one(formulas, var_cats, ops, **params),
                        in_axes=in_axes)(*flat)
        return tuple(o.reshape(tuple(batch_shape) + o.shape[1:]) for o in outs)

    return reduce


@_over_batch
def dense_reduce(formulas, var_cats, operands, *, reduction, reduction_params, axis, ni, nj,
                 ranges=None):
    """Reduce by materialising the whole (n_outer, n_inner) grid (masked by `ranges`)."""
    n_outer, n_inner = _sizes(ni, nj, axis)
    values = grid_values(formulas, var_cats, operands, axis, n_outer, n_inner)
    if ranges is not None:
        mask = block_mask(ranges, axis, jnp.arange(n_outer), n_inner)
        return masked_reduce(reduction, values, mask, reduction_params)
    return REDUCTIONS[reduction].dense(values, reduction_params)


@_over_batch
def chunked_reduce(formulas, var_cats, operands, *, reduction, reduction_params, axis, ni, nj,
                   ranges=None):
    """Reduce block of outer rows by block with `lax.map`; never materialises the grid. With
    `ranges`, each block's pairs are masked (the blocks are computed, not skipped)."""
    n_outer, n_inner = _sizes(ni, nj, axis)
    max_dim = max(n.dim for n in walk(formulas))
    block = max(1, min(n_outer, CHUNK_ELEMENTS // max(1, n_inner * max_dim)))
    n_blocks = -(-n_outer // block)
    padded = n_blocks * block
    is_outer = [category_role(c, axis) == ROLE_OUTER for c in var_cats]

    def pad_rows(x):
        x = jnp.pad(x, ((0, padded - n_outer), (0, 0)))
        return x.reshape(n_blocks, block, x.shape[-1])

    blocked = tuple(pad_rows(x) for x, o in zip(operands, is_outer) if o)

    def one_block(block_operands):
        it = iter(block_operands)
        ops = [next(it) if o else x for x, o in zip(operands, is_outer)]
        values = grid_values(formulas, var_cats, ops, axis, block, n_inner)
        if ranges is not None:
            rows = next(it) * block + jnp.arange(block)
            mask = block_mask(ranges, axis, rows, n_inner)
            return masked_reduce(reduction, values, mask, reduction_params)
        return REDUCTIONS[reduction].dense(values, reduction_params)

    if ranges is not None:  # rows differ by their clusters: map over the block numbers too
        blocked = blocked + (jnp.arange(n_blocks),)
    if blocked:
        outs = jax.lax.map(one_block, blocked)
    else:  # no outer variable: every row is the same
        outs = jax.tree.map(lambda o: jnp.broadcast_to(o[None], (n_blocks,) + o.shape), one_block(()))
    return tuple(o.reshape((padded,) + o.shape[2:])[:n_outer] for o in outs)



@_over_batch
def _pick_one(formulas, var_cats, operands, *, axis, ni, nj, **_):
    """F at the selected pairs; the last operand holds the selected inner indices, shaped
    (n_outer, *S) with S = (D,), (K, D) or (K,) (the last axis of S, if any, is F's component)."""
    (formula,) = formulas
    *operands, indices = operands
    n_outer, n_inner = _sizes(ni, nj, axis)
    flat = indices.reshape(n_outer, -1)  # (n_outer, P)
    if n_inner == 0 or flat.shape[1] == 0:  # nothing selected: constant outputs
        return (jnp.zeros(indices.shape, jnp.result_type(*operands)),)
    leaves = _grid_leaves(var_cats, operands, axis, inner_rows=jnp.clip(flat, 0, n_inner - 1))
    # Slots with no selected pair (index -1) are evaluated at pair (row, 0) on values cut off
    # from the operands, so that no derivative flows back from them (not even NaN · 0).
    valid = (flat >= 0)[..., None]
    for k, leaf in leaves.items():
        leaf = jnp.broadcast_to(leaf, (n_outer, flat.shape[1], leaf.shape[-1]))
        leaves[k] = jnp.where(valid, leaf, jax.lax.stop_gradient(leaf))
    (values,) = evaluate_formulas((formula,), leaves, jnp.result_type(*operands))
    values = jnp.broadcast_to(values, (n_outer, flat.shape[1], formula.dim))
    component = jnp.arange(flat.shape[1]) % formula.dim
    picked = jnp.take_along_axis(values, component[None, :, None], axis=2)[..., 0]
    return (picked.reshape(indices.shape),)


def pick_values(formula, var_cats, operands, indices, **params):
    """The values of `formula` at the pairs (outer row, indices[row, ...]) chosen by a selection
    reduction (min, K-min, ...): O(outputs) dense work, differentiable by JAX to any order."""
    params = {k: v for k, v in params.items() if k not in ("reduction", "reduction_params")}
    return _pick_one((formula,), var_cats, list(operands) + [indices], **params)[0]
