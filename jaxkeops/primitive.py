"""`keops_reduce_p`: the one JAX primitive every jaxkeops reduction is traced into.

Operands are the formula's variables in index order: i variables shaped (*b, ni, dim), j
variables (*b, nj, dim), parameters (*b, dim), where each operand's batch shape b has the rank
of `batch_shape` and each of its entries is either that of `batch_shape` or 1 (broadcast, never
copied). Outputs are shaped (*batch_shape, n_outer, ...). Static parameters:

  formulas          tuple of formula roots (most reductions take one; weighted ones two)
  var_cats          category of each operand (formula.CAT_I / CAT_J / CAT_P)
  reduction         name in the reduction table; reduction_params its static ints (e.g. K)
  axis              1 reduces over j (one output row per i), 0 reduces over i
  ni, nj            grid sizes (an axis may have no variable, so they cannot be read off operands)
  batch_shape       the broadcast batch shape (() for a single problem)
  with_ranges       present (True) only for block-sparse calls: then six int32 operands follow
                    the variables, KeOps's ranges tuple (jaxkeops/ranges.py), shared by the
                    whole batch

Rules here: abstract evaluation, jvp and transpose (formulas from jaxkeops/autodiff.py), and
batching (vmap folds the mapped axis into `batch_shape`: one kernel call for the whole batch).
The lowering rules live in jaxkeops/lowering.py.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from jax._src import core, dispatch  # apply_primitive; is_constant_dim for symbolic sizes
from jax.extend.core import Primitive
import jax
from jax import lax
from jax import numpy as jnp
from jax.interpreters import ad, batching

from jaxkeops.autodiff import transpose_formula
from jaxkeops.formula import CAT_I, CAT_J, CAT_NAMES, CAT_P, Var, substitute, walk
from jaxkeops.ranges import N_RANGES, check_ranges_avals
from jaxkeops.reduction_derivatives import JVP_RULES
from jaxkeops.reductions import REDUCTIONS, check_reduction
from jaxkeops.vma import insert_pvary, output_vma, shaped_array

keops_reduce_p = Primitive("keops_reduce")
keops_reduce_p.multiple_results = True
keops_reduce_p.def_impl(partial(dispatch.apply_primitive, keops_reduce_p))


def dim_size(d):
    """A size as a static parameter: a Python int, or a symbolic dimension as it is (jax.export
    with polymorphic shapes: M, N and batch dims may be symbolic)."""
    return int(d) if core.is_constant_dim(d) else d


def keops_reduce(
    operands, *, formulas, var_cats, reduction, reduction_params=(), axis, ni, nj, batch_shape=(),
    ranges=None,
):
    """Bind the primitive; returns a tuple of outputs (see the reduction table). Inside
    shard_map, operands replicated over a manual axis others vary over are cast to vary first
    (as JAX's own primitives do), so that cotangents get the right type. `ranges`: None, or
    the six int32 arrays of a block-sparse reduction (jaxkeops/ranges.py, already checked)."""
    extra = {} if ranges is None else {"with_ranges": True}
    return keops_reduce_p.bind(
        *insert_pvary(*operands),
        *(() if ranges is None else tuple(ranges)),
        formulas=tuple(formulas),
        var_cats=tuple(int(c) for c in var_cats),
        reduction=reduction,
        reduction_params=tuple(int(p) for p in reduction_params),
        axis=int(axis),
        ni=dim_size(ni),
        nj=dim_size(nj),
        batch_shape=tuple(dim_size(b) for b in batch_shape),
        **extra,
    )


def split_ranges(operands, params: dict):
    """(the variables' operands, the ranges operands or None, params without `with_ranges`)."""
    if not params.get("with_ranges"):
        return list(operands), None, params
    params = {k: v for k, v in params.items() if k != "with_ranges"}
    return list(operands[:-N_RANGES]), tuple(operands[-N_RANGES:]), params


def _base_shape(cat: int, dim: int, ni: int, nj: int) -> tuple[int, ...]:
    return {CAT_I: (ni, dim), CAT_J: (nj, dim), CAT_P: (dim,)}[cat]


def abstract_eval(*avals, formulas, var_cats, reduction, reduction_params, axis, ni, nj,
                  batch_shape, with_ranges=False):
    if with_ranges:
        check_ranges_avals(avals[len(avals) - N_RANGES:], "keops_reduce")
        avals = avals[: len(avals) - N_RANGES]
    if len(avals) != len(var_cats):
        raise TypeError(f"keops_reduce: {len(avals)} operands for {len(var_cats)} variables")
    dtype = avals[0].dtype if avals else np.dtype(np.float32)
    nb = len(batch_shape)
    for index, (aval, cat) in enumerate(zip(avals, var_cats)):
        dim = aval.shape[-1] if aval.ndim else 0
        base = _base_shape(cat, dim, ni, nj)
        batch = aval.shape[: aval.ndim - len(base)]
        if (
            aval.ndim != nb + len(base)
            or aval.shape[nb:] != base
            or any(b not in (1, full) for b, full in zip(batch, batch_shape))
        ):
            raise TypeError(
                f"keops_reduce: operand {index} ({CAT_NAMES[cat]} variable) has shape "
                f"{aval.shape}, expected batch dims broadcastable to {batch_shape} then {base}"
            )
        if aval.dtype != dtype:
            raise TypeError(
                f"keops_reduce: operand {index} has dtype {aval.dtype}, expected {dtype} "
                "(all operands share one dtype)"
            )
    n_outer, n_inner = (ni, nj) if axis == 1 else (nj, ni)
    try:
        check_reduction(reduction, tuple(f.dim for f in formulas), reduction_params, n_inner)
    except ValueError as e:
        raise ValueError(f"keops_reduce ({reduction} reduction): {e}") from None
    outputs = REDUCTIONS[reduction].outputs(
        tuple(f.dim for f in formulas), reduction_params, dtype
    )
    vma = output_vma("keops_reduce", avals)  # inside shard_map: the axes the operands vary over
    return [
        shaped_array(tuple(batch_shape) + (n_outer,) + shape, out_dtype, vma)
        for shape, out_dtype in outputs
    ]


keops_reduce_p.def_abstract_eval(abstract_eval)


# --- batching ----------------------------------------------------------------------------------


def _batch(args, dims, *, batch_shape, **params):
    """vmap: the mapped axis becomes a new leading batch dimension (size 1, i.e. broadcast, for
    unmapped operands), so the whole batch is one kernel call. Ranges are shared by the batch:
    mapped ranges (one clustering per batch element) run one call per element (lax.map)."""
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    n_ranges = N_RANGES if params.get("with_ranges") else 0
    n_vars = len(args) - n_ranges
    if any(d is not None for d in dims[n_vars:]):
        return _batch_per_element(args, dims, size, batch_shape, params)
    moved = [
        lax.expand_dims(x, (0,)) if d is None else jnp.moveaxis(x, d, 0)
        for x, d in zip(args[:n_vars], dims[:n_vars])
    ]
    outs = keops_reduce_p.bind(*moved, *args[n_vars:], batch_shape=(size,) + tuple(batch_shape),
                               **params)
    return outs, [0] * len(outs)


def _batch_per_element(args, dims, size, batch_shape, params):
    mapped = [k for k, d in enumerate(dims) if d is not None]

    def one(sliced):
        full = list(args)
        for k, x in zip(mapped, sliced):
            full[k] = x
        return keops_reduce_p.bind(*full, batch_shape=batch_shape, **params)

    outs = lax.map(one, [jnp.moveaxis(args[k], dims[k], 0) for k in mapped])
    return outs, [0] * len(outs)


batching.primitive_batchers[keops_reduce_p] = _batch


# --- differentiation ---------------------------------------------------------------------------


def compact_operands(formulas, operands, var_cats):
    """Drop the operands no formula uses and renumber the variables to match."""
    used = sorted({v.index for f in formulas for v in walk([f]) if isinstance(v, Var)})
    renumber = {old: new for new, old in enumerate(used)}
    if used != list(range(len(operands))):
        formulas = tuple(
            substitute(f, lambda leaf: Var(renumber[leaf.index], leaf.dim, leaf.cat)
                       if isinstance(leaf, Var) else None)
            for f in formulas
        )
    return formulas, [operands[k] for k in used], [var_cats[k] for k in used]


def keops_reduce_compact(formulas, operands, var_cats, **params):
    """Bind the primitive on the operands the formulas use (the others are dropped)."""
    formulas, operands, var_cats = compact_operands(formulas, operands, var_cats)
    return keops_reduce(operands, formulas=formulas, var_cats=var_cats, **params)


def _jvp(primals, tangents, *, formulas, var_cats, **params):
    rule = JVP_RULES[params["reduction"]]
    primals, ranges, params = split_ranges(primals, params)
    if ranges is not None:  # integers: no tangent; the rules pass them on to every reduction
        tangents, params = tangents[: len(primals)], dict(params, ranges=ranges)
    tangents = [None if type(t) is ad.Zero else t for t in tangents]
    outs, tangent_outs = rule(primals, tangents, formulas, var_cats, params)
    return outs, [
        ad.Zero(jax.typeof(o).to_tangent_aval()) if t is None else t
        for o, t in zip(outs, tangent_outs)
    ]


def _unbroadcast_batch(x, batch):
    """Sum x over the batch axes where the operand was broadcast (size 1)."""
    axes = tuple(k for k, b in enumerate(batch) if b == 1 and x.shape[k] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def _transpose(cts, *operands, formulas, var_cats, reduction, reduction_params, axis, batch_shape,
               **params):
    if reduction != "Sum":
        raise NotImplementedError(f"transposition of the {reduction} reduction")
    operands, ranges, params = split_ranges(operands, params)
    if ranges is not None:  # the cotangent reductions read the half of the tuple their axis needs
        params = dict(params, ranges=ranges)
    (ct,) = cts
    linear = {k for k, x in enumerate(operands) if ad.is_undefined_primal(x)}
    no_ranges_ct = [] if ranges is None else [None] * N_RANGES
    if type(ct) is ad.Zero:
        return [None] * len(operands) + no_ranges_ct
    (formula,) = formulas
    outer_cat = CAT_I if axis == 1 else CAT_J
    ct_var = Var(len(operands), formula.dim, outer_cat)
    ct_formulas = transpose_formula(formula, linear, ct_var)
    values = [None if k in linear else x for k, x in enumerate(operands)] + [ct]
    cats = list(var_cats) + [outer_cat]
    results = []
    for k, x in enumerate(operands):
        if k not in linear:
            results.append(None)
            continue
        aval = x.aval
        g = ct_formulas.get(k)
        if g is None:
            results.append(ad.Zero(aval))
            continue
        cat = var_cats[k]
        # The cotangent of an i variable is indexed by i: a reduction over j (axis 1), and so on;
        # a parameter's is summed over the whole grid.
        red_axis = {CAT_I: 1, CAT_J: 0, CAT_P: axis}[cat]
        (out,) = keops_reduce_compact((g,), values, cats, reduction="Sum", reduction_params=(),
                                 axis=red_axis, batch_shape=batch_shape, **params)
        if cat == CAT_P:
            out = out.sum(axis=-2)
        out = _unbroadcast_batch(out, aval.shape[: len(batch_shape)])
        results.append(out.astype(aval.dtype))
    return results + no_ranges_ct


ad.primitive_jvps[keops_reduce_p] = _jvp
ad.primitive_transposes[keops_reduce_p] = _transpose
