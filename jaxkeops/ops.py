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


# Largest dimension of a variable or a formula (kMaxDim in src/program.h).
MAX_DIM = 1 << 16

# --- the table ---------------------------------------------------------------------------------
# Opcodes 0 and 1 are the leaves (Var, Const), handled by the compiler, not listed here.
OPCODE_VAR = 0
OPCODE_CONST = 1

# Formula builders for the derivative rules (None stands for a zero formula); the reduction
# rules (jaxkeops/reduction_derivatives.py) use them too.

def op_node(name, *args, params=()):
    return apply_op(name, tuple(args), tuple(params))


def _const(value, dim=1):
    return Const([float(value)] * dim)


def add_formulas(a, b):
    """a + b, None standing for zero."""
    if a is None or b is None:
        return b if a is None else a
    return op_node("Add", a, b)


def _neg(a):
    return None if a is None else op_node("Minus", a)


def mul_tangent(a, t):
    """a * t with t a tangent (or cotangent) formula, None when t is zero."""
    return None if t is None else op_node("Mult", a, t)


def _to_dim(t, dim):
    """Give a tangent of dimension 1 the dimension `dim` (broadcasting, as the forward op does)."""
    if t is None or t.dim == dim:
        return t
    return op_node("Mult", t, _const(1.0, dim))


def unbroadcast(ct, dim):
    """Cotangent of an argument of dimension `dim` that was broadcast to ct.dim."""
    if ct is None or ct.dim == dim:
        return ct
    assert dim == 1, (ct.dim, dim)
    return op_node("Sum", ct)


def _add_jvp(node, t):
    return _to_dim(add_formulas(*t), node.dim) if None in t else add_formulas(*t)


def _sub_jvp(node, t):
    return _to_dim(add_formulas(t[0], _neg(t[1])), node.dim)


def _mult_jvp(node, t):
    a, b = node.args
    return _to_dim(add_formulas(mul_tangent(b, t[0]), mul_tangent(a, t[1])), node.dim)


def _divide_jvp(node, t):
    a, b = node.args
    # d(a/b) = da/b - (a/b) db/b
    return _to_dim(add_formulas(op_node("Divide", t[0], b) if t[0] is not None else None,
                        _neg(mul_tangent(op_node("Divide", node, b), t[1]))), node.dim)


def _powf_jvp(node, t):
    a, b = node.args
    # a^b = exp(b log a): d = a^b (b/a da + log(a) db)
    da = None if t[0] is None else mul_tangent(op_node("Divide", b, a), t[0])
    db = None if t[1] is None else mul_tangent(op_node("Log", a), t[1])
    return _to_dim(mul_tangent(node, _to_dim(add_formulas(da, db), node.dim)), node.dim)


def _pow_jvp(node, t):
    (a,), n = node.args, node.params[0]
    if n == 0:
        return None
    base = _const(n) if n == 1 else op_node("Mult", _const(n), apply_op("Pow", (a,), (n - 1,)))
    return mul_tangent(base, t[0])


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
        unbroadcast(op_node("Mult", ct, b), a.dim) if linear[0] else None,
        unbroadcast(op_node("Mult", ct, a), b.dim) if linear[1] else None,
    )


def _divide_transpose(node, ct, linear):
    assert not linear[1], "division by a tangent is not linear"
    return (unbroadcast(op_node("Divide", ct, node.args[1]), node.args[0].dim), None)


def _scalprod_transpose(node, ct, linear):
    a, b = node.args
    assert not all(linear), "Scalprod of two tangents is not linear"
    return (
        op_node("Mult", ct, b) if linear[0] else None,
        op_node("Mult", ct, a) if linear[1] else None,
    )


_register("Add", 2, 2, _broadcast_dims("Add"), lambda a, b, p: a + b, _infix("+"),
          jvp=_add_jvp, transpose=_linear_transpose(lambda n, ct: ct, lambda n, ct: ct))
