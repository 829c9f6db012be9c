"""`keops_reduce_p`: the one JAX primitive every jaxkeops reduction is traced into.

Operands are the formula's variables in index order: i variables shaped (ni, dim), j variables
(nj, dim), parameters (dim,). Static parameters:

  formulas          tuple of formula roots (most reductions take one; weighted ones two)
  var_cats          category of each operand (formula.CAT_I / CAT_J / CAT_P)
  reduction         name in the reduction table; reduction_params its static ints (e.g. K)
  axis              1 reduces over j (one output row per i), 0 reduces over i
  ni, nj            grid sizes (an axis may have no variable, so they cannot be read off operands)

The lowering rules live in jaxkeops/lowering.py.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from jax._src import dispatch  # apply_primitive: run one primitive eagerly via jit
from jax.extend.core import Primitive
from jax.core import ShapedArray
from jax.interpreters import ad

from jaxkeops.autodiff import jvp_formula, transpose_formula
from jaxkeops.formula import CAT_I, CAT_J, CAT_NAMES, CAT_P, Var, substitute, walk
from jaxkeops.reductions import REDUCTIONS, check_reduction

keops_reduce_p = Primitive("keops_reduce")
keops_reduce_p.multiple_results = True
keops_reduce_p.def_impl(partial(dispatch.apply_primitive, keops_reduce_p))


def keops_reduce(operands, *, formulas, var_cats, reduction, reduction_params=(), axis, ni, nj):
    """Bind the primitive; returns a tuple of outputs (see the reduction table)."""
    return keops_reduce_p.bind(
        *operands,
        formulas=tuple(formulas),
        var_cats=tuple(int(c) for c in var_cats),
        reduction=reduction,
        reduction_params=tuple(int(p) for p in reduction_params),
        axis=int(axis),
        ni=int(ni),
        nj=int(nj),
    )


def expected_operand_shape(cat: int, dim: int, ni: int, nj: int) -> tuple[int, ...]:
    return {CAT_I: (ni, dim), CAT_J: (nj, dim), CAT_P: (dim,)}[cat]


def _abstract_eval(*avals, formulas, var_cats, reduction, reduction_params, axis, ni, nj):
    if len(avals) != len(var_cats):
        raise TypeError(f"keops_reduce: {len(avals)} operands for {len(var_cats)} variables")
    dtype = avals[0].dtype if avals else np.dtype(np.float32)
    for index, (aval, cat) in enumerate(zip(avals, var_cats)):
        dim = aval.shape[-1] if aval.ndim else 0
        expected = expected_operand_shape(cat, dim, ni, nj)
        if aval.shape != expected:
            raise TypeError(
                f"keops_reduce: operand {index} ({CAT_NAMES[cat]} variable) has shape "
                f"{aval.shape}, expected {expected}"
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
    return [ShapedArray((n_outer,) + shape, out_dtype) for shape, out_dtype in outputs]


keops_reduce_p.def_abstract_eval(_abstract_eval)


# --- differentiation ---------------------------------------------------------------------------


def _compact(formulas, operands, var_cats):
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


def _reduce_compact(formulas, operands, var_cats, **params):
    formulas, operands, var_cats = _compact(formulas, operands, var_cats)
    return keops_reduce(operands, formulas=formulas, var_cats=var_cats, **params)


def _jvp(primals, tangents, *, formulas, var_cats, reduction, reduction_params, axis, ni, nj):
    params = dict(reduction=reduction, reduction_params=reduction_params, axis=axis, ni=ni, nj=nj)
    primal_out = keops_reduce_p.bind(*primals, formulas=formulas, var_cats=var_cats, **params)
    if reduction != "Sum":
        raise NotImplementedError(f"differentiation of the {reduction} reduction")
    # One new variable per non-zero tangent, of the same category and dimension as its primal.
    tangent_vars, operands, cats = {}, list(primals), list(var_cats)
    for k, t in enumerate(tangents):
        if type(t) is not ad.Zero:
            tangent_vars[k] = Var(len(operands), primals[k].shape[-1], var_cats[k])
            operands.append(t)
            cats.append(var_cats[k])
    (formula,) = formulas
    d_formula = jvp_formula(formula, tangent_vars) if tangent_vars else None
    if d_formula is None:
        return primal_out, [ad.Zero.from_primal_value(o) for o in primal_out]
    tangent_out = _reduce_compact((d_formula,), operands, cats, **params)
    return primal_out, list(tangent_out)


def _transpose(cts, *operands, formulas, var_cats, reduction, reduction_params, axis, ni, nj):
    if reduction != "Sum":
        raise NotImplementedError(f"transposition of the {reduction} reduction")
    (ct,) = cts
    linear = {k for k, x in enumerate(operands) if ad.is_undefined_primal(x)}
    if type(ct) is ad.Zero:
        return [None] * len(operands)
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
        (out,) = _reduce_compact((g,), values, cats, reduction="Sum", reduction_params=(),
                                 axis=red_axis, ni=ni, nj=nj)
        if cat == CAT_P:
            out = out.sum(axis=0)
        results.append(out.astype(aval.dtype))
    return results


ad.primitive_jvps[keops_reduce_p] = _jvp
ad.primitive_transposes[keops_reduce_p] = _transpose
