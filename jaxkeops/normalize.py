"""A canonical form of formulas, so that every way of writing one computation runs the same way.

Users write one function many ways: `((x - y) ** 2).sum(-1)`, `(x - y).sqnorm2()`, `x.sqdist(y)`;
`-e` or `(-1) * e`; `e / p` or `e * (1 / p)`. The compiler (jaxkeops/program.py) normalises
before CSE and register allocation, and the family matcher (jaxkeops/families.py) matches
normalised formulas only. The primitive's parameters keep the formulas as written (they are the
jit cache keys); normalising happens at lowering.

Rules (each keeps values within float rounding, and NaN / inf where the original has them):
- `Pow(x, 2)` and `x * x` → `Square(x)`; `Sum(Square(a - b))`, `SqNorm2(a - b)` → `SqDist(a, b)`
  (a, b of equal dims), `Square(a - b)` of dimension 1 → `SqDist(a, b)`; `Sum(Square(x))` →
  `SqNorm2(x)`; `Sum(a * b)` (equal dims) → `Scalprod(a, b)`; `Sum` of a scalar → the scalar.
- Products are a coefficient times a core: the coefficient gathers every factor with no i or j
  variable ("param-role": parameters and constants), signs included; constants folded into one.
  `-x` and `(-1) * x` both become `Minus(x)`; `c1 * (c2 * x)` → `(c1 * c2) * x`; `x / p` with p
  param-role → `(1 / p) * x` (the inverse is param-role: computed once, outside the pair loop).
  A scalar coefficient moves out of `Sum` and `Scalprod`.
- Subformulas made of constants only are folded into one constant.
"""

from __future__ import annotations

import numpy as np

from jaxkeops.formula import CAT_P, Const, Node, Op, Var, walk
from jaxkeops.ops import OPS, apply_op

# Ops that `Const`-only folding evaluates (elementwise, plain float64 numpy); the others stay.
_FOLDABLE = {"Add", "Subtract", "Mult", "Divide", "Minus", "Exp", "Log", "Sqrt", "Square", "Pow",
             "Rsqrt", "Abs", "Sum", "SqNorm2", "Scalprod", "SqDist"}


def _fold(node: Op) -> Node:
    """A constant for an op of constants (`node` itself when the op is not foldable)."""
    if node.name not in _FOLDABLE:
        return node
    args = [np.asarray(a.values, np.float64) for a in node.args]
    with np.errstate(all="ignore"):
        value = OPS[node.name].reference(*args, node.params)
    value = np.broadcast_to(np.asarray(value, np.float64), (node.dim,))
    return Const(value.tolist())