_register("Subtract", 3, 2, _broadcast_dims("Subtract"), lambda a, b, p: a - b, _infix("-"),
          jvp=_sub_jvp,
          transpose=_linear_transpose(lambda n, ct: ct, lambda n, ct: op_node("Minus", ct)))
_register("Mult", 4, 2, _broadcast_dims("Mult"), lambda a, b, p: a * b, _infix("*"),
          jvp=_mult_jvp, transpose=_mult_transpose)
_register("Divide", 5, 2, _broadcast_dims("Divide"), lambda a, b, p: a / b, _infix("/"),
          jvp=_divide_jvp, transpose=_divide_transpose)
_register("Minus", 6, 1, _same_dim, lambda a, p: -a, lambda a, p: f"-{a[0]}",
          jvp=lambda node, t: _neg(t[0]),
          transpose=lambda node, ct, linear: (op_node("Minus", ct),))
_register("Exp", 7, 1, _same_dim, lambda a, p: jnp.exp(a),
          jvp=lambda node, t: mul_tangent(node, t[0]))
_register("Log", 8, 1, _same_dim, lambda a, p: jnp.log(a),
          jvp=lambda node, t: op_node("Divide", t[0], node.args[0]))
_register("Sqrt", 9, 1, _same_dim, lambda a, p: jnp.sqrt(a),
          jvp=lambda node, t: op_node("Divide", t[0], op_node("Mult", _const(2.0), node)))
_register("Square", 10, 1, _same_dim, lambda a, p: a * a,
          jvp=lambda node, t: mul_tangent(op_node("Mult", _const(2.0), node.args[0]), t[0]))
def _pow_dim(dims, params):
    (n,) = params
    _check_int("Pow", "the integer exponent", n, -(2**31 - 1), 2**31 - 1)  # an int32 param
    return dims[0]


_register("Pow", 11, 1, _pow_dim, lambda a, p: _int_power(a, p[0]),
          lambda a, p: f"Pow({a[0]},{p[0]})", jvp=_pow_jvp)
_register("Powf", 12, 2, _broadcast_dims("Powf"), lambda a, b, p: jnp.exp(b * jnp.log(a)),
          jvp=_powf_jvp)
_register("Sum", 13, 1, _to_scalar, lambda a, p: jnp.sum(a, axis=-1, keepdims=True),
          jvp=lambda node, t: op_node("Sum", t[0]),
          transpose=lambda node, ct, linear: (_to_dim(ct, node.args[0].dim),))
_register("SqNorm2", 14, 1, _to_scalar, lambda a, p: jnp.sum(a * a, axis=-1, keepdims=True),
          jvp=lambda node, t: op_node("Scalprod", op_node("Mult", _const(2.0), node.args[0]), t[0]))
_register("Scalprod", 15, 2, _equal_dims_to_scalar("Scalprod"),
          lambda a, b, p: jnp.sum(a * b, axis=-1, keepdims=True),
          lambda a, p: f"({a[0]}|{a[1]})",
          jvp=lambda node, t: add_formulas(
              None if t[0] is None else op_node("Scalprod", t[0], node.args[1]),
              None if t[1] is None else op_node("Scalprod", node.args[0], t[1])),
          transpose=_scalprod_transpose)
_register("SqDist", 16, 2, _equal_dims_to_scalar("SqDist"),
          lambda a, b, p: jnp.sum((a - b) ** 2, axis=-1, keepdims=True),
          jvp=lambda node, t: op_node(
              "Scalprod", op_node("Mult", _const(2.0), op_node("Subtract", *node.args)),
              add_formulas(t[0], _neg(t[1]))))


# --- the rest of KeOps' formula language --------------------------------------------------------
# Static parameters are ints (the compiler sends them as int_params, in the order listed):
#   Round (d)           decimals
#   OneHot (D)          output dimension
#   Extract (i, d)      x[i:i+d]
#   ExtractT (i, D)     x placed at [i:i+dim] of a zero vector of dimension D (Extract's transpose)
#   TensorDot (na, nb, nc, *dimfa, *dimfb, *contfa, *contfb, *perm)   see _unpack_tensordot


