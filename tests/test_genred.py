"""KeOps formula strings (Genred, KernelSolve, generic_*) and placeholders.

A formula string is parsed into the same formula IR as the LazyTensor algebra, so each op and
each reduction through a string must equal the same LazyTensor expression bit for bit (and have
an equal formula). Transforms and solves are checked against dense float64 references.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import (Genred, KernelSolve, LazyTensor, Pm, Vi, Vj, generic_argkmin, generic_argmin,
                      generic_logsumexp, generic_sum)
from jaxkeops.formula import Var, substitute, walk
from jaxkeops.formula_string import FUNCTIONS, FormulaSyntaxError, parse_aliases, parse_formula
from jaxkeops.ops import OPS

M, N = 7, 11  # not multiples of any tile size
ALIASES = ["x = Vi(3)", "y = Vj(3)", "s = Vi(1)", "t = Vj(1)", "q = Pm(9)"]


def _lazy(x, y, s, t, q):
    return Vi(x), Vj(y), Vi(s), Vj(t), Pm(q)


# Op-table name → (formula string, the same LazyTensor expression). Inputs lie in (0.1, 0.9).
OP_CASES = {
    "Add": ("x + y", lambda x, y, s, t, q: x + y),
    "Subtract": ("x - y", lambda x, y, s, t, q: x - y),
    "Mult": ("x * t", lambda x, y, s, t, q: x * t),
    "Divide": ("x / y", lambda x, y, s, t, q: x / y),
    "Minus": ("-x + t", lambda x, y, s, t, q: -x + t),
    "Exp": ("Exp(-SqDist(x, y))", lambda x, y, s, t, q: (-x.sqdist(y)).exp()),
    "Log": ("Log(x * y)", lambda x, y, s, t, q: (x * y).log()),
    "Sqrt": ("Sqrt(x + y)", lambda x, y, s, t, q: (x + y).sqrt()),
    "Square": ("(x - y) ** 2", lambda x, y, s, t, q: (x - y) ** 2),
    "Pow": ("Pow(x - y, 3)", lambda x, y, s, t, q: (x - y) ** 3),
    "Powf": ("Powf(x, y)", lambda x, y, s, t, q: x ** y),
    "Sum": ("Sum(x * y)", lambda x, y, s, t, q: (x * y).sum(-1)),
    "SqNorm2": ("SqNorm2(x - y)", lambda x, y, s, t, q: (x - y).sqnorm2()),
    "Scalprod": ("(x | y)", lambda x, y, s, t, q: x | y),
    "SqDist": ("SqDist(x, y)", lambda x, y, s, t, q: x.sqdist(y)),
    "Abs": ("Abs(x - y)", lambda x, y, s, t, q: abs(x - y)),
    "Sin": ("Sin(x * y)", lambda x, y, s, t, q: (x * y).sin()),
    "Cos": ("Cos(x - y)", lambda x, y, s, t, q: (x - y).cos()),
    "Asin": ("Asin(x * y)", lambda x, y, s, t, q: (x * y).asin()),
    "Acos": ("Acos(x * y)", lambda x, y, s, t, q: (x * y).acos()),
    "Atan": ("Atan(x - y)", lambda x, y, s, t, q: (x - y).atan()),
    "Rsqrt": ("Rsqrt(x + y)", lambda x, y, s, t, q: (x + y).rsqrt()),
    "XLogX": ("XLogX(x * y)", lambda x, y, s, t, q: (x * y).xlogx()),
    "SinXDivX": ("SinXDivX(x - y)", lambda x, y, s, t, q: (x - y).sinxdivx()),
    "Sign": ("Sign(x - y)", lambda x, y, s, t, q: (x - y).sign()),
    "Step": ("Step(x - y)", lambda x, y, s, t, q: (x - y).step()),
    "ReLU": ("ReLU(x - y)", lambda x, y, s, t, q: (x - y).relu()),
    "Floor": ("Floor(4 * x * t)", lambda x, y, s, t, q: (4 * x * t).floor()),
    "Atan2": ("Atan2(x - y, t)", lambda x, y, s, t, q: (x - y).atan2(t)),
    "Equal": ("Equal(Floor(2 * x), Floor(2 * y))",
              lambda x, y, s, t, q: (2 * x).floor() == (2 * y).floor()),
    "NotEqual": ("NotEqual(Floor(2 * x), Floor(2 * y))",
                 lambda x, y, s, t, q: (2 * x).floor() != (2 * y).floor()),
    "LessThan": ("x < y", lambda x, y, s, t, q: x < y),
    "LessOrEqual": ("y >= x", lambda x, y, s, t, q: y >= x),
    "IfElse": ("IfElse(x - y, x, t)", lambda x, y, s, t, q: (x - y).ifelse(x, t)),
    "Clamp": ("Clamp(x, s, t)", lambda x, y, s, t, q: x.clamp(s, t)),
    "Mod": ("Mod(x + y, t, s)", lambda x, y, s, t, q: (x + y).mod(t, s)),
    "Round": ("Round(x * y, 1)", lambda x, y, s, t, q: (x * y).round(1)),
    "Min": ("Min(x - y)", lambda x, y, s, t, q: (x - y).min(-1)),
    "Max": ("Max(x - y)", lambda x, y, s, t, q: (x - y).max(-1)),
    "ArgMin": ("ArgMin(x - y)", lambda x, y, s, t, q: (x - y).argmin(-1)),
    "ArgMax": ("ArgMax(x - y)", lambda x, y, s, t, q: (x - y).argmax(-1)),
    "OneHot": ("OneHot(Floor(4 * s * t), 5)",
               lambda x, y, s, t, q: (4 * s * t).floor().one_hot(5)),
    "Extract": ("Extract(x * y, 1, 2)", lambda x, y, s, t, q: (x * y).extract(1, 2)),
    "ExtractT": ("ExtractT(s * t, 2, 4)", lambda x, y, s, t, q: (s * t)._unary("ExtractT", (2, 4))),
    "Concat": ("Concat(x, s * t)", lambda x, y, s, t, q: x.concat(s * t)),
    "TensorDot": ("TensorDot(q, x - y, [3, 3], [3], [1], [0])",
                  lambda x, y, s, t, q: q.keops_tensordot(x - y, (3, 3), 3, 1, 0)),
}

# KeOps' derived names and the operators' special cases.
DERIVED_CASES = {
    "Inv": ("Inv(x + y)", lambda x, y, s, t, q: 1 / (x + y)),
    "Norm2": ("Norm2(x - y)", lambda x, y, s, t, q: (x - y).norm2()),
    "Normalize": ("Normalize(x - y)", lambda x, y, s, t, q: (x - y).normalize()),
    "Elem": ("Elem(x - y, 2)", lambda x, y, s, t, q: (x - y).elem(2)),
    "TensorProd": ("TensorProd(x, y)", lambda x, y, s, t, q: x.tensorprod(y)),
    "MatVecMult": ("MatVecMult(q, x - y)", lambda x, y, s, t, q: q.matvecmult(x - y)),
    "VecMatMult": ("VecMatMult(x - y, q)", lambda x, y, s, t, q: (x - y).vecmatmult(q)),
    "Kron": ("Kron(x, y, [3], [3])", lambda x, y, s, t, q: x.keops_kron(y, [3], [3])),
    "WeightedSqNorm(1)": ("WeightedSqNorm(t, x)", lambda x, y, s, t, q: x.weightedsqnorm(t)),
    "WeightedSqDist(D)": ("WeightedSqDist(x, y, x * t)",
                          lambda x, y, s, t, q: y.weightedsqdist(x * t, x)),
    "WeightedSqNorm(D*D)": ("WeightedSqNorm(q, x - y)",
                            lambda x, y, s, t, q: (q * (x - y).tensorprod(x - y)).sum(-1)),
    "SqNormDiag": ("SqNormDiag(x, y)", lambda x, y, s, t, q: (x * y.square()).sum(-1)),
    "ElemT": ("ElemT(s * t, 4, 1)", lambda x, y, s, t, q: (s * t)._unary("ExtractT", (1, 4))),
    "IntCst": ("IntCst(3) * x - 2 * t", lambda x, y, s, t, q: 3 * x - 2 * t),
    "sqrt power": ("(x + y) ** 0.5 + (x + y) ** -0.5",
                   lambda x, y, s, t, q: (x + y) ** 0.5 + (x + y) ** -0.5),
    "precedence": ("-x * y ** 2 / (s + t) - (x | y) * t",
                   lambda x, y, s, t, q: -x * y ** 2 / (s + t) - (x | y) * t),
    "Var/Vi in formula": ("Var(0, 3, 0) * Vj(3, 1)", lambda x, y, s, t, q: x * t),
}


def _canonical(formula):
    """The formula with its variables renumbered in order of appearance (the LazyTensor algebra
    numbers them as the expression merges them, the string by alias position)."""
    order = {}
    for node in walk([formula]):
        if isinstance(node, Var):
            order.setdefault(node.index, len(order))
    return substitute(formula, lambda leaf: Var(order[leaf.index], leaf.dim, leaf.cat)
                      if isinstance(leaf, Var) else None)


def _inputs(rng, dtype=np.float32):
    u = lambda *shape: rng.uniform(0.1, 0.9, shape).astype(dtype)  # noqa: E731
    return u(M, 3), u(N, 3), u(M, 1), u(N, 1), u(9)


@pytest.mark.parametrize("name", sorted(OP_CASES) + sorted(DERIVED_CASES))
def test_each_op_string_equals_lazy_tensor(name, rng):
    text, build = {**OP_CASES, **DERIVED_CASES}[name]
    arrays = _inputs(rng)
    expected_formula = build(*_lazy(*arrays))
    parsed = parse_formula(text, parse_aliases(ALIASES))
    assert _canonical(parsed) == _canonical(expected_formula.formula)
    axis = int(rng.integers(2))
    out = Genred(text, ALIASES, reduction_op="Sum", axis=axis)(*arrays)
    np.testing.assert_array_equal(out, expected_formula.sum(axis))


def test_every_op_of_the_table_has_a_string_case():
    assert set(OPS) <= set(OP_CASES)
    assert set(OPS) <= set(FUNCTIONS)


# Genred reduction → (opt_arg, formula2, the same LazyTensor reduction).
REDUCTION_CASES = {
    "Sum": (None, None, lambda F, w, a: F.sum(a)),
    "LogSumExp": (None, None, lambda F, w, a: F.logsumexp(a)),
    "LogSumExp+weight": (None, "y * t", lambda F, w, a: F.logsumexp(a, weight=w)),
    "LogSumExpWeight": (None, "y * t", lambda F, w, a: F.logsumexp(a, weight=w)),
    "SumSoftMaxWeight": (None, "y * t", lambda F, w, a: F.sumsoftmaxweight(w, a)),
    "Min": (None, None, lambda F, w, a: F.min(a)),
    "ArgMin": (None, None, lambda F, w, a: F.argmin(a)),
    "Min_ArgMin": (None, None, lambda F, w, a: F.min_argmin(a)),
    "Max": (None, None, lambda F, w, a: F.max(a)),
    "ArgMax": (None, None, lambda F, w, a: F.argmax(a)),
    "Max_ArgMax": (None, None, lambda F, w, a: F.max_argmax(a)),
    "KMin": (3, None, lambda F, w, a: F.Kmin(3, a)),
    "ArgKMin": (3, None, lambda F, w, a: F.argKmin(3, a)),
    "KMin_ArgKMin": (3, None, lambda F, w, a: F.Kmin_argKmin(3, a)),
}


@pytest.mark.parametrize("case", sorted(REDUCTION_CASES))
def test_each_reduction_string_equals_lazy_tensor(case, rng):
    reduction = case.split("+")[0]
    opt_arg, formula2, reduce = REDUCTION_CASES[case]
    arrays = _inputs(rng)
    x, y, s, t, q = _lazy(*arrays)
    F, w = -x.sqdist(y) * s, y * t
    for axis in (0, 1):
        out = Genred("-SqDist(x, y) * s", ALIASES, reduction_op=reduction, axis=axis,
                     opt_arg=opt_arg, formula2=formula2)(*arrays)
        expected = reduce(F, w, axis)
        if isinstance(expected, tuple):
            assert isinstance(out, tuple) and len(out) == len(expected)
            for o, e in zip(out, expected):
                np.testing.assert_array_equal(o, e)
        else:
            np.testing.assert_array_equal(out, expected)


def test_max_sumshiftexp_against_dense(rng):
    x, y, s, t, q = _inputs(rng, np.float64)
    S = -((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # (M, N)
    w = y * t  # (N, 3)
    m = S.max(axis=1, keepdims=True)
    e = np.exp(S - m)
    out = Genred("-SqDist(x, y)", ALIASES, reduction_op="Max_SumShiftExp", axis=1)(x, y, s, t, q)
    np.testing.assert_allclose(out, np.concatenate([m, e.sum(1, keepdims=True)], 1), rtol=1e-12)
    out = Genred("-SqDist(x, y)", ALIASES, reduction_op="Max_SumShiftExpWeight", axis=1,
                 formula2="y * t")(x, y, s, t, q)
    np.testing.assert_allclose(out, np.concatenate([m, e @ w], 1), rtol=1e-12)


def _gauss_dense(x, y, b, p):
    K = np.exp(-p[0] * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    return K @ b


def test_genred_jit_vmap_grad_against_dense(rng):
    g = Genred("Exp(-p * SqDist(x, y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(2, 4)",
                                                "p = Pm(1)"], axis=1)
    x, y, b, p = rng.normal(size=(M, 2)), rng.normal(size=(N, 2)), rng.normal(size=(N, 4)), \
        np.array([0.7])
    ref = _gauss_dense(x, y, b, p)
    np.testing.assert_allclose(jax.jit(g)(x, y, b, p), ref, rtol=1e-12)
    xs = rng.normal(size=(3, M, 2))
    batched = jax.vmap(g, in_axes=(0, None, None, None))(xs, y, b, p)
    np.testing.assert_allclose(batched, np.stack([_gauss_dense(xi, y, b, p) for xi in xs]),
                               rtol=1e-12)
    # Batch dims given directly, as pykeops (parameters (B, D), variables (B, n, D)):
    np.testing.assert_allclose(g(xs, y[None], b[None], p[None]), batched, rtol=1e-12)
    # grad with respect to x and p, against the dense formula differentiated by JAX.
    loss = lambda x, p: jnp.sum(jnp.sin(g(x, y, b, p)))  # noqa: E731

    def dense_loss(x, p):
        K = jnp.exp(-p[0] * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
        return jnp.sum(jnp.sin(K @ b))

    for got, want in zip(jax.grad(loss, (0, 1))(x, p), jax.grad(dense_loss, (0, 1))(x, p)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_grad_operation_in_a_formula_string(rng):
    """KeOps' Grad(F, x, e) summed over j is the gradient in x_i of Σ_j <F_ij, e_i>."""
    x, y, b = rng.normal(size=(M, 3)), rng.normal(size=(N, 3)), rng.normal(size=(N, 2))
    e = rng.normal(size=(M, 2))
    aliases = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)", "e = Vi(2)"]
    out = Genred("Grad(Exp(-SqDist(x, y)) * b, x, e)", aliases, axis=1)(x, y, b, e)

    def energy(x):
        return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b) * Vi(e)).sum(-1).sum(1).sum()

    np.testing.assert_allclose(out, jax.grad(energy)(x), rtol=1e-10, atol=1e-12)
    # A second Grad that vanishes: zeros, and the Var(...) written still count as arguments.
    g = Genred("Grad(Grad(x + Var(1, 3, 1), x, Var(2, 3, 0)), x, Var(3, 3, 0))", ["x = Vi(3)"],
               axis=1)
    np.testing.assert_array_equal(g(x, y, x, x), np.zeros((M, 3)))


