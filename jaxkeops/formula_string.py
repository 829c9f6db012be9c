"""KeOps formula strings ("Exp(-SqDist(x, y)) * b") and alias strings ("x = Vi(0, 3)") parsed
into the one formula IR (jaxkeops/formula.py): no second engine, the same nodes LazyTensor builds.

KeOps evaluates its formula strings as Python expressions over its operation classes, so the
grammar is Python's expression syntax and precedence, from loosest to tightest:

    comparison := bitor [("<" | "<=" | ">" | ">=" | "==" | "!=") bitor]
    bitor      := sum ("|" sum)*                       x | y is Scalprod(x, y)
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | power
    power      := atom ["**" unary]
    atom       := NUMBER | NAME | NAME "(" arguments ")" | "(" expr ["," expr]* ")" | "[" ... "]"

Names are aliases (declared in the alias list), the functions of `FUNCTIONS` (every op of the op
table by its KeOps name, and KeOps' derived operations: Norm2, Inv, Elem, TensorProd, Grad, ...)
and the variables Var(index, dim, cat), Vi(index, dim), Vj(index, dim), Pm(index, dim).
Integers are integer constants (IntCst); arithmetic between two numbers is done in Python, as in
KeOps. Operators build exactly what the LazyTensor operators build (`x ** 2` is Square, `1 / x`
is Divide(1, x), ...), so a string and the same LazyTensor expression give equal formulas.
Errors (`FormulaSyntaxError`, a ValueError) give the position in the string and what was
expected there.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from jaxkeops.autodiff import diff_formula, grad_formula, grad_matrix_formula
from jaxkeops.formula import CAT_I, CAT_J, CAT_P, Const, Node, Var, variables
from jaxkeops.ops import OPS, apply_op, tensordot_params

CATEGORIES = {"Vi": CAT_I, "Vj": CAT_J, "Pm": CAT_P, "Vx": CAT_I, "Vy": CAT_J}  # Vx/Vy: old names


class FormulaSyntaxError(ValueError):
    """A formula or alias string that does not parse: says where and what was expected."""

    def __init__(self, text: str, pos: int, message: str):
        self.text, self.pos = text, pos
        super().__init__(f"{message} (at position {pos} of {text!r})\n    {text}\n    {' ' * pos}^")


# --- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z_0-9]*)"
    r"|(?P<op>\*\*|<=|>=|==|!=|[-+*/|<>()\[\],=]))"
)


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            tokens.append(_Token("end", "end of string", pos))
            return tokens
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FormulaSyntaxError(text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        tokens.append(_Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()


# --- values of the parser -------------------------------------------------------------------------
# A parsed expression is a formula Node, a Python number, or a tuple (a list literal such as the
# shapes of TensorDot). Numbers become constants (Const) where an operation needs a formula.


def _as_formula(value, text: str, pos: int, what: str) -> Node:
    if isinstance(value, Node):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Const([value])
    raise FormulaSyntaxError(text, pos, f"{what}: expected a formula, found the list {value!r}")


def _power(base: Node, exponent, text: str, pos: int) -> Node:
    """`x ** e` as LazyTensor.__pow__ builds it: 2 → Square, other ints → Pow, 0.5 → Sqrt,
    -0.5 → Rsqrt, anything else → Powf (exponent of dimension 1 or the base's)."""
    if isinstance(exponent, int) and not isinstance(exponent, bool):
        return apply_op("Square", (base,)) if exponent == 2 else apply_op("Pow", (base,), (exponent,))
    if isinstance(exponent, float) and exponent in (0.5, -0.5):
        return apply_op("Sqrt" if exponent == 0.5 else "Rsqrt", (base,))
    exponent = _as_formula(exponent, text, pos, "the exponent of **")
    if exponent.dim not in (1, base.dim):
        raise FormulaSyntaxError(
            text, pos, f"x ** y: exponent dimension {exponent.dim} does not match base dimension "
            f"{base.dim}; expected {sorted({1, base.dim})}")
    return apply_op("Powf", (base, exponent))


_BINARY = {"+": "Add", "-": "Subtract", "*": "Mult", "/": "Divide", "|": "Scalprod",
           "<": "LessThan", "<=": "LessOrEqual", "==": "Equal", "!=": "NotEqual"}
_PY_BINARY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
              "/": lambda a, b: a / b, "**": lambda a, b: a ** b}