def _ternary_broadcast_dims(name):
    """KeOps' "same dimension or 1" rule for elementwise ternary ops."""

    def rule(dims, params):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            shown = ", ".join(str(d) for d in dims)
            raise ValueError(
                f"{name}: operand dimensions {shown} do not match; "
                f"expected equal dimensions or dimension 1"
            )
        return max(dims)

    return rule


def _check_int(name, what, value, lo, hi=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: {what} is {value!r}; expected an int")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: {what} is {value}; expected {bound}")


def _round_dim(dims, params):
    (d,) = params
    _check_int("Round", "the number of decimals", d, -300, 300)
    return dims[0]


def _one_hot_dim(dims, params):
    (D,) = params
    if dims[0] != 1:
        raise ValueError(f"OneHot: operand dimension is {dims[0]}; expected 1 (a scalar formula)")
    _check_int("OneHot", "the output dimension D", D, 1)
    return D


def _extract_dim(dims, params):
    i, d = params
    _check_int("Extract", "the start index", i, 0, dims[0] - 1)
    _check_int("Extract", f"the length (from index {i})", d, 1, dims[0] - i)
    return d


def _extract_t_dim(dims, params):
    i, D = params
    _check_int("ExtractT", "the output dimension", D, dims[0])
    _check_int("ExtractT", "the start index", i, 0, D - dims[0])
    return D


def _concat_dim(dims, params):
    return dims[0] + dims[1]


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def _argsort(values):
    return sorted(range(len(values)), key=lambda k: values[k])


def tensordot_params(dimfa, dimfb, contfa, contfb, perm=None) -> tuple[int, ...]:
    """The flat int params of TensorDot (KeOps' keops_tensordot arguments)."""
    dimfa, dimfb = [int(d) for d in dimfa], [int(d) for d in dimfb]
    contfa, contfb = [int(c) for c in contfa], [int(c) for c in contfb]
    n_kept = len(dimfa) + len(dimfb) - 2 * len(contfa)
    perm = list(range(n_kept)) if perm is None else [int(p) for p in perm]
    return (len(dimfa), len(dimfb), len(contfa), *dimfa, *dimfb, *contfa, *contfb, *perm)


def _unpack_tensordot(params):
    na, nb, nc = params[:3]
    rest = list(params[3:])
    cuts = [na, nb, nc, nc]
    parts = []
    for n in cuts:
        parts.append(tuple(rest[:n]))
        rest = rest[n:]
    return (*parts, tuple(rest))  # dimfa, dimfb, contfa, contfb, perm


def tensordot_labels(params):
    """Einsum labels of TensorDot: a's axes, b's axes, the output's axes, and each label's size.

    Contracted axis contfb[k] of b shares the label of axis contfa[k] of a. The kept axes are a's
    then b's (tensordot order); the output is them transposed by argsort(perm), as in KeOps."""
    dimfa, dimfb, contfa, contfb, perm = _unpack_tensordot(params)
    la = list(range(len(dimfa)))
    lb = [len(dimfa) + k for k in range(len(dimfb))]
    for ca, cb in zip(contfa, contfb):
        lb[cb] = ca
    kept = [l for l in la if l not in contfa] + [l for k, l in enumerate(lb) if k not in contfb]
    lout = [kept[k] for k in _argsort(perm)]
    size = dict(zip(la, dimfa))
    size.update(zip(lb, dimfb))
    return la, lb, lout, size


