"""Equal formulas reuse the compiled executable: no new trace, no new lowering."""

import jax

from jaxkeops import LazyTensor, Pm, Vi, Vj
from jaxkeops.program import compile_program


def _lowerings():
    info = compile_program.cache_info()
    return info.hits + info.misses  # every lowering asks the program cache once


def gaussian(x, y, b, s):
    return ((-Vi(x).sqdist(Vj(y)) / Pm(s)).exp() * Vj(b)).sum(1)


def test_equal_formulas_hash_equal(rng):
    a = Vi(rng.normal(size=(5, 3))).sqdist(Vj(rng.normal(size=(4, 3))))
    b = Vi(rng.normal(size=(5, 3))).sqdist(Vj(rng.normal(size=(4, 3))))
    assert a.formula == b.formula and hash(a.formula) == hash(b.formula)
    assert a.formula is not b.formula


def test_jit_second_call_does_not_retrace(rng):
    traces = []

    @jax.jit
    def f(x, y, b, s):
        traces.append(1)
        return gaussian(x, y, b, s)

    args = lambda: (rng.normal(size=(50, 3)), rng.normal(size=(40, 3)), rng.normal(size=(40, 2)), 0.5)  # noqa: E731
    f(*args())
    before = _lowerings()
    f(*args())
    assert len(traces) == 1
    assert _lowerings() == before


def test_eager_second_call_with_equal_formula_reuses_executable(rng):
    x = lambda: rng.normal(size=(30, 1, 3))  # noqa: E731
    y = lambda: rng.normal(size=(1, 20, 3))  # noqa: E731
    first = ((LazyTensor(x()) - LazyTensor(y())) ** 2).sum(-1).sum(1)
    before = _lowerings()
    second = ((LazyTensor(x()) - LazyTensor(y())) ** 2).sum(-1).sum(1)
    assert _lowerings() == before
    assert first.shape == second.shape == (30, 1)
