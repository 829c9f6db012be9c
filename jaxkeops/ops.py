"""THE op table: one entry per formula operation, and nothing about ops anywhere else in Python.

An entry gives the KeOps name, the opcode shared with the C++ side (src/ops.h; a test checks the
two tables agree), the arity, the output-dimension rule, the jnp reference used by the dense
oracle and the chunked fallback, how the op prints (KeOps' formula syntax), and its derivative:

- `jvp(node, tangents)`: the tangent formula of `node` given its arguments' tangent formulas
  (None where an argument's tangent is zero; at least one is not). It must be linear in the
  tangents, built from linear ops (those with a transpose rule) applied to them.
- `transpose(node, ct, linear)` for linear ops only: given the cotangent formula `ct` of `node`
  (dimension node.dim) and which arguments are linear, the cotangent formula of each argument
  (None for the non-linear ones).

jnp references take arrays whose last axis is the formula dimension (leading axes broadcast).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from jaxkeops.formula import Const, Node, Op


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    opcode: int
    arity: int
    dim_rule: Callable[[tuple[int, ...], tuple], int]
    reference: Callable  # (*arrays, params) -> array
    format: Callable[[tuple[str, ...], tuple], str]
    jvp: Callable | None = None
    transpose: Callable | None = None


OPS: dict[str, OpSpec] = {}


def _register(name, opcode, arity, dim_rule, reference, fmt=None, jvp=None, transpose=None):
    if fmt is None:
        fmt = lambda a, p: f"{name}({','.join(a)})"  # noqa: E731  KeOps: Exp(x), Sum(x)
    assert name not in OPS and opcode not in {s.opcode for s in OPS.values()}
    OPS[name] = OpSpec(name, opcode, arity, dim_rule, reference, fmt, jvp, transpose)


# --- dimension rules -------------------------------------------------------------------------

def _same_dim(dims, params):
    return dims[0]


def _broadcast_dims(name):
    """KeOps' "same dimension or 1" rule for elementwise binary ops."""

    def rule(dims, params):
        a, b = dims
        if a != b and 1 not in (a, b):
            raise ValueError(
                f"{name}: operand dimensions {a} and {b} do not match; "
                f"expected equal dimensions or one of them equal to 1"
            )
        return max(a, b)

    return rule


def _equal_dims_to_scalar(name):
    def rule(dims, params):
        a, b = dims
        if a != b:
            raise ValueError(
                f"{name}: operand dimensions {a} and {b} do not match; expected equal dimensions"
            )
        return 1

    return rule


def _to_scalar(dims, params):
    return 1


def _infix(symbol):
    return lambda a, p: f"({a[0]} {symbol} {a[1]})"


def _int_power(x, n):
    # Repeated multiplication, as the kernels do, so that negative bases behave.
    return x ** n if n >= 0 else 1.0 / (x ** (-n))


# --- the table ---------------------------------------------------------------------------------
# Opcodes 0 and 1 are the leaves (Var, Const), handled by the compiler, not listed here.
OPCODE_VAR = 0
OPCODE_CONST = 1

# Formula builders for the derivative rules (None stands for a zero formula).

def _op(name, *args, params=()):
    return apply_op(name, tuple(args), tuple(params))


def _const(value, dim=1):
    return Const([float(value)] * dim)


def _add(a, b):
    if a is None or b is None:
        return b if a is None else a
    return _op("Add", a, b)


def _neg(a):
    return None if a is None else _op("Minus", a)


def _mul(a, t):
    """a * t with t a tangent (or cotangent) formula, None when t is zero."""
    return None if t is None else _op("Mult", a, t)


def _to_dim(t, dim):
    """Give a tangent of dimension 1 the dimension `dim` (broadcasting, as the forward op does)."""
    if t is None or t.dim == dim:
        return t
    return _op("Mult", t, _const(1.0, dim))


def unbroadcast(ct, dim):
    """Cotangent of an argument of dimension `dim` that was broadcast to ct.dim."""
    if ct is None or ct.dim == dim:
        return ct
    assert dim == 1, (ct.dim, dim)
    return _op("Sum", ct)


def _add_jvp(node, t):
    return _to_dim(_add(*t), node.dim) if None in t else _add(*t)


def _sub_jvp(node, t):
    return _to_dim(_add(t[0], _neg(t[1])), node.dim)


def _mult_jvp(node, t):
    a, b = node.args
    return _to_dim(_add(_mul(b, t[0]), _mul(a, t[1])), node.dim)


def _divide_jvp(node, t):
    a, b = node.args
    # d(a/b) = da/b - (a/b) db/b
    return _to_dim(_add(_op("Divide", t[0], b) if t[0] is not None else None,
                        _neg(_mul(_op("Divide", node, b), t[1]))), node.dim)


def _powf_jvp(node, t):
    a, b = node.args
    # a^b = exp(b log a): d = a^b (b/a da + log(a) db)
    da = None if t[0] is None else _mul(_op("Divide", b, a), t[0])
    db = None if t[1] is None else _mul(_op("Log", a), t[1])
    return _to_dim(_mul(node, _to_dim(_add(da, db), node.dim)), node.dim)


def _pow_jvp(node, t):
    (a,), n = node.args, node.params[0]
    if n == 0:
        return None
    base = _const(n) if n == 1 else _op("Mult", _const(n), apply_op("Pow", (a,), (n - 1,)))
    return _mul(base, t[0])