def _tensordot_dim(dims, params):
    if len(params) < 3 or any(not isinstance(p, int) for p in params):
        raise ValueError(f"TensorDot: malformed parameters {params!r}")
    na, nb, nc = params[:3]
    if na < 1 or nb < 1 or nc < 0 or len(params) != 3 + na + nb + 2 * nc + (na + nb - 2 * nc):
        raise ValueError(f"TensorDot: malformed parameters {params!r}")
    dimfa, dimfb, contfa, contfb, perm = _unpack_tensordot(params)
    if any(d < 1 for d in dimfa + dimfb):
        raise ValueError(f"TensorDot: dimensions {dimfa} and {dimfb} must be >= 1")
    if _prod(dimfa) != dims[0] or _prod(dimfb) != dims[1]:
        raise ValueError(
            f"TensorDot: operand dimensions {dims[0]} and {dims[1]} do not match the shapes "
            f"{list(dimfa)} (product {_prod(dimfa)}) and {list(dimfb)} (product {_prod(dimfb)})"
        )
    for name, cont, shape in (("contfa", contfa, dimfa), ("contfb", contfb, dimfb)):
        if len(set(cont)) != len(cont) or any(not 0 <= c < len(shape) for c in cont):
            raise ValueError(
                f"TensorDot: {name}={list(cont)} must be distinct axes of {list(shape)}"
            )
    if [dimfa[c] for c in contfa] != [dimfb[c] for c in contfb]:
        raise ValueError(
            f"TensorDot: contracted dimensions {[dimfa[c] for c in contfa]} of a and "
            f"{[dimfb[c] for c in contfb]} of b differ"
        )
    if sorted(perm) != list(range(na + nb - 2 * nc)):
        raise ValueError(
            f"TensorDot: perm={list(perm)} is not a permutation of the "
            f"{na + nb - 2 * nc} kept axes"
        )
    la, lb, lout, size = tensordot_labels(params)
    return _prod(size[l] for l in lout)


# --- jnp references ---

def _round_half_away(y):
    # C's round(): halves away from zero (jnp.round rounds halves to even).
    t = jnp.trunc(y)
    return jnp.where(jnp.abs(y - t) >= 0.5, t + jnp.sign(y), t)


def _keops_round(a, p):
    """Round to d decimals, as src/ops.h round_decimals: 10^d in a's dtype; a value already
    integral at that scale (|a 10^d| >= 1/eps, overflow included) is kept as it is."""
    d = p[0]
    if d == 0:
        return _round_half_away(a)
    scale = jnp.asarray(10.0 ** d, a.dtype)
    y = a * scale
    integral = 1.0 / jnp.finfo(a.dtype).eps
    kept = ~((y < integral) & (y > -integral))
    rounded = jnp.where(scale == 0, a * 0, _round_half_away(y) / jnp.where(scale == 0, 1, scale))
    return jnp.where(kept, a, rounded)


def _one_hot(a, p):
    index = jnp.trunc(a + 0.5)  # as KeOps: (int)(x + .5)
    return (jnp.arange(p[0], dtype=a.dtype) == index).astype(a.dtype)


def _extract_t(a, p):
    i, D = p
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(i, D - i - a.shape[-1])])


def _concat(a, b, p):
    lead = jnp.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    a = jnp.broadcast_to(a, lead + a.shape[-1:])
    b = jnp.broadcast_to(b, lead + b.shape[-1:])
    return jnp.concatenate([a, b], axis=-1)


def _tensordot(a, b, p):
    la, lb, lout, size = tensordot_labels(p)
    a = a.reshape(a.shape[:-1] + tuple(size[l] for l in la))
    b = b.reshape(b.shape[:-1] + tuple(size[l] for l in lb))
    out = jnp.einsum(a, [Ellipsis, *la], b, [Ellipsis, *lb], [Ellipsis, *lout])
    return out.reshape(out.shape[: out.ndim - len(lout)] + (_prod(size[l] for l in lout),))


# --- derivative rules ---

def _zero_jvp(node, t):
    """Piecewise-constant ops: the derivative is zero almost everywhere."""
    return None


def _chain(derivative):
    """jvp of an elementwise unary op f: f'(x) * t, with derivative(node, x) the formula f'(x)."""
    return lambda node, t: mul_tangent(derivative(node, node.args[0]), t[0])


def _one_minus(a):
    return op_node("Subtract", _const(1.0), a)


def _atan2_jvp(node, t):
    y, x = node.args
    r = op_node("Add", op_node("Square", x), op_node("Square", y))
    return _to_dim(add_formulas(mul_tangent(op_node("Divide", x, r), t[0]),
                        _neg(mul_tangent(op_node("Divide", y, r), t[1]))), node.dim)


