"""Partitioning a reduction across devices under jit, when its operands are sharded.

Without this, XLA gathers every operand onto every device and each device computes the whole
grid. Here the lowering of `keops_reduce_p` (jaxkeops/lowering.py) wraps the call in
`jax.experimental.custom_partitioning`, so jvp, transpose and batching stay on `keops_reduce_p`
and only the compiled program changes:

- Shardy's `sharding_rule`: batch dims and the outer axis pass through to the outputs, the
  reduced (inner) axis is a reduction factor, feature dims and the outputs' trailing dims are
  replicated.
- `partition` (called by XLA with the shardings propagation chose) runs the reduction on each
  device's block with `keops_local_reduce_p` and, when the inner axis is split, combines the
  blocks with the reduction's own combine (jaxkeops/shard_combine.py). Batch dims and the outer
  axis need no communication.
- A split that cannot work falls back to replicating the inner axis (XLA gathers it; slower,
  never wrong): a size a mesh axis does not divide, K larger than a block (K-min), a mesh axis
  already used by the outer axis or a batch dim.

The plain call is lowered instead under shard_map (the user partitioned already), when lowering
for jax.export (the partitioner's Python callbacks cannot be serialized), and on one device.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from jax._src import dispatch  # prim_requires_devices_during_lowering
from jax._src.sharding_impls import ShardingContext
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax.sharding import NamedSharding, PartitionSpec

from jaxkeops import shard_combine
from jaxkeops.formula import CAT_P
from jaxkeops.primitive import abstract_eval, compact_operands, keops_reduce_p
from jaxkeops.program import ROLE_INNER, ROLE_OUTER, category_role
from jaxkeops.reductions import REDUCTIONS

# The reduction of the operands one device holds: never partitioned again. Its lowering is the
# per-platform call (registered in jaxkeops/lowering.py); it only appears inside lowerings.
keops_local_reduce_p = Primitive("keops_local_reduce")
keops_local_reduce_p.multiple_results = True
keops_local_reduce_p.def_abstract_eval(abstract_eval)

# custom_partitioning needs the device assignment while lowering; jit provides it only for the
# primitives in this set.
dispatch.prim_requires_devices_during_lowering.add(keops_reduce_p)

_KMIN = ("KMin", "ArgKMin", "KMin_ArgKMin")
_PICK = {"Min": (False, (0,)), "ArgMin": (False, (1,)), "Min_ArgMin": (False, (0, 1)),
         "Max": (True, (0,)), "ArgMax": (True, (1,)), "Max_ArgMax": (True, (0, 1))}


def partitions(ctx) -> bool:
    """Whether this lowering is for several devices under jit's automatic sharding (not inside
    shard_map or pmap, not for jax.export)."""
    module = ctx.module_context
    axis_context = module.axis_context
    return (
        not module.lowering_parameters.for_export
        and isinstance(axis_context, ShardingContext)
        and axis_context.num_devices > 1
        and axis_context.device_assignment is not None
        and axis_context.abstract_mesh is not None
        and not axis_context.abstract_mesh.empty
    )


def lower_partitioned(ctx, operands, params: dict):
    """The lowering of one reduction as a custom_partitioning call."""
    call = _partitioned_call(_freeze(params), tuple(tuple(a.shape) for a in ctx.avals_in))
    return mlir.lower_fun(lambda *ops: call(*ops), multiple_results=True)(ctx, *operands)


def _freeze(params: dict) -> tuple:
    return tuple(sorted(params.items()))


# --- the sharding rule ---------------------------------------------------------------------------


def _broadcast_batch_dim(params, shape, d) -> bool:
    """Whether an operand of this shape is broadcast (size 1) along batch dim d."""
    return shape[d] == 1 and params["batch_shape"][d] != 1


def sharding_rule(params: dict, operand_shapes) -> tuple[str, dict]:
    """The einsum-like Shardy rule and its factor kinds, e.g. for x_i (M, 3), y_j (N, 3) reduced
    over j: "i f0, j f1 -> i o0_0", j a reduction factor, f0 f1 o0_0 replicated."""
    nb = len(params["batch_shape"])
    outer, inner = ("i", "j") if params["axis"] == 1 else ("j", "i")
    grid_factor = {ROLE_OUTER: outer, ROLE_INNER: inner}
    replicated = []

    def own(name):  # a factor of one dimension only, never split
        replicated.append(name)
        return name

    operands = []
    for k, (cat, shape) in enumerate(zip(params["var_cats"], operand_shapes)):
        factors = [own(f"u{k}_{d}") if _broadcast_batch_dim(params, shape, d) else f"b{d}"
                   for d in range(nb)]
        if cat != CAT_P:
            factors.append(grid_factor[category_role(cat, params["axis"])])
        factors.append(own(f"f{k}"))
        operands.append(factors)
    results = []
    for r, rank in enumerate(_output_ranks(params)):
        factors = [f"b{d}" for d in range(nb)] + [outer]
        factors += [own(f"o{r}_{d}") for d in range(rank - nb - 1)]
        results.append(factors)
    rule = (", ".join(" ".join(f) for f in operands) + " -> "
            + ", ".join(" ".join(f) for f in results))
    return rule, dict(reduction_factors=(inner,), need_replication_factors=tuple(replicated))


def _output_ranks(params) -> list[int]:
    outputs = REDUCTIONS[params["reduction"]].outputs(
        tuple(f.dim for f in params["formulas"]), params["reduction_params"], None)
    return [len(params["batch_shape"]) + 1 + len(shape) for shape, _ in outputs]


# --- the per-device plan -------------------------------------------------------------------------


def _axes_of(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry, as a tuple."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _spec_entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _spec_of(sharding, ndim) -> tuple:
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    return spec + (None,) * (ndim - len(spec))


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How one reduction is split: the mesh axes of each batch dim, of the outer axis and of the
    inner axis (() where not split), and the block sizes that gives."""
    batch: tuple[tuple[str, ...], ...]
    outer: tuple[str, ...]
    inner: tuple[str, ...]
    local_batch_shape: tuple[int, ...]
    local_n_outer: int
    local_n_inner: int


