"""The family matcher: which reductions the fused kernels run (docs/fused-kernels.md).

`match_fused` looks at the normalised formulas of one reduction (jaxkeops/normalize.py) and, when
they fit the fused kernels' computation

    value_ij = φ(s_ij, a_ij, U_i, V_j, C) · Ψ_ij,

returns a `FusedPlan`: the family's name for users, how to build the `jaxkeops_fused` call's
operands with jnp from the primitive's operands, its attributes, and the jnp post-processing of
its outputs. Otherwise it returns None and the reduction runs on the interpreter.

How a formula is taken apart (i is the outer index, j the inner one):
- s is the unique *score* of one outer and one inner formula: SqDist, Scalprod, Sum(Abs(x - y))
  or a parameter-weighted squared distance. Its two formulas become X and Y (computed with jnp).
- a is a bilinear pair scalar ⟨AO_i, AI_j⟩ (e.g. ⟨g_i, b_j⟩ in a gradient); a Scalprod of an
  outer formula with a sum of outer and inner pieces is expanded first (⟨g_i, w_j - o_i⟩ =
  ⟨g_i, w_j⟩ - ⟨g_i, o_i⟩), the outer-only part becoming a U column.
- outer-only, inner-only and parameter-only scalar subformulas are U, V and C columns.
- Ψ is 1, an inner vector Z_j, or X_i - Y_j (a difference of the other sign negates X and Y,
  which no score sees).
- For Sum, factors that are outer-only or parameter-only are pulled out of the sum and applied
  to the output; for SumSoftMaxWeight likewise for the weight; for LogSumExpWeight a weight
  exp(o_i + w_j) becomes Z_j = exp(w_j) and o_i is added to the output.
φ is one of the compile-time kinds (affine, exp_affine, one) when it fits them, else a small
register program (at most 32 instructions over 4 slots).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.formula import CAT_I, CAT_J, CAT_P, Const, Node, Op, Var, walk
from jaxkeops.normalize import normalize_formulas
from jaxkeops.ops import OPS, apply_op
from jaxkeops.reductions import REDUCTIONS

FUSED_TARGET = "jaxkeops_fused"

SCORE_NONE, SCORE_SQDIST, SCORE_DOT, SCORE_L1, SCORE_WEIGHTED = 0, 1, 2, 3, 4
PHI_AFFINE, PHI_EXP_AFFINE, PHI_PROGRAM, PHI_ONE = 0, 1, 2, 3
FACTOR_NONE, FACTOR_Z, FACTOR_DIFF = 0, 1, 2

SCORE_NAMES = {SCORE_NONE: "none", SCORE_SQDIST: "sqdist", SCORE_DOT: "dot", SCORE_L1: "l1",
               SCORE_WEIGHTED: "weighted sqdist"}
PHI_NAMES = {PHI_AFFINE: "affine", PHI_EXP_AFFINE: "exp_affine", PHI_PROGRAM: "program",
             PHI_ONE: "one"}

# φ program references (docs/fused-kernels.md).
REF_S, REF_A, REF_U, REF_V, REF_C = 4, 5, 8, 16, 32
MAX_PROGRAM, SLOTS, MAX_COLUMNS = 32, 4, 8

# Scalar ops a φ program may run (op table entries, elementwise, no static parameter). Not Sin,
# Cos, SinXDivX: CUDA's sin/cos keep an array on the stack for huge arguments, and the fused
# kernels have none (src/fused/pair_math.h, fused_program_op); the interpreter runs them.
_PROGRAM_OPS = {"Add", "Subtract", "Mult", "Divide", "Minus", "Exp", "Log", "Sqrt", "Square",
                "Powf", "Abs", "Asin", "Acos", "Atan", "Rsqrt", "XLogX", "Sign", "Step",
                "ReLU", "Floor", "Atan2", "Equal", "NotEqual", "LessThan", "LessOrEqual"}

_REDUCTIONS_BY_FACTOR = {
    "Sum": {FACTOR_NONE, FACTOR_Z, FACTOR_DIFF},
    "LogSumExp": {FACTOR_NONE},
    "LogSumExpWeight": {FACTOR_Z, FACTOR_DIFF},
    "SumSoftMaxWeight": {FACTOR_Z, FACTOR_DIFF},
}
_SELECTIONS = {"Min", "ArgMin", "Min_ArgMin", "Max", "ArgMax", "Max_ArgMax", "KMin", "ArgKMin",
               "KMin_ArgKMin"}

ROLE_PARAM, ROLE_OUTER, ROLE_INNER, ROLE_PAIR = "param", "outer", "inner", "pair"


class _NoMatch(Exception):
    """The formula is outside the fused families (the interpreter runs it)."""


# --- emulation switch ------------------------------------------------------------------------------

_emulating = False
_fused_call = None  # tests only: a jnp stand-in for the FFI call (see _substitute_fused_call)


def emulating_fused_on_cpu() -> bool:
    return _emulating


@contextlib.contextmanager
def _fused_on_cpu(call):
    global _emulating, _fused_call
    previous = _emulating, _fused_call
    jax.clear_caches()
    _emulating, _fused_call = True, call
    try:
        yield
    finally:
        _emulating, _fused_call = previous
        jax.clear_caches()


@contextlib.contextmanager
def emulate_fused_on_cpu():
    """For tests: lower matching reductions on the CPU to the host emulation of the fused kernels
    (target `jaxkeops_fused` of the CPU module) instead of the interpreter. Caches are cleared on
    entry and exit so that no executable compiled the other way is reused."""
    from jaxkeops import _native

    if FUSED_TARGET not in _native.cpu.registrations():
        raise RuntimeError(f"emulate_fused_on_cpu: the CPU module has no {FUSED_TARGET!r} "
                           "target (built without the fused kernels' host emulation)")
    with _fused_on_cpu(None):
        yield


def _substitute_fused_call(call):
    """For tests: as emulate_fused_on_cpu, with `call(results, *operands, **attributes)` (e.g. a
    jnp transcription of docs/fused-kernels.md) in place of the FFI call: checks the plans
    without the native target."""
    return _fused_on_cpu(call)


# --- the plan ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FusedPlan:
    """One `jaxkeops_fused` call and its jnp pre- and post-processing.

    Formulas below are over the primitive's variables: `outer` ones are evaluated per outer row
    (parameters broadcast), `inner` ones per inner row, `param` ones once per batch entry."""

    family: str
    reduction: str
    k: int
    score: int
    phi: int
    program: tuple[int, ...]
    factor: int
    X: Node | None  # outer, dim D (None: a dummy zero of dim 1, score none)
    Y: Node | None  # inner
    negate_xy: bool
    C: tuple[Node, ...]  # param scalars (the weights of score 4 first, as one dim-D formula)
    U: tuple[Node, ...]  # outer scalars
    V: tuple[Node, ...]  # inner scalars
    AO: Node | None  # outer, dim NA
    AI: Node | None  # inner, dim NA
    Z: Node | None  # inner, dim E
    post_mult: Node | None  # outer or param formula multiplying the output (Sum, SumSoftMaxWeight)
    post_add: Node | None  # outer formula added to the output (LogSumExpWeight)
    value_dim: int  # dim of the fused call's value output
    var_cats: tuple[int, ...]
    axis: int

    def run(self, *operands, ni, nj, batch_shape, out_avals):
        """The outputs of the reduction: jnp operand preparation, the FFI call, post-processing."""
        n_outer, n_inner = (ni, nj) if self.axis == 1 else (nj, ni)
        dtype = operands[0].dtype
        side = _Sides(operands, self.var_cats, self.axis, len(batch_shape), dtype)
        X = side.rows(self.X, "outer", n_outer) if self.X is not None else None
        Y = side.rows(self.Y, "inner", n_inner) if self.Y is not None else None
        if X is None:
            X = jnp.zeros((1,) * len(batch_shape) + (n_outer, 1), dtype)
            Y = jnp.zeros((1,) * len(batch_shape) + (n_inner, 1), dtype)
        if self.negate_xy:
            X, Y = -X, -Y
        C = side.columns(self.C, "param", None)
        if C.shape[-1] == 0:
            C = jnp.zeros((1,) * len(batch_shape) + (1,), dtype)
        U = side.columns(self.U, "outer", n_outer)
        V = side.columns(self.V, "inner", n_inner)
        AO = side.columns((self.AO,) if self.AO is not None else (), "outer", n_outer)
        AI = side.columns((self.AI,) if self.AI is not None else (), "inner", n_inner)
        Z = side.columns((self.Z,) if self.Z is not None else (), "inner", n_inner)
        spec = REDUCTIONS[self.reduction]
        dims = (self.value_dim,) if spec.n_formulas == 1 else (1, self.value_dim)
        params = (self.k,) if self.reduction.startswith(("KMin", "ArgKMin")) else ()
        results = [jax.ShapeDtypeStruct(tuple(batch_shape) + (n_outer,) + shape, out_dtype)
                   for shape, out_dtype in spec.outputs(dims, params, dtype)]
        attributes = dict(score=np.int32(self.score), phi=np.int32(self.phi),
                          program=np.asarray(self.program, np.int32),
                          factor=np.int32(self.factor), reduction=np.int32(spec.code),
                          k=np.int32(self.k))
        if _fused_call is not None:
            outs = _fused_call(results, X, Y, C, U, V, AO, AI, Z, **attributes)
        else:
            outs = jax.ffi.ffi_call(FUSED_TARGET, results)(X, Y, C, U, V, AO, AI, Z,
                                                           **attributes)
        outs = list(outs)
        if self.post_mult is not None:
            outs[0] = outs[0] * side.rows(self.post_mult, "outer", n_outer)
        if self.post_add is not None:
            outs[0] = outs[0] + side.rows(self.post_add, "outer", n_outer)
        return [jnp.broadcast_to(o, aval.shape).astype(aval.dtype)
                for o, aval in zip(outs, out_avals)]


class _Sides:
    """Evaluates outer / inner / param formulas with jnp on operands with batch dims."""

    def __init__(self, operands, var_cats, axis, n_batch, dtype):
        self.operands, self.var_cats, self.nb, self.dtype = operands, var_cats, n_batch, dtype
        self.outer_cat = CAT_I if axis == 1 else CAT_J

    def evaluate(self, formula: Node, side: str):
        from jaxkeops.reference import evaluate_formulas

        leaves = {}
        for v in walk([formula]):
            if not isinstance(v, Var):
                continue
            x = self.operands[v.index]
            if self.var_cats[v.index] == CAT_P:
                leaves[v.index] = x if side == "param" else x[..., None, :]
            else:
                assert side == ("outer" if self.var_cats[v.index] == self.outer_cat else "inner")
                leaves[v.index] = x
        (value,) = evaluate_formulas((formula,), leaves, self.dtype)
        return value

    def rows(self, formula: Node, side: str, n: int | None):
        """formula shaped (*b, n, dim) ((*b, dim) for a param formula, n None)."""
        value = self.evaluate(formula, side)
        rank = self.nb + (1 if n is None else 2)
        value = jnp.reshape(value, (1,) * (rank - value.ndim) + value.shape)
        tail = (formula.dim,) if n is None else (n, formula.dim)
        return jnp.broadcast_to(value, value.shape[: self.nb] + tail)

    def columns(self, formulas, side: str, n: int | None):
        """The formulas side by side: (*b, n, Σ dims) ((*b, Σ dims) for params)."""
        parts = [self.rows(f, side, n) for f in formulas]
        tail = () if n is None else (n,)
        if not parts:
            return jnp.zeros((1,) * self.nb + tail + (0,), self.dtype)
        batch = tuple(max(p.shape[k] for p in parts) for k in range(self.nb))
        parts = [jnp.broadcast_to(p, batch + p.shape[self.nb:]) for p in parts]
        return jnp.concatenate(parts, axis=-1)


# --- matching ----------------------------------------------------------------------------------


def _const(value: float) -> Const:
    return Const([float(value)])


def _is(node: Node, name: str) -> bool:
    return isinstance(node, Op) and node.name == name


def _add(a: Node | None, b: Node) -> Node:
    return b if a is None else apply_op("Add", (a, b))


def _mul(a: Node | None, b: Node) -> Node:
    return b if a is None else apply_op("Mult", (a, b))


def _scaled(sign: float, coefs: tuple[Node, ...], term: Node | None) -> Node:
    out = term
    for c in coefs:
        out = c if out is None else apply_op("Mult", (c, out))
    if out is None:
        return _const(sign)
    return apply_op("Minus", (out,)) if sign < 0 else out


@dataclasses.dataclass
class _Score:
    kind: int
    outer: Node
    inner: Node
    node: Node  # the formula node computing it
    weights: Node | None = None


class _Matcher:
    def __init__(self, var_cats, axis):
        self.var_cats, self.axis = var_cats, axis
        self.outer_cat = CAT_I if axis == 1 else CAT_J
        self.roles: dict[Node, str] = {}

    def role(self, node: Node) -> str:
        known = self.roles.get(node)
        if known is None:
            if isinstance(node, Const):
                known = ROLE_PARAM
            elif isinstance(node, Var):
                cat = self.var_cats[node.index]
                known = (ROLE_PARAM if cat == CAT_P
                         else ROLE_OUTER if cat == self.outer_cat else ROLE_INNER)
            else:
                roles = {self.role(a) for a in node.args} - {ROLE_PARAM}
                known = (ROLE_PARAM if not roles else roles.pop() if len(roles) == 1
                         else ROLE_PAIR)
            self.roles[node] = known
        return known

    # --- atoms: scores, bilinear pair scalars, differences ------------------------------------

    def oriented(self, a: Node, b: Node):
        """(outer, inner) when one of a, b is outer-role and the other inner-role, else None."""
        ra, rb = self.role(a), self.role(b)
        if (ra, rb) == (ROLE_OUTER, ROLE_INNER):
            return a, b
        if (ra, rb) == (ROLE_INNER, ROLE_OUTER):
            return b, a
        return None

    def score_atom(self, node: Node) -> _Score | None:
        if _is(node, "SqDist"):
            pair = self.oriented(*node.args)
            return None if pair is None else _Score(SCORE_SQDIST, *pair, node)
        if _is(node, "Sum") and _is(node.args[0], "Abs") and _is(node.args[0].args[0], "Subtract"):
            diff = node.args[0].args[0]
            pair = self.oriented(*diff.args) if diff.args[0].dim == diff.args[1].dim else None
            return None if pair is None else _Score(SCORE_L1, *pair, node)
        if _is(node, "Scalprod"):
            for w, sq in (node.args, node.args[::-1]):
                if (self.role(w) == ROLE_PARAM and _is(sq, "Square")
                        and _is(sq.args[0], "Subtract")):
                    diff = sq.args[0]
                    pair = self.oriented(*diff.args) if diff.args[0].dim == diff.args[1].dim \
                        else None
                    if pair is not None:
                        return _Score(SCORE_WEIGHTED, *pair, node, weights=w)
            pair = self.oriented(*node.args) or self.separable(node)
            return None if pair is None else _Score(SCORE_DOT, *pair, node)
        if _is(node, "Mult") and node.dim == 1:
            pair = self.oriented(*node.args)
            return None if pair is None else _Score(SCORE_DOT, *pair, node)
        return None

    def separable(self, node: Op):
        """(AO, AI) when Scalprod(a, b) = ⟨AO_i, AI_j⟩ with AO a product of outer factors and
        AI of inner ones (an exp(o_i + w_j) factor counts as exp(o_i)·exp(w_j)), else None."""
        sign, outer, inner = 1, None, None
        for arg in node.args:
            s, factors = self.factors(arg)
            sign *= s
            for f in factors:
                if _is(f, "Exp") and self.role(f) == ROLE_PAIR:
                    o, i = self.split_exp(f)
                    if o is None or i is None:
                        return None
                    factors += [o, i]
                    continue
                role = self.role(f)
                if role in (ROLE_OUTER, ROLE_PARAM):
                    outer = _mul(outer, f)
                elif role == ROLE_INNER:
                    inner = _mul(inner, f)
                else:
                    return None
        if outer is None or inner is None or outer.dim != inner.dim:
            return None
        return (apply_op("Minus", (outer,)) if sign < 0 else outer), inner

    def split_exp(self, node: Op):
        """exp(t) with t = outer part + inner part: (exp(outer part), exp(inner part))."""
        outer = inner = None
        for sign, coefs, term in self.linear(node.args[0]):
            role = self.role(term)
            piece = _scaled(sign, coefs, term)
            if role in (ROLE_OUTER, ROLE_PARAM):
                outer = _add(outer, piece)
            elif role == ROLE_INNER:
                inner = _add(inner, piece)
            else:
                return None, None
        wrap = lambda t: None if t is None else apply_op("Exp", (t,))  # noqa: E731
        return wrap(outer), wrap(inner)

    def difference(self, node: Node):
        """(outer, inner, sign) when node is ±(outer - inner) of equal dims, else None."""
        if _is(node, "Subtract") and node.args[0].dim == node.args[1].dim:
            ra, rb = self.role(node.args[0]), self.role(node.args[1])
            if (ra, rb) == (ROLE_OUTER, ROLE_INNER):
                return node.args[0], node.args[1], 1
            if (ra, rb) == (ROLE_INNER, ROLE_OUTER):
                return node.args[1], node.args[0], -1
        return None

    # --- products and sums ----------------------------------------------------------------------

    def factors(self, node: Node):
        """Flatten a product: (sign, factors)."""
        if _is(node, "Mult"):
            sa, fa = self.factors(node.args[0])
            sb, fb = self.factors(node.args[1])
            return sa * sb, fa + fb
        if _is(node, "Minus"):
            s, f = self.factors(node.args[0])
            return -s, f
        return 1, [node]

    def linear(self, node: Node, sign=1.0, coefs=()):
        """Flatten a sum: [(sign, scalar param coefficients, term)]."""
        if _is(node, "Add"):
            return self.linear(node.args[0], sign, coefs) + self.linear(node.args[1], sign, coefs)
        if _is(node, "Subtract"):
            return self.linear(node.args[0], sign, coefs) + self.linear(node.args[1], -sign, coefs)
        if _is(node, "Minus"):
            return self.linear(node.args[0], -sign, coefs)
        if _is(node, "Mult"):
            a, b = node.args
            if self.role(a) == ROLE_PARAM and a.dim == 1:
                return self.linear(b, sign, coefs + (a,))
            if self.role(b) == ROLE_PARAM and b.dim == 1:
                return self.linear(a, sign, coefs + (b,))
        return [(sign, coefs, node)]

    def expand_scalprod(self, node: Node) -> Node:
        """⟨g, Σ ±pieces⟩ with g one-sided: Σ ±⟨g, piece⟩ (outer-only products hoisted)."""
        a, b = node.args
        for g, other in ((a, b), (b, a)):
            if self.role(g) not in (ROLE_OUTER, ROLE_INNER) or self.role(other) != ROLE_PAIR:
                continue
            terms = self.linear(other)
            if len(terms) < 2:
                continue
            out = None
            for sign, coefs, term in terms:
                if term.dim != g.dim:
                    raise _NoMatch("a scalar product of mixed dimensions")
                piece = _scaled(sign, coefs, apply_op("Scalprod", (g, term)))
                out = piece if out is None else apply_op("Add", (out, piece))
            return out
        return node

    # --- the scalar pair function φ -------------------------------------------------------------

    def pair_atoms(self, node: Node, atoms: list):
        """Collect the pair atoms (scores / bilinear scalars) of a scalar formula; rewrite it
        with Scalprods expanded. Raises _NoMatch for pair parts no kernel computes."""
        if self.role(node) != ROLE_PAIR:
            return node
        atom = self.score_atom(node)
        if atom is not None:
            if node not in [a.node for a in atoms]:
                atoms.append(atom)
            return node
        if _is(node, "Scalprod"):
            expanded = self.expand_scalprod(node)
            if expanded is not node:
                return self.pair_atoms(expanded, atoms)
        if not isinstance(node, Op) or node.dim != 1 or any(a.dim != 1 for a in node.args):
            raise _NoMatch(f"pair subformula {node!r}")
        if node.name not in _PROGRAM_OPS and not (node.name == "Pow"):
            raise _NoMatch(f"op {node.name} in a pair formula")
        args = tuple(self.pair_atoms(a, atoms) for a in node.args)
        return node if args == node.args else Op(node.name, args, node.params, dim=node.dim)


def _affine(matcher: _Matcher, t: Node, score: _Score | None):
    """t = c·s + outer + inner (+ param constant): (coefficient, U, V) formulas, else None."""
    coef, outer, inner, const = None, None, None, None
    for sign, coefs, term in matcher.linear(t):
        role = matcher.role(term)
        if role == ROLE_PAIR:
            if score is None or term != score.node:
                return None
            coef = _add(coef, _scaled(sign, coefs, None))
        elif role == ROLE_OUTER:
            outer = _add(outer, _scaled(sign, coefs, term))
        elif role == ROLE_INNER:
            inner = _add(inner, _scaled(sign, coefs, term))
        else:
            const = _add(const, _scaled(sign, coefs, term))
    if any(f is not None and f.dim != 1 for f in (coef, outer, inner, const)):
        return None
    if const is not None:
        outer = const if outer is None else apply_op("Add", (outer, const))
    return (coef if coef is not None else _const(0.0)), outer, inner


class _Program:
    """Compiles a scalar φ formula into the fused kernels' register program."""

    def __init__(self, matcher: _Matcher, score: _Score | None, a_node: Node | None):
        self.matcher, self.score, self.a_node = matcher, score, a_node
        self.C: list[Node] = []
        self.U: list[Node] = []
        self.V: list[Node] = []

    def ref_of_column(self, columns: list, base: int, node: Node, limit: int) -> int:
        if node not in columns:
            if len(columns) >= limit:
                raise _NoMatch("too many columns for a φ program")
            columns.append(node)
        # Columns are formulas side by side: the weights of score 4 (dim D) come first in C.
        return base + sum(c.dim for c in columns[: columns.index(node)])

    def is_leaf(self, node: Node) -> bool:
        return (self.matcher.role(node) != ROLE_PAIR
                or (self.score is not None and node == self.score.node)
                or (self.a_node is not None and node == self.a_node))

    def leaf(self, node: Node) -> int:
        role = self.matcher.role(node)
        if self.score is not None and node == self.score.node:
            return REF_S
        if self.a_node is not None and node == self.a_node:
            return REF_A
        if role == ROLE_PARAM:
            return self.ref_of_column(self.C, REF_C, node, 1 << 20)
        if role == ROLE_OUTER:
            return self.ref_of_column(self.U, REF_U, node, MAX_COLUMNS)
        return self.ref_of_column(self.V, REF_V, node, MAX_COLUMNS)

    def compile(self, phi: Node) -> list[int]:
        if self.is_leaf(phi):  # φ is a leaf itself: φ = leaf · 1
            return [OPS["Mult"].opcode, 0, self.leaf(phi), self.leaf(_const(1.0))]
        order: list[Node] = []  # the pair ops, children first, each once
        seen: set[Node] = set()

        need: dict[Node, int] = {}

        def registers_needed(n) -> int:  # Ershov numbers: evaluate the hungrier operand first
            if self.is_leaf(n):
                return 0
            if n not in need:
                counts = sorted((registers_needed(a) for a in n.args), reverse=True)
                need[n] = max([1] + [c + k for k, c in enumerate(counts)])
            return need[n]

        def visit(n):
            if n in seen or self.is_leaf(n):
                return
            seen.add(n)
            for a in sorted(n.args, key=registers_needed, reverse=True):
                visit(a)
            order.append(n)

        visit(phi)
        last_use: dict[Node, int] = {}
        for step, n in enumerate(order):
            for a in n.args:
                last_use[a] = step
        slot_of: dict[Node, int] = {}
        # φ is written to slot 0 by the last instruction, when every live value is one of its
        # operands and dies there: slot 0 can hold intermediate values before.
        free = list(reversed(range(SLOTS)))
        code: list[int] = []
        for step, n in enumerate(order):
            refs = [self.leaf(a) if self.is_leaf(a) else slot_of[a] for a in n.args]
            # An instruction reads its operands before writing dst, so an operand's slot
            # whose value dies here may be the destination.
            for a in set(n.args):
                if a in slot_of and last_use[a] == step:
                    free.append(slot_of[a])
            if n is phi:
                if 0 not in free:
                    raise _NoMatch("slot 0 is not free for φ")
                dst = 0
            elif free:
                dst = free.pop()
            else:
                raise _NoMatch("φ needs more than 4 registers")
            slot_of[n] = dst
            if n.name == "Pow":
                code += [OPS["Pow"].opcode, dst, refs[0], int(n.params[0])]
            else:
                code += [OPS[n.name].opcode, dst, refs[0], refs[1] if len(refs) > 1 else 0]
        if len(code) // 4 > MAX_PROGRAM:
            raise _NoMatch("φ program longer than 32 instructions")
        return code