def _ifelse_jvp(node, t):
    step = op_node("Step", node.args[0])
    return _to_dim(add_formulas(mul_tangent(step, t[1]), mul_tangent(_one_minus(step), t[2])), node.dim)


def _clamp_jvp(node, t):
    x, a, b = node.args
    below = op_node("LessThan", x, a)
    not_below = _one_minus(below)
    above = op_node("Mult", not_below, op_node("LessThan", b, x))
    inside = op_node("Subtract", not_below, above)
    return _to_dim(add_formulas(add_formulas(mul_tangent(inside, t[0]), mul_tangent(below, t[1])), mul_tangent(above, t[2])),
                   node.dim)


def _mod_jvp(node, t):
    x, m, offset = node.args
    q = op_node("Floor", op_node("Divide", op_node("Subtract", x, offset), m))
    return _to_dim(add_formulas(t[0], _neg(mul_tangent(q, t[1]))), node.dim)


def _select_jvp(arg_name):
    """Min/Max over the feature axis: the tangent of the selected coordinate."""

    def rule(node, t):
        x = node.args[0]
        return op_node("Scalprod", op_node("OneHot", op_node(arg_name, x), params=(x.dim,)), t[0])

    return rule


def _zeros_like(node):
    return Const([0.0] * node.dim)


def _concat_jvp(node, t):
    a, b = node.args
    return op_node("Concat", _zeros_like(a) if t[0] is None else t[0],
               _zeros_like(b) if t[1] is None else t[1])


def _concat_transpose(node, ct, linear):
    a, b = node.args
    return (
        op_node("Extract", ct, params=(0, a.dim)) if linear[0] else None,
        op_node("Extract", ct, params=(a.dim, b.dim)) if linear[1] else None,
    )


def _tensordot_of_labels(x, lx, y, ly, lout, size):
    """TensorDot(x, y) as the einsum lx, ly -> lout (labels shared by x and y are contracted;
    every output label belongs to exactly one of them)."""
    shared = [l for l in lx if l in ly]
    kept = [l for l in lx if l not in ly] + [l for l in ly if l not in lx]
    perm = _argsort([kept.index(l) for l in lout])
    params = tensordot_params([size[l] for l in lx], [size[l] for l in ly],
                              [lx.index(l) for l in shared], [ly.index(l) for l in shared], perm)
    return op_node("TensorDot", x, y, params=params)


def _tensordot_jvp(node, t):
    a, b = node.args
    return add_formulas(
        None if t[0] is None else op_node("TensorDot", t[0], b, params=node.params),
        None if t[1] is None else op_node("TensorDot", a, t[1], params=node.params),
    )


def _tensordot_transpose(node, ct, linear):
    a, b = node.args
    assert not all(linear), "TensorDot of two tangents is not linear"
    la, lb, lout, size = tensordot_labels(node.params)
    return (
        _tensordot_of_labels(ct, lout, b, lb, la, size) if linear[0] else None,
        _tensordot_of_labels(ct, lout, a, la, lb, size) if linear[1] else None,
    )


def _rsqrt(a):
    safe = jnp.where(a == 0, jnp.ones_like(a), a)
    return jnp.where(a == 0, jnp.zeros_like(a), 1.0 / jnp.sqrt(safe))


def _xlogx(a):
    safe = jnp.where(a == 0, jnp.ones_like(a), a)
    return jnp.where(a == 0, jnp.zeros_like(a), a * jnp.log(safe))


def _sinxdivx(a):
    safe = jnp.where(a == 0, jnp.ones_like(a), a)
    return jnp.where(a == 0, jnp.ones_like(a), jnp.sin(safe) / safe)


_sq1m = lambda x: op_node("Subtract", _const(1.0), op_node("Square", x))  # noqa: E731  1 - x^2

