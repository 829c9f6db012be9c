"""The canonical form of formulas (jaxkeops/normalize.py): different spellings of one
computation normalise to one formula, and normalised formulas reduce to the dense oracle's
values."""

import jax.numpy as jnp
import numpy as np
import pytest
from oracle import abs_sum, assert_close, dense

from jaxkeops import Pm, Vi, Vj
from jaxkeops.formula import walk
from jaxkeops.normalize import normalize
from jaxkeops.reference import dense_reduce


def _xy(rng, M=5, N=7, D=3, dtype=np.float64):
    return (Vi(rng.normal(size=(M, D)).astype(dtype)), Vj(rng.normal(size=(N, D)).astype(dtype)))


def _ops(formula):
    return sorted(n.name for n in walk([formula]) if hasattr(n, "name"))


def _same_normal_form(*lazies):
    forms = {normalize(F.formula) for F in lazies}
    assert len(forms) == 1, [repr(f) for f in forms]
    return forms.pop()


@pytest.mark.parametrize("D", [1, 3, 17])
def test_squared_distance_spellings(rng, D):
    x, y = _xy(rng, D=D)
    form = _same_normal_form(((x - y) ** 2).sum(-1), (x - y).sqnorm2(),
                             ((x - y) * (x - y)).sum(-1), x.sqdist(y), (-(x - y)).sqnorm2())
    assert _ops(form) == ["SqDist"]


def test_dot_product_and_power_spellings(rng):
    x, y = _xy(rng)
    assert _ops(_same_normal_form((x * y).sum(-1), x | y)) == ["Scalprod"]
    s = x.sqdist(y)
    assert _same_normal_form(s ** 2, s.square(), s * s) == normalize((s ** 2).formula)
    assert _ops(normalize((s ** 2).formula)) == ["SqDist", "Square"]


def test_negation_and_constant_factors(rng):
    x, y = _xy(rng)
    s = x.sqdist(y)
    form = _same_normal_form(-s, (-1) * s, s * (-1), -(-(-s)), (-2) * (s / 2))
    assert _ops(form) == ["Minus", "SqDist"]
    assert _same_normal_form(2 * (3 * s), 6 * s, (s * 2) * 3, s * (2 + 4), (s * 12) / 2)
    # Non-integer Python numbers are parameters (data): gathered in front like any parameter.
    form = normalize((2.5 * (s * 4)).formula)
    assert form.name == "Mult" and form.args[1].name == "SqDist"


def test_division_by_a_parameter_becomes_a_product(rng):
    x, y = _xy(rng)
    p = Pm(np.array([0.7]))
    s = x.sqdist(y)
    form = _same_normal_form(s / p, s * (1 / p), s * p.__rtruediv__(1))
    # the inverse is a param-role factor in front, computed once
    assert form.name == "Mult" and form.args[1].name == "SqDist"
    assert repr(form.args[0]) == "(IntCst(1) / Var(2,1,2))"
    # nested parameter factors are gathered: -(s / p) / p and -(1/p)(1/p) s
    assert _same_normal_form(-(s / p) / p, -((s * (1 / p)) * (1 / p)))
    # a division by a pair formula stays a division
    assert "Divide" in _ops(normalize((p / (1 + s)).formula))


def test_gaussian_gradient_is_gathered(rng):
    """The formula the transpose rule makes for a Gaussian sum's gradient."""
    x, y = _xy(rng)
    g, b = Vi(rng.normal(size=(5, 2))), Vj(rng.normal(size=(7, 2)))
    sigma = Pm(np.array([1.3]))
    F = -((g * b).sum(-1) * (-x.sqdist(y) / sigma.square()).exp()) / sigma.square() * (
        2 * (x - y))
    form = normalize(F.formula)
    names = _ops(form)
    assert "Scalprod" in names and "Sum" not in names and "Divide" in names
    # 1/σ², inside the exponential and outside, is one shared param-role node
    assert names.count("Divide") == 1
    assert repr(form).startswith("((IntCst(-2) * (IntCst(1) / Square(Var(4,1,2)))) * ")


def _check_values(F, axis, dtype, reduction="Sum"):
    cats = tuple(v.cat for v in F.variables)
    operands = [jnp.asarray(v.array, dtype) for v in F.variables]
    kw = dict(reduction=reduction, reduction_params=(), axis=axis, ni=F.ni, nj=F.nj)
    (out,) = dense_reduce((normalize(F.formula),), cats, operands, **kw)
    (ref,) = dense(F, reduction, axis)
    scale = abs_sum(F, axis) if reduction == "Sum" else None
    assert_close(out, ref, dtype, rtol32=2e-5, scale=scale)


@pytest.mark.parametrize("D", [1, 3, 17])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalised_reductions_match_the_oracle(rng, D, axis, dtype):
    x, y = _xy(rng, M=6, N=9, D=D, dtype=dtype)
    b = Vj(rng.normal(size=(9, 2)).astype(dtype))
    p = Pm(np.array([0.8], dtype))
    cases = [
        (-(((x - y) ** 2).sum(-1)) / p).exp() * b,
        ((x - y) * (x - y)).sum(-1) * (-1) + (x * y).sum(-1) / p,
        -(2 * (3 * (x - y) ** 2)) / p / p,
        (x.sqdist(y) ** 2 + 1).rsqrt() * (1 / (x - y).sqnorm2().sqrt()),
    ]
    for F in cases:
        _check_values(F, axis, dtype)
    _check_values(-((x - y) ** 2).sum(-1) / p, axis, dtype, reduction="LogSumExp")


def test_nan_and_inf_are_kept(rng):
    """x / p with p = 0 (inf) and 0 / 0 (nan) stay as they were after x * (1/p)."""
    x = Vi(np.array([[0.0], [1.0], [-2.0]]))
    y = Vj(np.array([[0.0], [1.0]]))
    for p in (0.0, np.inf):
        F = (x - y) ** 2 / Pm(np.array([p]))
        cats = tuple(v.cat for v in F.variables)
        operands = [jnp.asarray(v.array) for v in F.variables]
        kw = dict(reduction="Max", reduction_params=(), axis=1, ni=3, nj=2)
        (out,) = dense_reduce((normalize(F.formula),), cats, operands, **kw)[:1]
        (ref,) = dense(F, "Max", 1)
        np.testing.assert_array_equal(np.asarray(out), ref)