def _linear_transpose(*coefficients):
    """Transpose of ops linear in each argument separately: argument k's cotangent is
    unbroadcast(coefficient_k(node, ct))."""

    def rule(node, ct, linear):
        return tuple(
            unbroadcast(coef(node, ct), arg.dim) if lin else None
            for coef, arg, lin in zip(coefficients, node.args, linear)
        )

    return rule


def _mult_transpose(node, ct, linear):
    a, b = node.args
    assert not all(linear), "Mult of two tangents is not linear"
    return (
        unbroadcast(_op("Mult", ct, b), a.dim) if linear[0] else None,
        unbroadcast(_op("Mult", ct, a), b.dim) if linear[1] else None,
    )


def _divide_transpose(node, ct, linear):
    assert not linear[1], "division by a tangent is not linear"
    return (unbroadcast(_op("Divide", ct, node.args[1]), node.args[0].dim), None)


def _scalprod_transpose(node, ct, linear):
    a, b = node.args
    assert not all(linear), "Scalprod of two tangents is not linear"
    return (
        _op("Mult", ct, b) if linear[0] else None,
        _op("Mult", ct, a) if linear[1] else None,
    )


_register("Add", 2, 2, _broadcast_dims("Add"), lambda a, b, p: a + b, _infix("+"),
          jvp=_add_jvp, transpose=_linear_transpose(lambda n, ct: ct, lambda n, ct: ct))
_register("Subtract", 3, 2, _broadcast_dims("Subtract"), lambda a, b, p: a - b, _infix("-"),
          jvp=_sub_jvp,
          transpose=_linear_transpose(lambda n, ct: ct, lambda n, ct: _op("Minus", ct)))
_register("Mult", 4, 2, _broadcast_dims("Mult"), lambda a, b, p: a * b, _infix("*"),
          jvp=_mult_jvp, transpose=_mult_transpose)
_register("Divide", 5, 2, _broadcast_dims("Divide"), lambda a, b, p: a / b, _infix("/"),
          jvp=_divide_jvp, transpose=_divide_transpose)
_register("Minus", 6, 1, _same_dim, lambda a, p: -a, lambda a, p: f"-{a[0]}",
          jvp=lambda node, t: _neg(t[0]),
          transpose=lambda node, ct, linear: (_op("Minus", ct),))
_register("Exp", 7, 1, _same_dim, lambda a, p: jnp.exp(a),
          jvp=lambda node, t: _mul(node, t[0]))
_register("Log", 8, 1, _same_dim, lambda a, p: jnp.log(a),
          jvp=lambda node, t: _op("Divide", t[0], node.args[0]))
_register("Sqrt", 9, 1, _same_dim, lambda a, p: jnp.sqrt(a),
          jvp=lambda node, t: _op("Divide", t[0], _op("Mult", _const(2.0), node)))
_register("Square", 10, 1, _same_dim, lambda a, p: a * a,
          jvp=lambda node, t: _mul(_op("Mult", _const(2.0), node.args[0]), t[0]))
_register("Pow", 11, 1, _same_dim, lambda a, p: _int_power(a, p[0]),
          lambda a, p: f"Pow({a[0]},{p[0]})", jvp=_pow_jvp)
_register("Powf", 12, 2, _broadcast_dims("Powf"), lambda a, b, p: jnp.exp(b * jnp.log(a)),
          jvp=_powf_jvp)
_register("Sum", 13, 1, _to_scalar, lambda a, p: jnp.sum(a, axis=-1, keepdims=True),
          jvp=lambda node, t: _op("Sum", t[0]),
          transpose=lambda node, ct, linear: (_to_dim(ct, node.args[0].dim),))
_register("SqNorm2", 14, 1, _to_scalar, lambda a, p: jnp.sum(a * a, axis=-1, keepdims=True),
          jvp=lambda node, t: _op("Scalprod", _op("Mult", _const(2.0), node.args[0]), t[0]))
_register("Scalprod", 15, 2, _equal_dims_to_scalar("Scalprod"),
          lambda a, b, p: jnp.sum(a * b, axis=-1, keepdims=True),
          lambda a, p: f"({a[0]}|{a[1]})",
          jvp=lambda node, t: _add(
              None if t[0] is None else _op("Scalprod", t[0], node.args[1]),
              None if t[1] is None else _op("Scalprod", node.args[0], t[1])),
          transpose=_scalprod_transpose)
_register("SqDist", 16, 2, _equal_dims_to_scalar("SqDist"),
          lambda a, b, p: jnp.sum((a - b) ** 2, axis=-1, keepdims=True),
          jvp=lambda node, t: _op(
              "Scalprod", _op("Mult", _const(2.0), _op("Subtract", *node.args)),
              _add(t[0], _neg(t[1]))))


def apply_op(name: str, args: tuple[Node, ...], params: tuple = ()) -> Op:
    """Build the node `name(args)`, checking arity and dimensions (errors name both dims)."""
    spec = OPS[name]
    if len(args) != spec.arity:
        raise TypeError(f"{name} takes {spec.arity} operand(s), got {len(args)}")
    dim = spec.dim_rule(tuple(a.dim for a in args), tuple(params))
    return Op(name, tuple(args), tuple(params), dim=dim)


def opcode_table() -> dict[str, int]:
    """Python's view of the opcodes, compared with the extension's by the tests."""
    table = {"Var": OPCODE_VAR, "Const": OPCODE_CONST}
    table.update({name: spec.opcode for name, spec in OPS.items()})
    return table