@pytest.mark.parametrize("axis", [0, 1])
def test_kernel_solve_against_numpy(axis, rng):
    n = 9
    z = rng.normal(size=(n, 2))
    b = rng.normal(size=(n, 3))
    cat_a = "Vj" if axis == 1 else "Vi"
    solver = KernelSolve("Exp(-SqDist(x, y)) * a", ["x = Vi(2)", "y = Vj(2)", f"a = {cat_a}(3)"],
                         "a", axis=axis)
    a = solver(z, z, b, alpha=0.3, eps=1e-12)
    Kd = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1))
    np.testing.assert_allclose(a, np.linalg.solve(Kd + 0.3 * np.eye(n), b), rtol=1e-8, atol=1e-10)
    # the same through LazyTensor.solve(var=...)
    var = Vj(jnp.zeros((n, 3))) if axis == 1 else Vi(jnp.zeros((n, 3)))
    K = (-Vi(z).sqdist(Vj(z))).exp() * var
    rhs = Vi(b) if axis == 1 else Vj(b)
    np.testing.assert_allclose(K.solve(rhs, var=var, alpha=0.3, eps=1e-12), a, rtol=1e-10)
    # jit, and the gradient in b: d/db Σ (A⁻¹ b) w = A⁻ᵀ w, A symmetric.
    w = rng.normal(size=(n, 3))
    jitted = jax.jit(lambda z, b, alpha: solver(z, z, b, alpha=alpha, eps=1e-12))
    np.testing.assert_allclose(jitted(z, b, 0.3), a, rtol=1e-10)
    grad_b = jax.grad(lambda b: jnp.sum(solver(z, z, b, alpha=0.3, eps=1e-12) * w))(b)
    np.testing.assert_allclose(grad_b, np.linalg.solve(Kd + 0.3 * np.eye(n), w), rtol=1e-8,
                               atol=1e-10)