# --- functions ------------------------------------------------------------------------------------

FORMULA, INT, INTS = "a formula", "an integer", "a list of integers"
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Function:
    """A function of the formula language: its parameters (name, kind, default) and builder."""

    params: tuple[tuple[str, str, object], ...]
    build: Callable[..., Node]

    def signature(self, name: str) -> str:
        return f"{name}({', '.join(p for p, _, _ in self.params)})"


def _f(*names):
    return tuple((n, FORMULA, _REQUIRED) for n in names)


def _op(name):
    return lambda *args: apply_op(name, args[: OPS[name].arity], args[OPS[name].arity:])


def _zeros(dim: int) -> Node:
    return Const([0.0] * dim)


def _inv(x):  # as LazyTensor's 1 / x
    return apply_op("Divide", (Const([1]), x))


def _norm2(x):  # as LazyTensor.norm2: Sqrt(SqNorm2(x))
    return apply_op("Sqrt", (apply_op("SqNorm2", (x,)),))


def _normalize(x):  # KeOps: Rsqrt(SqNorm2(x)) * x
    return apply_op("Mult", (apply_op("Rsqrt", (apply_op("SqNorm2", (x,)),)), x))


def _tensorprod(a, b):
    return apply_op("TensorDot", (a, b), tensordot_params([a.dim], [b.dim], [], []))