def make_plan(params: dict, mesh, arg_shapes, result_shapes) -> ShardPlan:
    """Choose the split from the shardings propagation gave: along a batch dim or the outer axis,
    the first operand split there decides (else the first result's split: slicing replicated
    operands costs no communication); along the inner axis, the first inner operand. A split
    whose shard count does not divide the size, or that reuses a mesh axis, is dropped."""
    nb = len(params["batch_shape"])
    axis = params["axis"]
    n_outer, n_inner = (params["ni"], params["nj"]) if axis == 1 else (params["nj"], params["ni"])
    roles = [category_role(c, axis) for c in params["var_cats"]]
    specs = [_spec_of(a.sharding, len(a.shape)) for a in arg_shapes]
    first = result_shapes[0]
    result_spec = _spec_of(getattr(first, "sharding", None), len(first.shape))
    used: set[str] = set()

    def count(axes) -> int:
        return math.prod(mesh.shape[a] for a in axes)

    def usable(axes, size) -> tuple[str, ...]:
        if not axes or used & set(axes) or size % count(axes):
            return ()
        used.update(axes)
        return axes

    def split_of(operands, d, fallback=None) -> tuple[str, ...]:
        for k in operands:
            if _axes_of(specs[k][d]):
                return _axes_of(specs[k][d])
        return _axes_of(fallback)

    # The outer axis first: its split is free; the inner one costs a combine.
    outers = [k for k, r in enumerate(roles) if r == ROLE_OUTER]
    outer = usable(split_of(outers, nb, result_spec[nb]), n_outer)
    batch = []
    for d, size in enumerate(params["batch_shape"]):
        full = [k for k, a in enumerate(arg_shapes) if not _broadcast_batch_dim(params, a.shape, d)]
        batch.append(usable(split_of(full, d, result_spec[d]), size))
    inner = usable(split_of([k for k, r in enumerate(roles) if r == ROLE_INNER], nb), n_inner)
    if inner and params["reduction"] in _KMIN and params["reduction_params"][0] > (
            n_inner // count(inner)):
        inner = ()  # every block must hold K candidates
    return ShardPlan(
        batch=tuple(batch),
        outer=outer,
        inner=inner,
        local_batch_shape=tuple(s // count(a) for s, a in zip(params["batch_shape"], batch)),
        local_n_outer=n_outer // count(outer),
        local_n_inner=n_inner // count(inner),
    )


def _shardings(params, plan: ShardPlan, mesh, arg_shapes):
    """The operand and result shardings that carry out the plan."""
    nb = len(params["batch_shape"])
    grid = {ROLE_OUTER: plan.outer, ROLE_INNER: plan.inner}
    args = []
    for cat, a in zip(params["var_cats"], arg_shapes):
        entries = [None if _broadcast_batch_dim(params, a.shape, d) else _spec_entry(axes)
                   for d, axes in enumerate(plan.batch)]
        if cat != CAT_P:
            entries.append(_spec_entry(grid[category_role(cat, params["axis"])]))
        entries.append(None)
        args.append(NamedSharding(mesh, PartitionSpec(*entries)))
    results = []
    for rank in _output_ranks(params):
        entries = [_spec_entry(axes) for axes in plan.batch] + [_spec_entry(plan.outer)]
        results.append(NamedSharding(mesh, PartitionSpec(*entries, *(None,) * (rank - nb - 1))))
    return args, results


# --- the per-device computation --------------------------------------------------------------------


def _local_params(params: dict, plan: ShardPlan) -> dict:
    n_outer_key, n_inner_key = ("ni", "nj") if params["axis"] == 1 else ("nj", "ni")
    return dict(params, batch_shape=plan.local_batch_shape,
                **{n_outer_key: plan.local_n_outer, n_inner_key: plan.local_n_inner})


def block_reduce(params: dict, plan: ShardPlan, operands):
    """The reduction of one device's block, combined across the shards of the inner axis."""
    local = _local_params(params, plan)
    axes = plan.inner

    def run(reduction, formulas=None):
        formulas = params["formulas"] if formulas is None else formulas
        fs, ops, cats = compact_operands(formulas, list(operands), params["var_cats"])
        return keops_local_reduce_p.bind(
            *ops, **dict(local, formulas=fs, var_cats=tuple(cats), reduction=reduction))

    reduction = params["reduction"]
    if not axes:
        return run(reduction)
    nb = len(params["batch_shape"])
    offset = shard_combine.shard_offset(axes, plan.local_n_inner)
    if reduction == "Sum":
        return [shard_combine.combine_sum(run("Sum")[0], axes)]
    if reduction == "LogSumExp":
        return [shard_combine.combine_logsumexp(run("LogSumExp")[0], axes)]
    if reduction in ("SumSoftMaxWeight", "LogSumExpWeight"):
        (average,) = run("SumSoftMaxWeight")
        (L,) = run("LogSumExp", params["formulas"][:1])
        combine = (shard_combine.combine_sumsoftmaxweight if reduction == "SumSoftMaxWeight"
                   else shard_combine.combine_logsumexp_weight)
        return [combine(average, L, axes)]
    if reduction in _PICK:
        is_max, select = _PICK[reduction]
        values, indices = run("Max_ArgMax" if is_max else "Min_ArgMin")
        both = shard_combine.combine_pick(values, indices, offset, axes, is_max=is_max)
        return [both[k] for k in select]
    if reduction in _KMIN:
        values, indices = run("KMin_ArgKMin")
        both = shard_combine.combine_kmin(values, indices, offset, axes,
                                          K=params["reduction_params"][0], k_axis=nb + 1)
        select = {"KMin": (0,), "ArgKMin": (1,), "KMin_ArgKMin": (0, 1)}[reduction]
        return [both[k] for k in select]
    raise NotImplementedError(f"no shard combine for the {reduction} reduction")


# --- custom_partitioning -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _partitioned_call(frozen_params: tuple, operand_shapes: tuple):
    params = dict(frozen_params)

    def plain(*operands):
        return keops_local_reduce_p.bind(*operands, **params)

    call = custom_partitioning(plain)

    def partition(mesh, arg_shapes, result_shapes):
        plan = make_plan(params, mesh, arg_shapes, result_shapes)
        arg_shardings, result_shardings = _shardings(params, plan, mesh, arg_shapes)
        return (mesh, lambda *operands: block_reduce(params, plan, operands),
                result_shardings, tuple(arg_shardings))

    def infer_sharding_from_operands(mesh, arg_shapes, result_shapes):  # GSPMD partitioner
        plan = make_plan(params, mesh, arg_shapes, result_shapes)
        return _shardings(params, plan, mesh, arg_shapes)[1]

    rule, factor_kinds = sharding_rule(params, operand_shapes)
    call.def_partition(partition, infer_sharding_from_operands=infer_sharding_from_operands,
                       sharding_rule=rule, **factor_kinds)
    return call