@dataclasses.dataclass
class _Phi:
    kind: int
    program: tuple[int, ...]
    C: list
    U: list
    V: list


def _compile_phi(matcher: _Matcher, parts: list[Node], score: _Score | None,
                 a_node: Node | None, a_multiplies: bool) -> _Phi:
    """φ = Π parts (each scalar, pair role or one-sided). `a_multiplies`: the value is also
    multiplied by a_ij (then a is not referenced inside the parts)."""
    coefficient_slot = [] if score is None or score.kind != SCORE_WEIGHTED else [score.weights]
    if not parts:
        return _Phi(PHI_ONE, (), coefficient_slot, [], [])
    if len(parts) == 1:
        body, kind = parts[0], PHI_AFFINE
        if _is(body, "Exp"):
            body, kind = body.args[0], PHI_EXP_AFFINE
        fit = _affine(matcher, body, score)
        if fit is not None:
            coef, outer, inner = fit
            return _Phi(kind, (), coefficient_slot + [coef],
                        [] if outer is None else [outer], [] if inner is None else [inner])
    if a_multiplies:
        parts = parts + [a_node]
    phi = parts[0]
    for p in parts[1:]:
        phi = apply_op("Mult", (phi, p))
    prog = _Program(matcher, score, a_node)
    prog.C = list(coefficient_slot)
    code = prog.compile(phi)
    return _Phi(PHI_PROGRAM, tuple(code), prog.C, prog.U, prog.V)