def _matvecmult(a, v):
    if a.dim % v.dim:
        raise ValueError(f"MatVecMult: matrix dimension {a.dim} is not a multiple of vector "
                         f"dimension {v.dim}")
    return apply_op("TensorDot", (a, v), tensordot_params([a.dim // v.dim, v.dim], [v.dim], [1], [0]))


def _vecmatmult(v, a):
    if a.dim % v.dim:
        raise ValueError(f"VecMatMult: matrix dimension {a.dim} is not a multiple of vector "
                         f"dimension {v.dim}")
    return apply_op("TensorDot", (v, a), tensordot_params([v.dim], [v.dim, a.dim // v.dim], [0], [0]))


def _tensordot(a, b, dimfa, dimfb, contfa, contfb, permute):
    return apply_op("TensorDot", (a, b), tensordot_params(dimfa, dimfb, contfa, contfb, permute))


def _kron(a, b, dimfa, dimfb):
    if len(dimfa) != len(dimfb):
        raise ValueError(f"Kron: shapes {list(dimfa)} and {list(dimfb)} have different ranks")
    n = len(dimfa)
    perm = list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2))
    return _tensordot(a, b, dimfa, dimfb, (), (), perm)


def _sqnorm_iso(s, x):  # s |x|²
    return apply_op("Mult", (s, apply_op("SqNorm2", (x,))))


def _sqnorm_diag(s, x):  # Σ_k s_k x_k²
    return apply_op("Sum", (apply_op("Mult", (s, apply_op("Square", (x,)))),))


def _sym_sqnorm(a, x):  # Σ_kl a_kl x_k x_l, as KeOps: Sum(a * TensorProd(x, x))
    return apply_op("Sum", (apply_op("Mult", (a, _tensorprod(x, x))),))


def _weighted_sqnorm(s, x):  # KeOps' dispatch on the weights' dimension
    if s.dim == 1:
        return _sqnorm_iso(s, x)
    if s.dim == x.dim:
        return _sqnorm_diag(s, x)
    if s.dim == x.dim * x.dim:
        return _sym_sqnorm(s, x)
    raise ValueError(f"WeightedSqNorm: weights of dimension {s.dim} for a vector of dimension "
                     f"{x.dim}; expected 1, {x.dim} or {x.dim * x.dim}")


def _sum_t(x, dim):  # Sum's transpose: a scalar broadcast to `dim` coordinates
    if x.dim != 1:
        raise ValueError(f"SumT: operand dimension is {x.dim}; expected 1")
    return apply_op("Mult", (x, Const([1.0] * dim)))


def _rat(p, q):
    if q == 0:
        raise ValueError("RatCst(p, q): q is 0")
    return Const([p / q])


FUNCTIONS: dict[str, Function] = {}

# Every op of the op table by its KeOps name; ops with static parameters take them as integers
# after the formulas (KeOps' order), except TensorDot (below, KeOps' list arguments).
_OP_PARAMS = {"Pow": ("m",), "Round": ("d",), "OneHot": ("dim",), "Extract": ("start", "dim"),
              "ExtractT": ("start", "dim")}
_OP_ARGS = {"IfElse": ("c", "a", "b"), "Clamp": ("x", "a", "b"), "Mod": ("x", "n", "d")}
for _name, _spec in OPS.items():
    if _name == "TensorDot":
        continue
    _args = _OP_ARGS.get(_name, ("x", "y")[: _spec.arity])
    FUNCTIONS[_name] = Function(
        _f(*_args) + tuple((p, INT, _REQUIRED) for p in _OP_PARAMS.get(_name, ())), _op(_name))

FUNCTIONS.update({
    "TensorDot": Function(_f("a", "b") + (("dimfa", INTS, _REQUIRED), ("dimfb", INTS, _REQUIRED),
                                          ("contfa", INTS, _REQUIRED), ("contfb", INTS, _REQUIRED),
                                          ("permute", INTS, None)), _tensordot),
    "Inv": Function(_f("x"), _inv),
    "Norm2": Function(_f("x"), _norm2),
    "Normalize": Function(_f("x"), _normalize),
    "Elem": Function(_f("x") + (("m", INT, _REQUIRED),), lambda x, m: apply_op("Extract", (x,), (m, 1))),
    "ElemT": Function(_f("x") + (("n", INT, _REQUIRED), ("m", INT, _REQUIRED)),
                      lambda x, n, m: apply_op("ExtractT", (x,), (m, n))),
    "SumT": Function(_f("x") + (("dim", INT, _REQUIRED),), _sum_t),
    "ClampInt": Function(_f("x") + (("a", INT, _REQUIRED), ("b", INT, _REQUIRED)),
                         lambda x, a, b: apply_op("Clamp", (x, Const([a]), Const([b])))),
    "TensorProd": Function(_f("a", "b"), _tensorprod),
    "MatVecMult": Function(_f("a", "v"), _matvecmult),
    "VecMatMult": Function(_f("v", "a"), _vecmatmult),
    "Kron": Function(_f("a", "b") + (("dimfa", INTS, _REQUIRED), ("dimfb", INTS, _REQUIRED)), _kron),
    "SqNormIso": Function(_f("s", "x"), _sqnorm_iso),
    "SqNormDiag": Function(_f("s", "x"), _sqnorm_diag),
    "SymSqNorm": Function(_f("a", "x"), _sym_sqnorm),
    "WeightedSqNorm": Function(_f("s", "x"), _weighted_sqnorm),
    "WeightedSqDist": Function(_f("s", "x", "y"),
                               lambda s, x, y: _weighted_sqnorm(s, apply_op("Subtract", (x, y)))),
    "IntCst": Function((("n", INT, _REQUIRED),), lambda n: Const([n])),
    "IntInv": Function((("n", INT, _REQUIRED),), lambda n: _rat(1, n)),
    "RatCst": Function((("p", INT, _REQUIRED), ("q", INT, _REQUIRED)), _rat),
    "Zero": Function((("dim", INT, _REQUIRED),), _zeros),
    "Grad": Function(_f("f", "v", "gradin"), grad_formula),
    "Diff": Function(_f("f", "v", "diffin"), diff_formula),
    "GradMatrix": Function(_f("f", "v"), grad_matrix_formula),
})

# KeOps operations jaxkeops has no kernel for: named in the error rather than "unknown name".
UNSUPPORTED = {
    "BSpline": "no B-spline op in jaxkeops' op table",
    "SoftDTW_SqDist": "no soft-DTW op in jaxkeops' op table",
    "Divergence": "not available in formula strings",
    "Laplacian": "not available in formula strings",
    "DiffClampInt": "not available in formula strings",
}


# --- the parser -----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, names: dict[str, Node]):
        self.text, self.names = text, names
        self.written: list[Var] = []  # every Var(...) / Vi(...) written, even if it cancels out
        self.tokens = _tokenize(text)
        self.k = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.k]

    def error(self, message: str, pos: int | None = None):
        return FormulaSyntaxError(self.text, self.tok.pos if pos is None else pos, message)

    def expect(self, text: str, what: str):
        if self.tok.text != text or self.tok.kind not in ("op",):
            raise self.error(f"expected {what}, found {self._found()}")
        self.k += 1

    def _found(self) -> str:
        return self.tok.text if self.tok.kind == "end" else repr(self.tok.text)

    def accept(self, *texts) -> _Token | None:
        if self.tok.kind == "op" and self.tok.text in texts:
            self.k += 1
            return self.tokens[self.k - 1]
        return None

    def parse(self) -> Node:
        pos = self.tok.pos
        value = self.comparison()
        if self.tok.kind != "end":
            raise self.error(f"expected an operator or the end of the formula, found {self._found()}")
        return _as_formula(value, self.text, pos, "the formula")

    def _apply(self, symbol: str, a, b, pos: int):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if numbers and symbol in _PY_BINARY:
            try:
                return _PY_BINARY[symbol](a, b)  # plain Python arithmetic, as KeOps' eval
            except ZeroDivisionError:
                raise self.error("division by zero between two numbers", pos) from None
        try:
            if symbol == "**":
                return _power(_as_formula(a, self.text, pos, "**"), b, self.text, pos)
            if symbol in (">", ">="):  # swapped, as LazyTensor's > and >=
                symbol, a, b = {">": "<", ">=": "<="}[symbol], b, a
            what = f"the operands of {symbol}"
            args = (_as_formula(a, self.text, pos, what), _as_formula(b, self.text, pos, what))
            return apply_op(_BINARY[symbol], args)
        except (ValueError, TypeError) as e:
            if isinstance(e, FormulaSyntaxError):
                raise
            raise self.error(str(e), pos) from None

    def comparison(self):
        left = self.bitor()
        op = self.accept("<", "<=", ">", ">=", "==", "!=")
        if op is None:
            return left
        right = self.bitor()
        if self.tok.kind == "op" and self.tok.text in ("<", "<=", ">", ">=", "==", "!="):
            raise self.error("chained comparisons are not supported; expected one comparison")
        return self._apply(op.text, left, right, op.pos)

    def bitor(self):
        left = self.sum()
        while (op := self.accept("|")) is not None:
            left = self._apply("|", left, self.sum(), op.pos)
        return left

    def sum(self):
        left = self.product()
        while (op := self.accept("+", "-")) is not None:
            left = self._apply(op.text, left, self.product(), op.pos)
        return left

    def product(self):
        left = self.unary()
        while (op := self.accept("*", "/")) is not None:
            left = self._apply(op.text, left, self.unary(), op.pos)
        return left

    def unary(self):
        op = self.accept("-", "+")
        if op is None:
            return self.power()
        value = self.unary()
        if op.text == "+":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
        return apply_op("Minus", (_as_formula(value, self.text, op.pos, "unary -"),))

    def power(self):
        base = self.atom()
        op = self.accept("**")
        if op is None:
            return base
        return self._apply("**", base, self.unary(), op.pos)

    def atom(self):
        tok = self.tok
        if tok.kind == "number":
            self.k += 1
            is_int = re.fullmatch(r"\d+", tok.text) is not None
            return int(tok.text) if is_int else float(tok.text)
        if tok.kind == "name":
            self.k += 1
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(tok)
            if tok.text in self.names:
                return self.names[tok.text]
            if tok.text in FUNCTIONS or tok.text in ("Var", *CATEGORIES):
                raise self.error(f"{tok.text} is a function: expected {tok.text}(...)", tok.pos)
            known = ", ".join(sorted(self.names)) or "none"
            raise self.error(f"unknown name {tok.text!r}: expected an alias (declared: {known}), "
                             "a number or a function call", tok.pos)
        if self.accept("("):
            items, trailing_comma = self.items(")")
            return items[0] if len(items) == 1 and not trailing_comma else tuple(items)  # (): empty
        if self.accept("["):
            return tuple(self.items("]")[0])
        raise self.error(f"expected a number, a name or '(', found {self._found()}")

    def items(self, close: str) -> tuple[list, bool]:
        """Comma-separated expressions up to `close` (consumed), and whether a comma ended them
        ("(x,)" is a tuple)."""
        out = []
        while not self.accept(close):
            if out:
                self.expect(",", f"',' or '{close}'")
                if self.accept(close):
                    return out, True
            out.append(self.comparison())
        return out, False

    def call(self, name_tok: _Token):
        name, start = name_tok.text, name_tok.pos
        self.expect("(", "'('")
        args: list[tuple[object, int]] = []
        kwargs: dict[str, tuple[object, int]] = {}
        first = True
        while not self.accept(")"):
            if not first:
                self.expect(",", f"',' or ')' in the arguments of {name}")
                if self.accept(")"):
                    break
            first = False
            pos = self.tok.pos
            if (self.tok.kind == "name" and self.tokens[self.k + 1].text == "="
                    and self.tokens[self.k + 1].kind == "op"):
                key = self.tok.text
                if key in kwargs:
                    raise self.error(f"keyword argument {key!r} repeated in {name}(...)")
                self.k += 2
                kwargs[key] = (self.comparison(), pos)
            else:
                if kwargs:
                    raise self.error("positional argument after a keyword argument")
                args.append((self.comparison(), pos))
        return self.build(name, start, args, kwargs)

    def _int(self, value, pos, what) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self.error(f"{what}: expected an integer, found {_describe(value)}", pos)

    def build(self, name: str, pos: int, args, kwargs):
        if name == "Var" or name in CATEGORIES:
            return self.variable(name, pos, args, kwargs)
        if name in UNSUPPORTED:
            raise self.error(f"{name} is a KeOps operation jaxkeops does not provide "
                             f"({UNSUPPORTED[name]})", pos)
        if name not in FUNCTIONS:
            raise self.error(f"unknown function {name!r}: expected one of the formula "
                             "operations (jaxkeops.formula_string.FUNCTIONS)", pos)
        fn = FUNCTIONS[name]
        sig = fn.signature(name)
        if len(args) > len(fn.params):
            raise self.error(f"{sig} takes {len(fn.params)} argument(s), got {len(args)}",
                             args[len(fn.params)][1])
        bound = {}
        for (pname, kind, default), arg in zip(fn.params, args):
            bound[pname] = arg
        for key, arg in kwargs.items():
            if key not in {p for p, _, _ in fn.params} or key in bound:
                raise self.error(f"{sig}: unexpected keyword argument {key!r}", arg[1])
            bound[key] = arg
        values = []
        for pname, kind, default in fn.params:
            if pname not in bound:
                if default is _REQUIRED:
                    raise self.error(f"{sig}: missing argument {pname!r}", self.tokens[self.k - 1].pos)
                values.append(default)
                continue
            value, apos = bound[pname]
            what = f"argument {pname!r} of {sig}"
            if kind == FORMULA:
                values.append(_as_formula(value, self.text, apos, what))
            elif kind == INT:
                values.append(self._int(value, apos, what))
            else:  # INTS: a list of integers, or one integer
                items = value if isinstance(value, tuple) else (value,)
                values.append(tuple(self._int(v, apos, what) for v in items))
        try:
            return fn.build(*values)
        except (ValueError, TypeError) as e:
            message = str(e) if str(e).startswith(name) else f"{name}: {e}"
            raise self.error(message, pos) from None

    def variable(self, name: str, pos: int, args, kwargs) -> Var:
        if kwargs:
            raise self.error(f"{name}(...) takes positional integers only", pos)
        wanted = 3 if name == "Var" else 2
        usage = "Var(index, dim, cat)" if name == "Var" else f"{name}(index, dim)"
        if len(args) != wanted:
            raise self.error(f"{usage} takes {wanted} integers, got {len(args)}", pos)
        ints = [self._int(v, p, f"argument {k + 1} of {usage}") for k, (v, p) in enumerate(args)]
        index, dim = ints[0], ints[1]
        cat = ints[2] if name == "Var" else CATEGORIES[name]
        var = _make_var(index, dim, cat, self.text, pos, usage)
        self.written.append(var)
        return var


def _describe(value) -> str:
    if isinstance(value, Node):
        return f"the formula {value!r}"
    return repr(value)


def _make_var(index: int, dim: int, cat: int, text: str, pos: int, usage: str) -> Var:
    if index < 0:
        raise FormulaSyntaxError(text, pos, f"{usage}: index {index}; expected >= 0")
    if dim < 1:
        raise FormulaSyntaxError(text, pos, f"{usage}: dimension {dim}; expected >= 1")
    if cat not in (CAT_I, CAT_J, CAT_P):
        raise FormulaSyntaxError(text, pos, f"{usage}: category {cat}; expected 0 (i), 1 (j) "
                                 "or 2 (parameter)")
    return Var(index, dim, cat)


def parse_formula(text: str, names: dict[str, Node] | None = None,
                  written: list | None = None) -> Node:
    """The formula IR of a KeOps formula string; `names` maps aliases to their variables.
    `written` (if given) receives every Var(...) written in the string: they are arguments of
    the call even when the formula no longer uses them (a Grad that vanishes), as in KeOps."""
    if not isinstance(text, str):
        raise TypeError(f"formula is a {type(text).__name__}; expected a string")
    parser = _Parser(text, dict(names or {}))
    formula = parser.parse()
    if written is not None:
        written.extend(parser.written)
    return formula


# --- aliases ---------------------------------------------------------------------------------------

_ALIAS = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z_0-9]*)\s*=\s*)?(?P<rest>.*?)\s*$", re.S)


