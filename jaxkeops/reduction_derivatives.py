"""jvp rules of the reductions: one rule per entry of the reduction table (a test checks that).

A rule takes the primal operands, their tangents (None where zero), the formulas, the variable
categories and the other static parameters, and returns (primal outputs, tangent outputs).

Tangents are built so that they can be differentiated and transposed again:
- Sum-like reductions (Sum, LogSumExp, LogSumExpWeight, SumSoftMaxWeight) get tangents that are
  Sum reductions of a tangent formula, linear in the tangent variables, whose other inputs are
  primal values (e.g. the log-sum-exp L_i, which keeps exp(S - L) ≤ 1: stable for large S).
  The primitive's transpose rule handles Sum, so reverse mode follows.
- Selection reductions (min, max, K-min and their arg versions) differentiate the formula at the
  selected pairs: the pairs are gathered and evaluated with jnp (O(M) dense work), which JAX
  differentiates to any order. Index outputs have zero tangents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkeops.autodiff import jvp_formula
from jaxkeops.formula import CAT_I, CAT_J, Var
from jaxkeops.ops import add_formulas, mul_tangent, op_node
from jaxkeops.reference import pick_values


def _bind(operands, formulas, var_cats, **params):
    from jaxkeops.primitive import keops_reduce_compact  # the primitive imports this module

    return keops_reduce_compact(formulas, operands, var_cats, **params)


class _Tangent:
    """The tangent formulas of a call: primal operands, then one variable per non-zero tangent,
    then whatever extra (primal) operands a rule appends with `add_outer`."""

    def __init__(self, primals, tangents, var_cats, axis):
        self.operands, self.cats, self.vars = list(primals), list(var_cats), {}
        self.outer_cat = CAT_I if axis == 1 else CAT_J
        for k, t in enumerate(tangents):
            if t is not None:
                self.vars[k] = self._append(t, primals[k].shape[-1], var_cats[k])

    def _append(self, array, dim, cat) -> Var:
        var = Var(len(self.operands), dim, cat)
        self.operands.append(array)
        self.cats.append(cat)
        return var

    def of(self, formula):
        return jvp_formula(formula, self.vars) if self.vars else None

    def add_outer(self, array) -> Var:
        """A per-output-row array (e.g. a primal output) as a variable of the formula."""
        return self._append(array, array.shape[-1], self.outer_cat)


def _sum_of(formula, tangent: _Tangent, params):
    sum_params = dict(params, reduction="Sum", reduction_params=())
    (out,) = _bind(tangent.operands, (formula,), tangent.cats, **sum_params)
    return out


def _finite_or_zero(x):
    return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def _logsumexp_of(score, primals, var_cats, params):
    """L_i = log Σ_j exp(S_ij), with fully masked rows (L = -inf) replaced by 0."""
    lse_params = dict(params, reduction="LogSumExp", reduction_params=())
    (L,) = _bind(primals, (score,), var_cats, **lse_params)
    return _finite_or_zero(L)


def sum_jvp(primals, tangents, formulas, var_cats, params):
    out = _bind(primals, formulas, var_cats, **params)
    t = _Tangent(primals, tangents, var_cats, params["axis"])
    dF = t.of(formulas[0])
    return out, [None if dF is None else _sum_of(dF, t, params)]


def logsumexp_jvp(primals, tangents, formulas, var_cats, params):
    (L,) = out = _bind(primals, formulas, var_cats, **params)
    t = _Tangent(primals, tangents, var_cats, params["axis"])
    (S,) = formulas
    dS = t.of(S)
    if dS is None:
        return out, [None]
    # dL = Σ_j softmax_ij dS_ij = Σ_j exp(S_ij - L_i) dS_ij
    L_var = t.add_outer(_finite_or_zero(L))
    return out, [_sum_of(op_node("Mult", op_node("Exp", op_node("Subtract", S, L_var)), dS), t, params)]


def _weighted_start(primals, tangents, formulas, var_cats, params):
    """What the weighted rules share: the primal output, the tangent builder, the scores S and
    weights w with their tangents, and L = LSE(S) as a variable (exp(S - L) ≤ 1: stable)."""
    (out,) = _bind(primals, formulas, var_cats, **params)
    t = _Tangent(primals, tangents, var_cats, params["axis"])
    S, w = formulas
    dS, dw = t.of(S), t.of(w)
    if dS is None and dw is None:
        return out, None, None, None, None
    L = _logsumexp_of(S, primals, var_cats, params)
    softmax = op_node("Exp", op_node("Subtract", S, t.add_outer(L)))  # exp(S - L)
    return out, t, L, softmax, (w, dS, dw)


def logsumexp_weight_jvp(primals, tangents, formulas, var_cats, params):
    out, t, L, softmax, terms = _weighted_start(primals, tangents, formulas, var_cats, params)
    if t is None:
        return [out], [None]
    w, dS, dw = terms
    # out = log Σ e^S w  ⇒  d out = Σ e^{S-L} (w dS + dw) · e^{L - out}
    inner = add_formulas(mul_tangent(w, dS), dw)
    num = _sum_of(op_node("Mult", softmax, inner), t, params)
    return [out], [num * _finite_or_zero(jnp.exp(L - out))]


def sumsoftmaxweight_jvp(primals, tangents, formulas, var_cats, params):
    out, t, _, softmax, terms = _weighted_start(primals, tangents, formulas, var_cats, params)
    if t is None:
        return [out], [None]
    w, dS, dw = terms
    # out = Σ p w with p = softmax(S)  ⇒  d out = Σ p (dw + (w - out) dS).
    centred = None if dS is None else mul_tangent(op_node("Subtract", w, t.add_outer(out)), dS)
    return [out], [_sum_of(op_node("Mult", softmax, add_formulas(dw, centred)), t, params)]


def _selection_jvp(with_indices: str, value_position):
    """Rule of a selection reduction: `with_indices` is the reduction computing values and
    indices in one pass; `value_position` is where the values are in this reduction's outputs
    (None for arg-only reductions)."""

    def rule(primals, tangents, formulas, var_cats, params):
        if value_position is None:  # indices only: piecewise constant
            return _bind(primals, formulas, var_cats, **params), [None]
        values, indices = _bind(primals, formulas, var_cats, **dict(params, reduction=with_indices))
        outs = [values, indices] if params["reduction"] == with_indices else [values]
        tangent_out = [None] * len(outs)
        if any(t is not None for t in tangents):
            def at_selected(*operands):
                return pick_values(formulas[0], var_cats, operands, indices, **params)

            zeros = [jnp.zeros_like(p) if t is None else t for p, t in zip(primals, tangents)]
            _, dvalues = jax.jvp(at_selected, tuple(primals), tuple(zeros))
            # A slot with no value (index -1: an all-NaN row, an empty K-min slot) is a
            # constant (+inf / -inf), not the value of some pair: its derivative is zero.
            tangent_out[value_position] = jnp.where(indices >= 0, dvalues,
                                                    jnp.zeros_like(dvalues))
        return outs, tangent_out

    return rule


JVP_RULES = {
    "Sum": sum_jvp,
    "LogSumExp": logsumexp_jvp,
    "LogSumExpWeight": logsumexp_weight_jvp,
    "SumSoftMaxWeight": sumsoftmaxweight_jvp,
    "Min": _selection_jvp("Min_ArgMin", 0),
    "ArgMin": _selection_jvp("Min_ArgMin", None),
    "Min_ArgMin": _selection_jvp("Min_ArgMin", 0),
    "Max": _selection_jvp("Max_ArgMax", 0),
    "ArgMax": _selection_jvp("Max_ArgMax", None),
    "Max_ArgMax": _selection_jvp("Max_ArgMax", 0),
    "KMin": _selection_jvp("KMin_ArgKMin", 0),
    "ArgKMin": _selection_jvp("KMin_ArgKMin", None),
    "KMin_ArgKMin": _selection_jvp("KMin_ArgKMin", 0),
}