def test_kernel_solve_errors():
    with pytest.raises(ValueError, match="not linear"):
        KernelSolve("Exp(-SqDist(x, y) * a)", ["x = Vi(1)", "y = Vj(1)", "a = Vj(1)"], "a",
                    axis=1)(np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="expected a j variable for axis=1"):
        KernelSolve("x * a", ["x = Vi(1)", "a = Vi(1)"], "a", axis=1)
    with pytest.raises(ValueError, match="unknown alias 'c'"):
        KernelSolve("x * a", ["x = Vi(1)", "a = Vj(1)"], "c", axis=1)


def test_generic_functions(rng):
    x, y, b = rng.normal(size=(M, 3)), rng.normal(size=(N, 3)), rng.normal(size=(N, 2))
    X, Y, B = Vi(x), Vj(y), Vj(b)
    D = X.sqdist(Y)
    f = "SqDist(x, y)"
    np.testing.assert_array_equal(generic_sum(f + " * b", "a = Vi(2)", "x = Vi(3)", "y = Vj(3)",
                                              "b = Vj(2)")(x, y, b), (D * B).sum(1))
    np.testing.assert_array_equal(generic_logsumexp("-" + f, "a = Vj(1)", "x = Vi(3)",
                                                    "y = Vj(3)")(x, y), (-D).logsumexp(0))
    np.testing.assert_array_equal(generic_argmin(f, "a = Vi(1)", "x = Vi(3)", "y = Vj(3)")(x, y),
                                  D.argmin(1))
    np.testing.assert_array_equal(
        generic_argkmin(f, "a = Vi(4)", "x = Vi(3)", "y = Vj(3)")(x, y), D.argKmin(4, 1))