def parse_alias(text: str, position: int) -> tuple[str | None, Var]:
    """("x", Var) of an alias string "x = Vi(3)", "x = Vi(0, 3)", "x = Var(0, 3, 0)" or "Vi(0, 3)";
    `position` (its place in the alias list) is the index when the string gives none."""
    if not isinstance(text, str):
        raise TypeError(f"alias {position} is a {type(text).__name__}; expected a string such as "
                        "'x = Vi(3)'")
    m = _ALIAS.match(text)
    name, rest = m.group("name"), m.group("rest")
    offset = m.start("rest")
    tokens = _tokenize(rest)
    usage = "'name = Vi(dim)', 'name = Vi(index, dim)' (Vi, Vj or Pm) or 'name = Var(index, dim, cat)'"
    if name is not None and name in FUNCTIONS:
        raise FormulaSyntaxError(text, 0, f"alias name {name!r} is a function of the formula "
                                 "language; expected another name")
    head = tokens[0]
    if head.kind != "name" or head.text not in ("Var", *CATEGORIES) or tokens[1].text != "(":
        raise FormulaSyntaxError(text, offset + head.pos, f"expected {usage}")
    ints, k = [], 2
    while True:
        tok = tokens[k]
        if tok.kind != "number" or not tok.text.isdigit():
            raise FormulaSyntaxError(text, offset + tok.pos, f"expected an integer in {usage}")
        ints.append(int(tok.text))
        sep = tokens[k + 1]
        k += 2
        if sep.text == ")":
            break
        if sep.text != ",":
            raise FormulaSyntaxError(text, offset + sep.pos, f"expected ',' or ')' in {usage}")
    if tokens[k].kind != "end":
        raise FormulaSyntaxError(text, offset + tokens[k].pos, f"expected the end of the alias after {usage}")
    cat_name = head.text
    if cat_name == "Var":
        if len(ints) != 3:
            raise FormulaSyntaxError(text, offset, f"Var takes 3 integers (index, dim, cat), got {len(ints)}")
        index, dim, cat = ints
    else:
        if len(ints) not in (1, 2):
            raise FormulaSyntaxError(text, offset, f"{cat_name} takes (dim) or (index, dim), "
                                     f"got {len(ints)} integers")
        index, dim = (position, ints[0]) if len(ints) == 1 else ints
        cat = CATEGORIES[cat_name]
    usage = "Var(index, dim, cat)" if cat_name == "Var" else f"{cat_name}(index, dim)"
    return name, _make_var(index, dim, cat, text, offset, usage)


