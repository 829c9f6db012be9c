"""Varying manual axes (vma): the type JAX gives values inside `jax.shard_map(check_vma=True)`.

A value is "varying" over a manual mesh axis when its shards may differ along it. JAX's own
primitives follow one rule: before binding, operands that vary over fewer axes than the others are
cast up (pvary, a no-op whose transpose is a psum), and the outputs vary over the union. The
primitive does the same, so that its cotangents carry the right type and reverse mode works inside
shard_map. The helper names moved between the jax versions we support (0.9.1 - 0.11): this module
is the only place that knows them.
"""

from __future__ import annotations

import inspect

from jax._src import core  # the vma helpers are not public API
from jax.core import ShapedArray
from jax.sharding import PartitionSpec

# jax >= 0.10.1 spells it auto_insert_reshard; older versions standard_insert_pvary.
_insert_pvary = getattr(core, "auto_insert_reshard", None) or getattr(
    core, "standard_insert_pvary", None)
# jax >= 0.10.1 carries the vma in ShapedArray(manual_axis_type=ManualAxisType(varying=...));
# older versions in ShapedArray(vma=frozenset).
_HAS_MANUAL_AXIS_TYPE = "manual_axis_type" in inspect.signature(ShapedArray).parameters


def insert_pvary(*operands):
    """The operands cast to vary over the union of their varying axes (JAX's rule before a
    bind); unchanged outside shard_map or with check_vma=False."""
    if _insert_pvary is None or not operands:
        return list(operands)
    return list(_insert_pvary(*operands))


def output_vma(primitive_name: str, avals) -> frozenset:
    """The varying axes of the outputs: those of the operands, which must agree (they do once
    insert_pvary ran)."""
    return core.standard_vma_rule(primitive_name, *avals)


def shaped_array(shape, dtype, vma: frozenset) -> ShapedArray:
    """An abstract output value varying over `vma` (replicated over the other mesh axes)."""
    if not vma:
        return ShapedArray(shape, dtype)
    if _HAS_MANUAL_AXIS_TYPE:
        sharding = core.get_cur_mesh_sharding(PartitionSpec(*(None,) * len(shape)))
        return ShapedArray(shape, dtype, sharding=sharding,
                           manual_axis_type=core.ManualAxisType(varying=vma))
    return ShapedArray(shape, dtype, vma=vma)