def test_placeholders(rng):
    x, y, b, p = (rng.normal(size=(M, 3)), rng.normal(size=(N, 3)), rng.normal(size=(N, 2)),
                  np.array([0.5]))
    expected = ((-Pm(p) * Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1)
    K = ((-Pm(3, 1) * Vi(0, 3).sqdist(LazyTensor((1, 3, 1)))).exp() * Vj(2, 2)).sum(axis=1)
    assert "waiting for 4 array(s)" in repr(K)
    np.testing.assert_array_equal(K(x, y, b, p), expected)
    np.testing.assert_array_equal(jax.jit(K)(x, y, b, p), expected)
    # placeholders mixed with arrays; two-output reductions give one callable
    mixed = Vi(0, 3).sqdist(Vj(y)).min_argmin(axis=1)
    for got, want in zip(mixed(x), Vi(x).sqdist(Vj(y)).min_argmin(axis=1)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"argument 0 has shape \(7, 2\); expected \(n, 3\)"):
        mixed(x[:, :2])
    with pytest.raises(TypeError, match="expected 1"):
        mixed(x, y)


@pytest.mark.parametrize("text, position, expected", [
    ("Exp(x", 5, "expected ',' or '\\)'"),
    ("x + * y", 4, "expected a number, a name or '\\('"),
    ("Exp(x, y)", 7, r"Exp\(x\) takes 1 argument"),
    ("Foo(x)", 0, "unknown function 'Foo'"),
    ("z * 2", 0, "unknown name 'z'"),
    ("SqDist(x, t)", 0, "operand dimensions 3 and 1 do not match"),
    ("Pow(x, 1.5)", 7, "expected an integer"),
    ("x $ y", 2, "unexpected character"),
    ("x y", 2, "expected an operator or the end"),
    ("BSpline(x, y)", 0, "does not provide"),
])
def test_parse_errors_name_position_and_expectation(text, position, expected):
    with pytest.raises(FormulaSyntaxError, match=expected) as info:
        Genred(text, ALIASES)
    assert info.value.pos == position
    assert f"at position {position} of {text!r}" in str(info.value)


def test_alias_and_call_errors(rng):
    with pytest.raises(FormulaSyntaxError, match="expected 'name = Vi"):
        Genred("x", ["x = Vk(3)"])
    with pytest.raises(ValueError, match="declared both"):
        Genred("x + Var(0, 3, 1)", ["x = Vi(3)"])
    with pytest.raises(ValueError, match=r"argument position\(s\) \[1\] are not declared"):
        Genred("x", ["x = Vi(0, 3)", "y = Vj(2, 3)"])
    g = Genred("x * y", ["x = Vi(3)", "y = Vj(3)"], axis=1)
    with pytest.raises(ValueError, match=r"argument 1 \(y = Vj\(1, 3\)\) has shape \(4, 2\); "
                                         r"expected \(N, 3\)"):
        g(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(TypeError, match="called with 1 array"):
        g(np.ones((2, 3)))
    with pytest.raises(ValueError, match="reduction_op='Foo'"):
        Genred("x", ["x = Vi(3)"], reduction_op="Foo")
    with pytest.raises(ValueError, match="needs K"):
        Genred("x", ["x = Vi(3)", "y = Vj(3)"], reduction_op="KMin", axis=1)(
            np.ones((2, 3)), np.ones((4, 3)))


def test_unused_alias_still_sets_the_size(rng):
    y = rng.normal(size=(N, 2))
    out = Genred("y", ["x = Vi(1)", "y = Vj(2)"], axis=1)(np.ones((M, 1)), y)
    np.testing.assert_allclose(out, np.broadcast_to(y.sum(0), (M, 2)), rtol=1e-12)


# --- pykeops' names and keywords on LazyTensor ----------------------------------------------


def test_reduction_aliases_and_reduction_by_name(rng):
    x, y, b = rng.normal(size=(M, 3)), rng.normal(size=(N, 3)), rng.normal(size=(N, 2))
    D = -Vi(x).sqdist(Vj(y))
    B = Vj(b)
    pairs = [
        (D.sum_reduction(axis=1), D.sum(1)),
        (D.reduction("Sum", dim=0), D.sum(0)),
        (D.logsumexp_reduction(axis=1, other=B), D.logsumexp(1, weight=B)),
        (D.logsumexp(1, other=B), D.logsumexp(1, weight=B)),
        (D.reduction("LogSumExp", other=B, axis=1), D.logsumexp(1, weight=B)),
        (D.sumsoftmaxweight_reduction(B, axis=1), D.sumsoftmaxweight(B, 1)),
        (D.min_reduction(axis=0), D.min(0)),
        (D.argmax_reduction(axis=1), D.argmax(1)),
        (D.Kmin_reduction(K=2, axis=1), D.Kmin(2, 1)),
        (D.reduction("ArgKMin", opt_arg=2, axis=1), D.argKmin(2, 1)),
        (D.min_argmin_reduction(axis=1)[1], D.min_argmin(1)[1]),
        (D.Kmin_argKmin_reduction(K=3, axis=0)[0], D.Kmin_argKmin(3, 0)[0]),
    ]
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="axis .* is required"):
        D.sum_reduction()
    with pytest.raises(ValueError, match="expected 0 \\(over i\\) or 1"):
        D.min_reduction(axis=2)


def test_shape_properties():
    x = Vi(np.ones((M, 3), np.float32))
    K = x.sqdist(Vj(np.ones((N, 3), np.float32)))
    V = Vi(np.ones((M, 3), np.float32)) * Vj(np.ones((N, 3), np.float32))
    assert (K.ndim, V.ndim) == (1, 3)  # KeOps: the formula's dimension
    assert (K.dim(), V.dim()) == (3, 3)
    assert K.dtype == "float32" and K.nbatchdims == 0 and K.batchdims is None
    batched = LazyTensor(np.ones((2, M, 1, 3), np.float32))
    assert batched.nbatchdims == 1 and batched.batchdims == (2,) and batched.dim() == 4
    assert Vi(0, 3).dtype is None
    np.testing.assert_array_equal(
        V.sum(-1, keepdim=True).sum(1), V.sum(-1).sum(1))


def test_keywords_accepted_warned_or_refused(rng):
    import jaxkeops.call_options as call_options

    call_options._warned.clear()
    x, y = rng.normal(size=(M, 3)).astype(np.float32), rng.normal(size=(N, 3)).astype(np.float32)
    K = (-Vi(x).sqdist(Vj(y))).exp()
    ref = K.sum(1)
    # KeOps' defaults and what jaxkeops does anyway: silent.
    np.testing.assert_array_equal(
        K.sum(1, backend="auto", device_id=-1, enable_chunks=True, use_fast_math=True,
              dtype_acc="float64", sum_scheme="block_sum"), ref)
    np.testing.assert_array_equal(K.sum(1, use_double_acc=True), ref)
    for kwargs, what in [({"backend": "GPU_2D"}, "backend"), ({"device_id": 1}, "device_id"),
                         ({"dtype_acc": "float32"}, "accumulates"),
                         ({"sum_scheme": "kahan_scheme"}, "float64"),
                         ({"enable_chunks": False}, "code generator")]:
        with pytest.warns(UserWarning, match=what):
            np.testing.assert_array_equal(K.sum(1, **kwargs), ref)
    with pytest.raises(ValueError, match="sum-type reductions only"):
        K.min(1, dtype_acc="float64")
    with pytest.raises(ValueError, match="at most one"):
        K.sum(1, dtype_acc="float64", use_double_acc=True)
    with pytest.raises(ValueError, match="backend='TPU'"):
        K.sum(1, backend="TPU")
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) 'foo'"):
        K.sum(1, foo=1)
    out = np.zeros((M, 1), np.float32)
    np.testing.assert_array_equal(K.sum(1, out=out), ref)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(TypeError, match="immutable"):
        K.sum(1, out=jnp.zeros((M, 1), jnp.float32))
    pending = K.sum(1, call=False)
    np.testing.assert_array_equal(pending(), ref)


