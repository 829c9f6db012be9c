"""Random formula trees (depth <= 5) over random ops, dims and categories, against the dense
float64 oracle (property-based, with hypothesis).

CI runs the "ci" profile (100 examples); `HYPOTHESIS_PROFILE=thorough` runs 500. Values are kept
finite and away from singularities by construction (bounded wrappers such as atan, 1 + x^2);
piecewise-constant ops (comparisons, sign, floor, round, mod, argmin, one_hot...) are applied to
input variables only, so that rounding of computed values cannot flip a branch.
"""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import abs_sum, assert_close, dense

from jaxkeops import Pm, Vi, Vj

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MAX_DIM = 12  # keeps tensor products small


def _same_dim(a, b):
    """Make a and b usable together elementwise: equal dims, or one of them of dimension 1."""
    if a.formula.dim == b.formula.dim or 1 in (a.formula.dim, b.formula.dim):
        return a, b
    return a, b.sum(-1)


def _piecewise(draw, leaf, other):
    """A piecewise-constant op applied to input variables."""
    kind = draw(st.sampled_from(
        ["sign", "step", "floor", "round", "mod", "cmp", "argmin", "argmax", "one_hot",
         "ifelse", "clamp"]))
    if kind == "sign":
        return leaf.sign()
    if kind == "step":
        return leaf.step()
    if kind == "floor":
        return (4 * leaf).floor()
    if kind == "round":
        return leaf.round(draw(st.integers(0, 2)))
    if kind == "mod":
        return leaf.mod(0.7, 0.1)
    if kind == "cmp":
        a, b = _same_dim(leaf, other)
        op = draw(st.sampled_from(["==", "!=", "<", ">", "<=", ">="]))
        return {"==": a == b, "!=": a != b, "<": a < b, ">": a > b, "<=": a <= b,
                ">=": a >= b}[op]
    if kind == "argmin":
        return leaf.argmin()
    if kind == "argmax":
        return leaf.argmax()
    if kind == "one_hot":
        return (3 * leaf.elem(0)).one_hot(draw(st.integers(1, 4)))
    if kind == "ifelse":
        a, b = _same_dim(leaf, other)
        return a.ifelse(b, -b)
    return leaf.clamp(-0.3, 0.4)


@st.composite
def formulas(draw, leaves, depth):
    """A random LazyTensor over `leaves` (values stay moderate: no overflow, no log(<=0))."""
    if depth == 0 or draw(st.integers(0, 4)) == 0:
        if draw(st.integers(0, 2)) == 0:
            return _piecewise(draw, draw(st.sampled_from(leaves)), draw(st.sampled_from(leaves)))
        return draw(st.sampled_from(leaves))
    sub = formulas(leaves, depth - 1)
    kind = draw(st.sampled_from(
        ["add", "sub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow", "powf",
         "sin", "cos", "atan", "asin", "acos", "atan2", "sinxdivx", "xlogx", "relu", "sum",
         "sqnorm2", "norm2", "normalize", "sqdist", "dot", "min", "max", "elem", "extract",
         "concat", "tensorprod", "matvecmult", "weightedsqnorm", "piecewise", "const"]))
    a = draw(sub)
    if kind in ("add", "sub", "mul", "div", "atan2", "powf"):
        a, b = _same_dim(a, draw(sub))
        if kind == "add":
            return a + b
        if kind == "sub":
            return a - b
        if kind == "mul":
            return a.atan() * b.atan()
        if kind == "div":
            return a / (1.0 + b.square())
        if kind == "atan2":
            return a.atan2(b)
        if a.formula.dim < b.formula.dim:  # KeOps: the exponent has dimension 1 or the base's
            a, b = b, a
        return (1.0 + a.atan().square()) ** b.atan()
    if kind in ("sqdist", "dot"):
        b = draw(sub)
        if a.formula.dim != b.formula.dim:
            a, b = a.sum(-1), b.sum(-1)
        return a.atan().sqdist(b.atan()) if kind == "sqdist" else (a.atan() | b.atan())
    if kind in ("concat", "tensorprod", "matvecmult", "weightedsqnorm"):
        b = draw(sub)
        da, db = a.formula.dim, b.formula.dim
        if kind == "concat" and da + db <= MAX_DIM:
            return a.concat(b)
        if kind == "tensorprod" and da * db <= MAX_DIM:
            return a.atan().tensorprod(b.atan())
        if kind == "matvecmult" and da % db == 0:
            return a.atan().matvecmult(b.atan())
        if kind == "weightedsqnorm" and db in (1, da, da * da):
            return a.atan().weightedsqnorm(b.atan())
        return a + b.sum(-1)
    if kind == "piecewise":
        return _piecewise(draw, draw(st.sampled_from(leaves)), draw(st.sampled_from(leaves)))
    simple = {
        "neg": lambda: -a,
        "abs": lambda: abs(a),
        "exp": lambda: (-a.square()).exp(),
        "log": lambda: (1.0 + a.square()).log(),
        "sqrt": lambda: (0.5 + a.square()).sqrt(),
        "rsqrt": lambda: (0.5 + a.square()).rsqrt(),
        "pow": lambda: a.atan() ** draw(st.sampled_from([0, 1, 2, 3])) + (1 + a.square()) ** -2,
        "sin": lambda: a.sin(),
        "cos": lambda: a.cos(),
        "atan": lambda: a.atan(),
        "asin": lambda: (a / (1.0 + abs(a))).asin(),
        "acos": lambda: (a / (1.0 + abs(a))).acos(),
        "sinxdivx": lambda: a.sinxdivx(),
        "xlogx": lambda: (1.0 + a.square()).xlogx(),
        "relu": lambda: a.relu(),
        "sum": lambda: a.sum(-1),
        "sqnorm2": lambda: a.atan().sqnorm2(),
        "norm2": lambda: a.norm2(),
        "normalize": lambda: a.normalize(),
        "min": lambda: a.min(),
        "max": lambda: a.max(),
        "const": lambda: a * draw(st.floats(-2, 2)) + 1,
    }
    if kind in simple:
        return simple[kind]()
    D = a.formula.dim
    if kind == "elem":
        return a[draw(st.integers(-D, D - 1))]
    i = draw(st.integers(0, D - 1))
    return a.extract(i, draw(st.integers(1, D - i)))


@given(data=st.data())
def test_random_formula_trees(data):
    M = data.draw(st.integers(1, 40), label="M")
    N = data.draw(st.integers(1, 40), label="N")
    D = data.draw(st.sampled_from([1, 2, 3, 5]), label="D")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (M, D))
    y = rng.uniform(-1, 1, (N, D))
    s = rng.uniform(-1, 1, (M, 1))
    t = rng.uniform(-1, 1, (N, 1))
    p = rng.uniform(-1, 1, (D,))
    # Grid-valued leaves (multiples of 1/8) sometimes, so that ties and exact zeros occur.
    if data.draw(st.booleans(), label="quantised"):
        x, y, s, t, p = (np.round(a * 8) / 8 for a in (x, y, s, t, p))
    leaves = [Vi(x), Vj(y), Vi(s), Vj(t), Pm(p)]
    F = data.draw(formulas(leaves, 5), label="formula")
    F = F + Vi(s) * Vj(t)  # both i and j take part, whatever the tree picked
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    out = F.sum(axis)
    (ref,) = dense(F, "Sum", axis)
    assert out.shape == ref.shape == ((M if axis == 1 else N), F.formula.dim)
    assert_close(out, ref, np.float64, rtol64=1e-9, scale=abs_sum(F, axis))