@dataclasses.dataclass(frozen=True)
class Signature:
    """The operands of a formula string: one Var per argument position (aliases, and Var(...)
    written in the formulas), and the alias names."""

    variables: tuple[Var, ...]
    names: dict

    def position_of(self, alias: str) -> int:
        if alias in self.names:
            return self.names[alias].index
        raise ValueError(f"unknown alias {alias!r}; declared: {', '.join(self.names) or 'none'}")


def parse_aliases(aliases) -> dict[str, Var]:
    """Alias name → Var for a list of alias strings (unnamed ones are kept under their index)."""
    if isinstance(aliases, str):
        aliases = [aliases]
    out: dict[str, Var] = {}
    for position, text in enumerate(aliases):
        name, var = parse_alias(text, position)
        key = name if name is not None else f"#{var.index}"
        if name is not None and name in out:
            raise ValueError(f"alias {text!r}: the name {name!r} is declared twice")
        out[key] = var
    return out


def signature(formulas, names: dict[str, Var], written=()) -> Signature:
    """Check that every argument position 0..n-1 is declared once, consistently (by an alias,
    a variable of the formulas or one `written` in them)."""
    by_index: dict[int, Var] = {}
    for var in (list(names.values()) + variables(f for f in formulas if f is not None)
                + list(written)):
        seen = by_index.get(var.index)
        if seen is not None and seen != var:
            raise ValueError(f"argument {var.index} is declared both as {seen!r} and as {var!r} "
                             "(Var(index, dim, cat))")
        by_index[var.index] = var
    n = 1 + max(by_index, default=-1)
    missing = [k for k in range(n) if k not in by_index]
    if missing:
        raise ValueError(f"argument position(s) {missing} are not declared: the aliases and Var(...) "
                         f"of the formula must number the arguments 0..{n - 1}")
    return Signature(tuple(by_index[k] for k in range(n)),
                     {k: v for k, v in names.items() if not k.startswith("#")})


def alias_category(text: str) -> int:
    """The category of an output spec such as "a = Vi(1)" (generic_sum's `output`)."""
    _, var = parse_alias(text, 0)
    return var.cat


__all__ = ["parse_formula", "parse_alias", "parse_aliases", "signature", "FormulaSyntaxError",
           "FUNCTIONS", "alias_category"]