def _family_name(reduction, score, phi, has_a, factor, k):
    args = SCORE_NAMES[score.kind if score else SCORE_NONE] + (", a" if has_a else "")
    tail = {FACTOR_NONE: "", FACTOR_Z: " · Z_j", FACTOR_DIFF: " · (X_i - Y_j)"}[factor]
    red = reduction if not k else f"{reduction}(K={k})"
    return f"fused {red}: {PHI_NAMES[phi.kind]}({args}){tail}"


def _match(formulas, var_cats, reduction, reduction_params, axis) -> FusedPlan:
    m = _Matcher(var_cats, axis)
    formulas = normalize_formulas(formulas)
    k = int(reduction_params[0]) if reduction_params else 0
    post_mult = post_add = None
    z = None
    diff = None  # (outer, inner, sign) of a difference factor
    value_dim = 1

    if reduction == "Sum" or reduction in ("LogSumExpWeight", "SumSoftMaxWeight"):
        source = formulas[0] if reduction == "Sum" else formulas[1]
        sign, factors = m.factors(source)
        post = None if sign > 0 else _const(-1.0)
        scalars, inner = [], []
        for f in factors:
            role = m.role(f)
            if role in (ROLE_PARAM, ROLE_OUTER):
                if reduction == "LogSumExpWeight":
                    raise _NoMatch("outer factor of a logsumexp weight")
                post = _mul(post, f)
            elif role == ROLE_INNER:
                inner.append(f)
            elif m.difference(f) is not None and diff is None:
                diff = m.difference(f)
            elif _is(f, "Exp") and m.split_exp(f)[1] is not None:
                # exp(o_i + w_j) = exp(o_i) exp(w_j), componentwise: exp(w_j) joins Z
                outer_exp, inner_exp = m.split_exp(f)
                inner.append(inner_exp)
                if outer_exp is not None:
                    if reduction == "LogSumExpWeight":  # log(e^o Σ ...) = o + log Σ ...
                        post_add = _add(post_add, outer_exp.args[0])
                    else:
                        post = _mul(post, outer_exp)
            elif f.dim == 1:
                if reduction != "Sum":
                    raise _NoMatch("pair scalar factor in a weight")
                scalars.append(f)
            else:
                raise _NoMatch(f"vector pair factor {f!r}")
        if reduction == "LogSumExpWeight" and post is not None:
            raise _NoMatch("negative logsumexp weight")
        if diff is not None:
            if any(f.dim != 1 for f in inner):
                raise _NoMatch("an inner vector and a difference in one product")
            scalars += inner
            inner = []
        for f in inner:
            z = _mul(z, f)
        post_mult = post
        factor = FACTOR_DIFF if diff is not None else FACTOR_Z if z is not None else FACTOR_NONE
        if reduction != "Sum" and factor == FACTOR_NONE:
            factor, z = FACTOR_Z, _const(1.0)
        value_dim = {FACTOR_NONE: 1, FACTOR_Z: z.dim if z is not None else 1,
                     FACTOR_DIFF: diff[0].dim if diff else 1}[factor]
        if reduction == "Sum":
            phi_source = scalars
        else:
            phi_source = [formulas[0]]
    elif reduction == "LogSumExp" or reduction in _SELECTIONS:
        (f,) = formulas
        factor = FACTOR_NONE
        if f.dim != 1:
            if reduction not in _SELECTIONS or m.difference(f) is None:
                raise _NoMatch("vector formula")
            diff = m.difference(f)
            factor, value_dim = FACTOR_DIFF, f.dim
            phi_source = []
        else:
            phi_source = [f]
    else:
        raise _NoMatch(f"reduction {reduction}")

    if factor not in _REDUCTIONS_BY_FACTOR.get(reduction, {FACTOR_NONE, FACTOR_DIFF}):
        raise _NoMatch("factor")
    if reduction in _SELECTIONS and factor == FACTOR_DIFF and phi_source:
        raise _NoMatch("selection of a scaled difference")

    atoms: list[_Score] = []
    phi_source = [m.pair_atoms(p, atoms) if m.role(p) == ROLE_PAIR else p for p in phi_source]
    distances = [a for a in atoms if a.kind != SCORE_DOT]
    dots = [a for a in atoms if a.kind == SCORE_DOT]
    if len(distances) > 1 or len(dots) > 2 or (distances and len(dots) > 1):
        raise _NoMatch("more than one score and one pair scalar")

    candidates = []  # (score, a)
    if distances:
        candidates.append((distances[0], dots[0] if dots else None))
    elif len(dots) == 2:
        candidates += [(dots[0], dots[1]), (dots[1], dots[0])]
    elif len(dots) == 1:
        candidates += [(dots[0], None)]
        if reduction == "Sum":
            candidates.append((None, dots[0]))
    else:
        candidates.append((None, None))

    best = None
    for score, a in candidates:
        if diff is not None and score is not None and (score.outer, score.inner) != diff[:2]:
            continue
        if a is not None and reduction != "Sum" and score is None:
            continue
        a_node = None if a is None else a.node
        parts = list(phi_source)
        a_multiplies = False
        if a_node is not None and reduction == "Sum" and a_node in parts:
            parts.remove(a_node)
            a_multiplies = True
        try:  # (a program reads a_ij itself; the other kinds multiply by it)
            phi = _compile_phi(m, parts, score, a_node, a_multiplies)
        except _NoMatch:
            continue
        if best is None or (best[0].kind == PHI_PROGRAM and phi.kind != PHI_PROGRAM):
            best = (phi, score, a)  # a compile-time kind beats a program
    if best is None:
        raise _NoMatch("no φ fits")
    phi, score, a = best
    if len(phi.U) > MAX_COLUMNS or len(phi.V) > MAX_COLUMNS:
        raise _NoMatch("too many columns")

    if score is not None:
        X, Y = score.outer, score.inner
        negate = diff is not None and diff[2] < 0
    elif diff is not None:
        X, Y, negate = diff[0], diff[1], diff[2] < 0
    else:
        X = Y = None
        negate = False
    kind = SCORE_NONE if score is None else score.kind
    AO, AI = (None, None) if a is None else (a.outer, a.inner)
    return FusedPlan(
        family=_family_name(reduction, score, phi, a is not None, factor, k),
        reduction=reduction, k=k, score=kind, phi=phi.kind, program=phi.program,
        factor=factor, X=X, Y=Y, negate_xy=negate, C=tuple(phi.C), U=tuple(phi.U),
        V=tuple(phi.V), AO=AO, AI=AI, Z=z if factor == FACTOR_Z else None,
        post_mult=post_mult, post_add=post_add, value_dim=value_dim,
        var_cats=tuple(var_cats), axis=axis)