_register("Abs", 17, 1, _same_dim, lambda a, p: jnp.abs(a), jvp=_chain(lambda n, x: op_node("Sign", x)))
_register("Sin", 18, 1, _same_dim, lambda a, p: jnp.sin(a), jvp=_chain(lambda n, x: op_node("Cos", x)))
_register("Cos", 19, 1, _same_dim, lambda a, p: jnp.cos(a),
          jvp=_chain(lambda n, x: op_node("Minus", op_node("Sin", x))))
_register("Asin", 20, 1, _same_dim, lambda a, p: jnp.arcsin(a),
          jvp=_chain(lambda n, x: op_node("Rsqrt", _sq1m(x))))
_register("Acos", 21, 1, _same_dim, lambda a, p: jnp.arccos(a),
          jvp=_chain(lambda n, x: op_node("Minus", op_node("Rsqrt", _sq1m(x)))))
_register("Atan", 22, 1, _same_dim, lambda a, p: jnp.arctan(a),
          jvp=_chain(lambda n, x: op_node("Divide", _const(1.0),
                                      op_node("Add", _const(1.0), op_node("Square", x)))))
# Rsqrt(0) = 0, as KeOps.
_register("Rsqrt", 23, 1, _same_dim, lambda a, p: _rsqrt(a),
          jvp=_chain(lambda n, x: op_node("Mult", _const(-0.5), op_node("Pow", n, params=(3,)))))
# XLogX(0) = 0.
_register("XLogX", 24, 1, _same_dim, lambda a, p: _xlogx(a),
          jvp=_chain(lambda n, x: op_node("Add", op_node("Log", x), _const(1.0))))
# SinXDivX(0) = 1; derivative (cos x - sin(x)/x) / x.
_register("SinXDivX", 25, 1, _same_dim, lambda a, p: _sinxdivx(a),
          jvp=_chain(lambda n, x: op_node("Divide", op_node("Subtract", op_node("Cos", x), n), x)))
# Sign(±0) = +0 (KeOps: x > 0 ? 1 : (x < 0 ? -1 : 0)).
_register("Sign", 26, 1, _same_dim,
          lambda a, p: jnp.where(a > 0, 1.0, jnp.where(a < 0, -1.0, 0.0)).astype(a.dtype),
          jvp=_zero_jvp)
# Step(x) = 0 if x < 0 else 1 (1 at 0).
_register("Step", 27, 1, _same_dim, lambda a, p: jnp.where(a < 0, 0.0, 1.0).astype(a.dtype),
          jvp=_zero_jvp)
_register("ReLU", 28, 1, _same_dim, lambda a, p: jnp.where(a < 0, jnp.zeros_like(a), a),
          jvp=_chain(lambda n, x: op_node("Step", x)))
_register("Floor", 29, 1, _same_dim, lambda a, p: jnp.floor(a), jvp=_zero_jvp)
# Atan2(y, x) = atan2(y, x), as y.atan2(x).
_register("Atan2", 30, 2, _broadcast_dims("Atan2"), lambda a, b, p: jnp.arctan2(a, b),
          jvp=_atan2_jvp)
_register("Equal", 31, 2, _broadcast_dims("Equal"), lambda a, b, p: a == b, _infix("=="),
          jvp=_zero_jvp)
_register("NotEqual", 32, 2, _broadcast_dims("NotEqual"), lambda a, b, p: a != b, _infix("!="),
          jvp=_zero_jvp)
_register("LessThan", 33, 2, _broadcast_dims("LessThan"), lambda a, b, p: a < b, _infix("<"),
          jvp=_zero_jvp)
_register("LessOrEqual", 34, 2, _broadcast_dims("LessOrEqual"), lambda a, b, p: a <= b,
          _infix("<="), jvp=_zero_jvp)
# IfElse(c, a, b) = a where c >= 0, b elsewhere.
_register("IfElse", 35, 3, _ternary_broadcast_dims("IfElse"),
          lambda c, a, b, p: jnp.where(c >= 0, a, b), jvp=_ifelse_jvp)
