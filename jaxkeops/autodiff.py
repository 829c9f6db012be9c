"""Symbolic differentiation of formulas: forward (jvp) and transposition of linear formulas.

The primitive's jvp rule turns F into its tangent formula dF (linear in new tangent variables);
the primitive's transpose rule turns a linear formula into, for each linear variable, the formula
whose reduction is that variable's cotangent. Both only combine the per-op rules of the op table,
and both produce ordinary formulas, so the derivatives run in the same kernels and can be
differentiated again.
"""

from __future__ import annotations

from jaxkeops.formula import Const, Node, Op, Var, variables, walk
from jaxkeops.ops import OPS, apply_op


def jvp_formula(formula: Node, tangents: dict[int, Node]) -> Node | None:
    """Tangent of `formula` when variable k moves along the formula `tangents[k]` (absent: 0).

    Returns None when the tangent is identically zero."""
    tangent: dict[Node, Node | None] = {}
    for node in walk([formula]):
        if isinstance(node, Var):
            tangent[node] = tangents.get(node.index)
        elif isinstance(node, Op):
            arg_tangents = tuple(tangent[a] for a in node.args)
            if all(t is None for t in arg_tangents):
                tangent[node] = None
            else:
                rule = OPS[node.name].jvp
                if rule is None:
                    raise NotImplementedError(f"{node.name} has no derivative rule")
                tangent[node] = rule(node, arg_tangents)
        else:
            tangent[node] = None
    result = tangent[formula]
    assert result is None or result.dim == formula.dim, (result, formula)
    return result


def transpose_formula(formula: Node, linear_vars: set[int], ct: Node) -> dict[int, Node]:
    """For a formula linear in the variables `linear_vars`, the formula of each one's cotangent
    given the cotangent `ct` of the formula (the gradient of <ct, formula> in that variable)."""
    order = list(walk([formula]))
    is_linear: dict[Node, bool] = {}
    for node in order:
        if isinstance(node, Var):
            is_linear[node] = node.index in linear_vars
        else:
            is_linear[node] = any(is_linear[a] for a in node.children())

    cts: dict[Node, Node] = {formula: ct}
    result: dict[int, Node] = {}
    for node in reversed(order):
        if not is_linear[node] or node not in cts:
            continue
        node_ct = cts.pop(node)
        if isinstance(node, Var):
            result[node.index] = node_ct
            continue
        rule = OPS[node.name].transpose
        if rule is None:
            raise NotImplementedError(
                f"{node.name} is not linear but its argument carries a tangent: cannot transpose"
            )
        linear = tuple(is_linear[a] for a in node.args)
        for arg, arg_ct in zip(node.args, rule(node, node_ct, linear)):
            if arg_ct is not None:
                assert arg_ct.dim == arg.dim, (node.name, arg_ct.dim, arg.dim)
                cts[arg] = arg_ct if arg not in cts else apply_op("Add", (cts[arg], arg_ct))
    return result


def _zeros(dim: int) -> Node:
    return Const([0.0] * dim)


def _check_variable(v, what: str) -> None:
    if not isinstance(v, Var):
        raise ValueError(f"{what}: v is {v!r}; expected a variable")


def grad_formula(f: Node, v: Node, gradin: Node) -> Node:
    """KeOps' Grad(f, v, gradin): the gradient with respect to the variable v of <f, gradin>
    (the adjoint of f's differential in v, applied to gradin): f's tangent along a fresh
    direction variable, transposed."""
    _check_variable(v, "Grad(f, v, gradin)")
    if gradin.dim != f.dim:
        raise ValueError(f"Grad(f, v, gradin): gradin has dimension {gradin.dim}; expected "
                         f"{f.dim} (the dimension of f)")
    fresh = 1 + max((u.index for u in variables([f, gradin, v])), default=-1)
    direction = Var(fresh, v.dim, v.cat)
    tangent = jvp_formula(f, {v.index: direction})
    if tangent is None:
        return _zeros(v.dim)
    return transpose_formula(tangent, {fresh}, gradin).get(fresh, _zeros(v.dim))


def diff_formula(f: Node, v: Node, diffin: Node) -> Node:
    """KeOps' Diff(f, v, diffin): the differential of f with respect to the variable v applied
    to diffin (forward mode: f's tangent when v moves along diffin)."""
    _check_variable(v, "Diff(f, v, diffin)")
    if diffin.dim != v.dim:
        raise ValueError(f"Diff(f, v, diffin): diffin has dimension {diffin.dim}; expected "
                         f"{v.dim} (the dimension of v)")
    tangent = jvp_formula(f, {v.index: diffin})
    return _zeros(f.dim) if tangent is None else tangent


def grad_matrix_formula(f: Node, v: Node) -> Node:
    """KeOps' GradMatrix(f, v): the f.dim × v.dim Jacobian of f in v, row k (the gradient of
    coordinate k of f) after row k-1: Grad(f, v, e_k) for each unit vector e_k."""
    _check_variable(v, "GradMatrix(f, v)")
    rows = [grad_formula(f, v, Const([1.0 if k == j else 0.0 for j in range(f.dim)]))
            for k in range(f.dim)]
    out = rows[0]
    for row in rows[1:]:
        out = apply_op("Concat", (out, row))
    return out