MAX_SUM_TERMS = 4


@dataclasses.dataclass(frozen=True)
class FusedPlanSum:
    """A Sum reduction of a sum of terms, each a fused call: Σ_j (A + B) = Σ_j A + Σ_j B."""

    plans: tuple[FusedPlan, ...]

    @property
    def family(self) -> str:
        return " + ".join(p.family for p in self.plans)

    def run(self, *operands, out_avals, **params):
        total = None
        for plan in self.plans:
            (out,) = plan.run(*operands, out_avals=out_avals, **params)
            total = out if total is None else total + out
        return [total]


def _match_sum_of_terms(formula, var_cats, axis) -> FusedPlanSum:
    (formula,) = normalize_formulas((formula,))
    m = _Matcher(var_cats, axis)
    terms = m.linear(formula)
    if not 2 <= len(terms) <= MAX_SUM_TERMS:
        raise _NoMatch("not a short sum of terms")
    plans = []
    for sign, coefs, term in terms:
        piece = _scaled(sign, coefs, term)
        if piece.dim != formula.dim:  # a dim-1 term broadcast by the sum
            piece = apply_op("Mult", (piece, Const([1.0] * formula.dim)))
        plans.append(_match((piece,), var_cats, "Sum", (), axis))
    return FusedPlanSum(tuple(plans))


def match_fused(formulas, var_cats, reduction, reduction_params=(), axis=1):
    """The fused kernel call(s) computing this reduction (a `FusedPlan`, or a `FusedPlanSum`
    for a Sum of a few terms that each fit), or None: the interpreter runs it."""
    formulas, var_cats = tuple(formulas), tuple(var_cats)
    try:
        return _match(formulas, var_cats, reduction, tuple(reduction_params), int(axis))
    except _NoMatch:
        pass
    if reduction == "Sum":
        try:
            return _match_sum_of_terms(formulas[0], var_cats, int(axis))
        except _NoMatch:
            pass
    return None


def kernel_name(formulas, var_cats, reduction, reduction_params, axis, platform: str) -> str:
    """What the lowering runs for this reduction on `platform` ("cpu" or "cuda")."""
    if platform == "cpu" and not _emulating:
        return "interpreter"
    plan = match_fused(formulas, var_cats, reduction, reduction_params, axis)
    return "interpreter" if plan is None else plan.family