def test_genred_with_ranges_equals_the_lazy_tensor_with_ranges(rng):
    """Genred(...)(..., ranges=r) is the LazyTensor reduction with the same ranges, bit for
    bit, and differs from the dense result (the blocks really are skipped)."""
    from jaxkeops import cluster

    M_, N_ = 23, 31
    x, y, b = rng.normal(size=(M_, 2)), rng.normal(size=(N_, 2)), rng.normal(size=(N_, 1))
    keep = np.array([[True, False, True], [False, True, False]])
    ranges = cluster.from_matrix(np.array([[0, 10], [10, M_]], np.int32),
                                 np.array([[0, 7], [7, 20], [20, N_]], np.int32), keep)
    g = Genred("Exp(-SqDist(x, y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    K = (-Vi(x).sqdist(Vj(y))).exp() * Vj(b)
    ours = g(x, y, b, ranges=ranges)
    np.testing.assert_array_equal(ours, K.sum(1, ranges=ranges))
    mask = np.zeros((M_, N_), bool)
    mask[:10, :7] = mask[:10, 20:] = mask[10:, 7:20] = True
    dense = np.where(mask, np.exp(-((x[:, None] - y[None]) ** 2).sum(-1)), 0) @ b
    np.testing.assert_allclose(ours, dense, rtol=1e-12)