class _Normaliser:
    def __init__(self):
        self.memo: dict[Node, Node] = {}
        self.param: dict[Node, bool] = {}

    def is_param(self, node: Node) -> bool:
        known = self.param.get(node)
        if known is None:
            if isinstance(node, Var):
                known = node.cat == CAT_P
            elif isinstance(node, Const):
                known = True
            else:
                known = all(self.is_param(a) for a in node.args)
            self.param[node] = known
        return known

    # --- products: coefficient × core -------------------------------------------------------

    def split(self, node: Node):
        """(constant factor or None, param-role factors, core or None) of a normalised node."""
        if isinstance(node, Const):
            return node, [], None
        if self.is_param(node):
            if isinstance(node, Op) and node.name == "Minus":
                return Const([-1.0]), [node.args[0]], None
            if isinstance(node, Op) and node.name == "Mult":
                return self._split_product(node)
            return None, [node], None
        if isinstance(node, Op) and node.name == "Minus":
            const, params, core = self.split(node.args[0])
            return _times(Const([-1.0]), const), params, core
        if isinstance(node, Op) and node.name == "Mult":
            return self._split_product(node)
        return None, [], node

    def _split_product(self, node: Op):
        ca, pa, a = self.split(node.args[0])
        cb, pb, b = self.split(node.args[1])
        if a is None or b is None:
            core = b if a is None else a
        else:
            core = apply_op("Mult", (a, b))
        return _times(ca, cb), pa + pb, core

    def product(self, const, params, core, dim: int) -> Node:
        """Rebuild `const * params * core` canonically: one param-role coefficient (the constant
        first, then the parameters in a stable order; computed once, outside the pair loop) times
        the core; Minus for a coefficient -1, no coefficient for 1."""
        if const is not None and all(v == 1.0 for v in const.values) and (
                const.dim == 1 or (core is not None and core.dim == const.dim)):
            const = None
        negate = const is not None and const.dim == 1 and const.values[0] == -1.0 and (
            core is not None or params)
        if negate:
            const = None
        coefficient = const
        for p in sorted(params, key=repr):
            coefficient = p if coefficient is None else apply_op("Mult", (coefficient, p))
        if coefficient is None and core is None:
            out = Const([-1.0 if negate else 1.0])
        elif coefficient is None:
            out = core
        elif core is None:
            out = coefficient
        else:
            out = apply_op("Mult", (coefficient, core))
        if negate:
            out = apply_op("Minus", (out,))
        if out.dim != dim:  # a dim-1 product broadcast by a factor equal to 1: keep the dim
            out = _fold(apply_op("Mult", (out, Const([1.0] * dim)))) if isinstance(out, Const) \
                else apply_op("Mult", (out, Const([1.0] * dim)))
        return out

    # --- rewriting ----------------------------------------------------------------------------

    def __call__(self, node: Node) -> Node:
        for n in walk([node]):
            if n in self.memo:
                continue
            if isinstance(n, Op):
                args = tuple(self.memo[a] for a in n.args)
                rebuilt = n if args == n.args else Op(n.name, args, n.params, dim=n.dim)
                self.memo[n] = self.rewrite(rebuilt)
            else:
                self.memo[n] = n
        return self.memo[node]

    def rewrite(self, node: Op) -> Node:
        if all(isinstance(a, Const) for a in node.args):
            folded = _fold(node)
            if folded is not node:
                return folded
        name, args = node.name, node.args
        if name == "Pow" and node.params == (2,):
            return self.rewrite(apply_op("Square", args))
        if name == "Pow" and node.params == (1,):
            return args[0]
        if name == "Square":
            (x,) = args
            if _is_op(x, "Minus"):
                return self.rewrite(apply_op("Square", (x.args[0],)))
            if x.dim == 1 and _is_op(x, "Subtract") and x.args[0].dim == x.args[1].dim:
                return apply_op("SqDist", x.args)
            return node
        if name == "Mult" and args[0] == args[1] and not self.is_param(node):
            return self.rewrite(apply_op("Square", (args[0],)))
        if name in ("Mult", "Minus"):
            return self.product(*self.split(node), node.dim)
        if name == "Divide":
            num, den = args
            if self.is_param(den) and not self.is_param(num):
                inverse = self.rewrite(apply_op("Divide", (Const([1.0]), den)))
                return self.rewrite(apply_op("Mult", (inverse, num)))
            const, params, core = self.split(num)
            if core is not None and (const is not None or params):
                inner = apply_op("Divide", (core, den))
                return self.product(const, params, inner, node.dim) if inner.dim == node.dim \
                    else node
            return node
        if name == "Sum":
            return self.rewrite_sum(node)
        if name == "SqNorm2":
            (x,) = args
            if _is_op(x, "Subtract") and x.args[0].dim == x.args[1].dim:
                return apply_op("SqDist", x.args)
            if _is_op(x, "Minus"):
                return self.rewrite(apply_op("SqNorm2", (x.args[0],)))
            return node
        if name == "Scalprod":
            return self.rewrite_scalprod(node)
        return node

    def scalar_factors(self, node: Node):
        """(dimension-1 factors, product of the others) of a product of dimension > 1."""
        if node.dim == 1 or not _is_op(node, "Mult"):
            return [], node
        scalars, rest = [], None
        for a in node.args:
            sa, ra = self.scalar_factors(a) if a.dim > 1 else ([a], None)
            scalars += sa
            if ra is not None:
                rest = ra if rest is None else apply_op("Mult", (rest, ra))
        return scalars, rest

    def pull_scalars(self, node: Op, args: tuple) -> Node | None:
        """`node` (Sum or Scalprod of `args`) with the dimension-1 factors of its arguments
        moved out: Σ_d (w x_d) = w Σ_d x_d. None when there is none."""
        pulled, rest = [], []
        for a in args:
            sa, ra = self.scalar_factors(a)
            pulled += sa
            rest.append(ra)
        if not pulled:
            return None
        out = self.rewrite(apply_op(node.name, tuple(rest)))
        for f in pulled:
            out = apply_op("Mult", (f, out))
        return self.rewrite(out)

    def rewrite_sum(self, node: Op) -> Node:
        (x,) = node.args
        if x.dim == 1:
            return x
        pulled = self.pull_scalars(node, node.args)
        if pulled is not None:
            return pulled
        if _is_op(x, "Square"):
            return self.rewrite(apply_op("SqNorm2", x.args))
        const, params, core = self.split(x)
        scalar_coefficient = core is not None and (const is None or const.dim == 1) and all(
            p.dim == 1 for p in params)
        if scalar_coefficient and (const is not None or params):
            inner = self.rewrite(apply_op("Sum", (core,)))
            return self.product(const, params, inner, 1)
        if _is_op(x, "Mult") and x.args[0].dim == x.args[1].dim:
            return self.rewrite(apply_op("Scalprod", x.args))
        return node

    def rewrite_scalprod(self, node: Op) -> Node:
        a, b = node.args
        ca, pa, ka = self.split(a)
        cb, pb, kb = self.split(b)
        factors = [c for c in (ca, cb) if c is not None] + pa + pb
        if ka is None or kb is None or not factors or any(f.dim != 1 for f in factors):
            pulled = self.pull_scalars(node, node.args)
            return node if pulled is None else pulled
        inner = self.rewrite(apply_op("Scalprod", (ka, kb)))
        return self.product(_times(ca, cb), pa + pb, inner, 1)


def _is_op(node: Node, name: str) -> bool:
    return isinstance(node, Op) and node.name == name


def _times(a: Const | None, b: Const | None) -> Const | None:
    if a is None or b is None:
        return b if a is None else a
    return Const((np.asarray(a.values) * np.asarray(b.values)).tolist())


def normalize(node: Node) -> Node:
    """The canonical form of one formula (same dimension, same values within rounding)."""
    out = _Normaliser()(node)
    assert out.dim == node.dim, (node, out)
    return out


def normalize_formulas(formulas) -> tuple[Node, ...]:
    """The canonical forms of the formulas of one reduction (shared subformulas stay shared)."""
    normaliser = _Normaliser()
    return tuple(normaliser(f) for f in formulas)