# Clamp(x, a, b) = a if x < a, else b if x > b, else x.
_register("Clamp", 36, 3, _ternary_broadcast_dims("Clamp"),
          lambda x, a, b, p: jnp.where(x < a, a, jnp.where(x > b, b, x)), jvp=_clamp_jvp)
# Mod(x, m, offset) = x - m * floor((x - offset) / m).
_register("Mod", 37, 3, _ternary_broadcast_dims("Mod"),
          lambda x, m, o, p: x - m * jnp.floor((x - o) / m), jvp=_mod_jvp)
_register("Round", 38, 1, _round_dim, _keops_round, lambda a, p: f"Round({a[0]},{p[0]})",
          jvp=_zero_jvp)
_register("Min", 39, 1, _to_scalar, lambda a, p: jnp.min(a, axis=-1, keepdims=True),
          jvp=_select_jvp("ArgMin"))
_register("Max", 40, 1, _to_scalar, lambda a, p: jnp.max(a, axis=-1, keepdims=True),
          jvp=_select_jvp("ArgMax"))
# ArgMin / ArgMax over the features: the first index reaching the extremum, as a float value.
_register("ArgMin", 41, 1, _to_scalar,
          lambda a, p: jnp.argmin(a, axis=-1, keepdims=True).astype(a.dtype), jvp=_zero_jvp)
_register("ArgMax", 42, 1, _to_scalar,
          lambda a, p: jnp.argmax(a, axis=-1, keepdims=True).astype(a.dtype), jvp=_zero_jvp)
# OneHot(x, D): 1 at index (int)(x + 0.5), as KeOps; all zeros when that index is outside [0, D).
_register("OneHot", 43, 1, _one_hot_dim, _one_hot, lambda a, p: f"OneHot({a[0]},{p[0]})",
          jvp=_zero_jvp)
_register("Extract", 44, 1, _extract_dim, lambda a, p: a[..., p[0]:p[0] + p[1]],
          lambda a, p: f"Extract({a[0]},{p[0]},{p[1]})",
          jvp=lambda node, t: op_node("Extract", t[0], params=node.params),
          transpose=lambda node, ct, linear: (
              op_node("ExtractT", ct, params=(node.params[0], node.args[0].dim)),))
_register("ExtractT", 45, 1, _extract_t_dim, _extract_t,
          lambda a, p: f"ExtractT({a[0]},{p[0]},{p[1]})",
          jvp=lambda node, t: op_node("ExtractT", t[0], params=node.params),
          transpose=lambda node, ct, linear: (
              op_node("Extract", ct, params=(node.params[0], node.args[0].dim)),))
_register("Concat", 46, 2, _concat_dim, _concat, jvp=_concat_jvp, transpose=_concat_transpose)
# TensorDot covers MatVecMult, VecMatMult, TensorProd and Kron (see lazy_tensor.py).
_register("TensorDot", 47, 2, _tensordot_dim, _tensordot,
          lambda a, p: f"TensorDot({a[0]},{a[1]},{_unpack_tensordot(p)})",
          jvp=_tensordot_jvp, transpose=_tensordot_transpose)


def apply_op(name: str, args: tuple[Node, ...], params: tuple = ()) -> Op:
    """Build the node `name(args)`, checking arity and dimensions (errors name both dims)."""
    spec = OPS[name]
    if len(args) != spec.arity:
        raise TypeError(f"{name} takes {spec.arity} operand(s), got {len(args)}")
    dim = spec.dim_rule(tuple(a.dim for a in args), tuple(params))
    if dim > MAX_DIM:
        raise ValueError(
            f"{name}: the output dimension {dim} exceeds the limit of {MAX_DIM} of the kernels"
        )
    return Op(name, tuple(args), tuple(params), dim=dim)


def opcode_table() -> dict[str, int]:
    """Python's view of the opcodes, compared with the extension's by the tests."""
    table = {"Var": OPCODE_VAR, "Const": OPCODE_CONST}
    table.update({name: spec.opcode for name, spec in OPS.items()})
    return table
