"""Every op of the formula language inside a Sum reduction, against the dense float64 oracle.

Table-driven, in the style of KeOps' test_op: each case builds a formula from arguments whose
category (i, j or parameter) is drawn at random per run, with per-op input ranges. The formula is
multiplied by u_i * v_j so that the grid is always M x N. Piecewise-constant ops get inputs on a
coarse binary grid (exact in float32, so float32 and float64 see the same branch, ties included).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import abs_sum, assert_close, dense

from jaxkeops import LazyTensor, Pm, Vi, Vj
from jaxkeops import _native
from jaxkeops.formula import CAT_I, CAT_J, CAT_P
from jaxkeops.ops import OPS, opcode_table
from jaxkeops.reference import dense_reduce

M, N = 300, 500


@dataclasses.dataclass(frozen=True)
class Arg:
    dim: int
    lo: float = -1.0
    hi: float = 1.0
    step: float | None = None  # inputs on the grid lo + k * step (piecewise ops)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable  # (*LazyTensors) -> LazyTensor
    args: tuple[Arg, ...]
    smooth: bool = True  # first derivatives checked against jax.grad of the dense oracle


D = 3
U = Arg(D)
POS = Arg(D, 0.1, 2.0)
Q = Arg(D, -2.0, 2.0, 0.25)  # quantised: ties, zeros and exact branches
S1 = Arg(1)
# Positive inputs for ops that add several coordinates, whose float32 rounding is otherwise
# relative to the terms, not to a sum that may cancel (the oracle sees exact inputs).
P = Arg(D, 0.1, 1.0)

CASES = [
    # arithmetic (with "same dimension or 1" broadcasting)
    Case("add", lambda a, b: a + b, (U, U)),
    Case("add_bcast", lambda a, b: a + b, (U, S1)),
    Case("sub", lambda a, b: a - b, (S1, U)),
    Case("mul", lambda a, b: a * b, (U, U)),
    Case("div", lambda a, b: a / b, (U, Arg(D, 0.5, 1.5))),
    Case("neg", lambda a: -a, (U,)),
    Case("abs", lambda a: abs(a) + a.abs(), (U,)),
    Case("square", lambda a: a.square() + a**2, (U,)),
    Case("pow_int", lambda a: a**3 + a**-2 + a.power(1) + a**0, (Arg(D, 0.5, 1.5),)),
    Case("pow_sqrt", lambda a: a**0.5 + a.sqrt(), (POS,)),
    Case("pow_rsqrt", lambda a: a**-0.5 + a.rsqrt(), (POS,)),
    Case("rsqrt_at_zero", lambda a: a.rsqrt(), (Arg(D, 0.0, 2.0, 0.25),), smooth=False),
    Case("powf", lambda a: a**1.7 + 2.0**a, (POS,)),
    Case("powf_lazy", lambda a, b: a**b, (POS, U)),
    Case("powf_lazy_scalar", lambda a, b: a**b, (POS, S1)),
    Case("exp", lambda a: a.exp(), (U,)),
    Case("log", lambda a: a.log(), (Arg(D, 0.01, 2.0),)),
    Case("xlogx", lambda a: a.xlogx(), (Arg(D, 0.01, 2.0),)),
    Case("xlogx_at_zero", lambda a: a.xlogx(), (Arg(D, 0.0, 2.0, 0.25),), smooth=False),
    Case("sin_cos", lambda a: a.sin() * a.cos(), (Arg(D, -4.0, 4.0),)),
    Case("sinxdivx", lambda a: a.sinxdivx(), (Arg(D, -4.0, 4.0),)),
    Case("sinxdivx_at_zero", lambda a: a.sinxdivx() + a.sinc(), (Q,), smooth=False),
    Case("sinc", lambda a: a.sinc(), (Arg(D, -0.95, 0.95),)),  # away from its zeros
    Case("asin", lambda a: a.asin(), (Arg(D, -0.99, 0.99),)),
    Case("acos", lambda a: a.acos(), (Arg(D, -0.99, 0.99),)),
    Case("atan", lambda a: a.atan(), (Arg(D, -3.0, 3.0),)),
    Case("atan2", lambda a, b: a.atan2(b), (U, U)),
    Case("sign", lambda a: a.sign(), (Q,), smooth=False),
    Case("step", lambda a: a.step(), (Q,), smooth=False),
    Case("relu", lambda a: a.relu(), (U,)),
    # comparisons and piecewise
    Case("eq_ne", lambda a, b: (a == b) + 2 * (a != b), (Q, Q), smooth=False),
    Case("lt_gt", lambda a, b: (a < b) + 2 * (a > b), (Q, Q), smooth=False),
    Case("le_ge", lambda a, b: (a <= b) + 2 * (a >= b), (Q, Arg(1, -2.0, 2.0, 0.25)),
         smooth=False),
    Case("cmp_number", lambda a: (a < 0.5) + (a >= 0.0), (Q,), smooth=False),
    Case("clamp_numbers", lambda a: a.clamp(-0.3, 0.6) + a.clamp(0, 1), (U,)),
    Case("clamp_lazy", lambda x, a, b: x.clamp(a, b),
         (Arg(D, -2.0, 2.0), Arg(D, -1.0, 0.0), Arg(1, 0.0, 1.0))),
    Case("ifelse", lambda c, a, b: c.ifelse(a, b), (Q, U, Arg(1))),
    Case("mod_numbers", lambda a: a.mod(0.75) + a.mod(1.5, 0.25),
         (Arg(D, -3.0, 3.0, 1 / 128),), smooth=False),
    Case("mod_lazy", lambda x, m: x.mod(m, 0.5), (Arg(D, -3.0, 3.0), Arg(1, 0.5, 2.0))),
    Case("round", lambda a: a.round() + a.round(2), (Arg(D, -3.0, 3.0, 1 / 256),), smooth=False),
    Case("floor", lambda a: a.floor(), (Arg(D, -3.0, 3.0, 1 / 8),), smooth=False),
    # vectors
    Case("sqnorm2_norm2", lambda a: a.sqnorm2() + a.norm2() + a.norm(-1), (U,)),
    Case("normalize", lambda a: a.normalize(), (Arg(4, 0.1, 1.0),)),
    Case("sqdist", lambda a, b: a.sqdist(b), (U, U)),
    Case("weightedsqnorm_iso", lambda x, s: x.weightedsqnorm(s), (U, Arg(1, 0.5, 1.5))),
    Case("weightedsqnorm_diag", lambda x, s: x.weightedsqnorm(s), (U, Arg(D, 0.5, 1.5))),
    Case("weightedsqnorm_full", lambda x, s: x.weightedsqnorm(s), (P, Arg(D * D, 0.1, 1.0))),
    Case("weightedsqdist", lambda x, y, s: x.weightedsqdist(y, s), (U, U, Arg(D * D, 0.1, 1.0))),
    Case("dot", lambda a, b: a | b, (P, P)),
    Case("sum_features", lambda a: a.sum(-1), (P,)),
    Case("min_max", lambda a: a.min() + a.max(axis=-1) * 2, (Arg(5, 0.1, 1.0),)),
    Case("argmin_argmax", lambda a: a.argmin() + 10 * a.argmax(dim=-1), (Arg(5, -1.0, 1.0, 0.5),),
         smooth=False),
    Case("one_hot", lambda a: a.one_hot(4), (Arg(1, -1.0, 5.0, 0.25),), smooth=False),
    # indexing
    Case("elem", lambda a: a.elem(2) + a[0] * a[-1], (Arg(4, 0.1, 1.0),)),
    Case("extract", lambda a: a.extract(1, 2) + a[2:4] + a[..., :2] + a[:, :, 2:], (Arg(4, 0.1, 1.0),)),
    Case("concat", lambda a, b: a.concat(b) * LazyTensor.concatenate((b, a, b)).extract(1, 4),
         (Arg(3), Arg(1))),
    Case("cat", lambda a, b: LazyTensor.cat((a, b), -1) + LazyTensor.cat((b, a), 2), (P, P)),
    # tensor algebra
    Case("matvecmult", lambda A, v: A.matvecmult(v), (Arg(6, 0.1, 1.0), Arg(3, 0.1, 1.0))),
    Case("vecmatmult", lambda v, A: v.vecmatmult(A), (Arg(2, 0.1, 1.0), Arg(6, 0.1, 1.0))),
    Case("tensorprod", lambda a, b: a.tensorprod(b), (Arg(2), Arg(3))),
    Case("tensordot",
         lambda a, b: a.keops_tensordot(b, (2, 3, 2), (3, 2), (1, 2), (0, 1)),
         (Arg(12, 0.1, 1.0), Arg(6, 0.1, 1.0))),
    Case("tensordot_perm",
         lambda a, b: a.keops_tensordot(b, (2, 3, 2), (3, 2), (1,), (0,), (2, 0, 1)),
         (Arg(12, 0.1, 1.0), Arg(6, 0.1, 1.0))),
    Case("kron", lambda a, b: a.keops_kron(b, (2, 2), (1, 3)), (Arg(4), Arg(3))),
]

CASE_IDS = [c.name for c in CASES]


def _draw(rng, arg: Arg, n: int, dtype):
    if arg.step is None:
        values = rng.uniform(arg.lo, arg.hi, (n, arg.dim))
    else:
        k = rng.integers(0, int(round((arg.hi - arg.lo) / arg.step)) + 1, (n, arg.dim))
        values = arg.lo + k * arg.step
    return values.astype(dtype)


def _cats(rng, n_args):
    return [int(c) for c in rng.integers(0, 3, n_args)]


def _inputs(rng, case: Case, dtype, m=M, n=N):
    """Arrays per argument (shaped for its random category), plus u_i and v_j."""
    cats = _cats(rng, len(case.args))
    arrays = []
    for arg, cat in zip(case.args, cats):
        n_rows = {CAT_I: m, CAT_J: n, CAT_P: 1}[cat]
        x = _draw(rng, arg, n_rows, dtype)
        arrays.append(x[0] if cat == CAT_P else x)
    u = rng.uniform(0.5, 1.5, (m, 1)).astype(dtype)
    v = rng.uniform(0.5, 1.5, (n, 1)).astype(dtype)
    return cats, arrays, u, v


def _lazy(cat, x):
    return {CAT_I: Vi, CAT_J: Vj, CAT_P: Pm}[cat](x)


def _formula(case, cats, arrays, u, v):
    F = case.build(*[_lazy(c, x) for c, x in zip(cats, arrays)])
    return F * (Vi(u) * Vj(v))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_forward(rng, case, dtype):
    cats, arrays, u, v = _inputs(rng, case, dtype)
    F = _formula(case, cats, arrays, u, v)
    for axis in (0, 1):
        out = F.sum(axis)
        assert out.dtype == dtype
        (ref,) = dense(F, "Sum", axis)
        assert_close(out, ref, dtype, rtol32=1e-4, rtol64=1e-10, scale=abs_sum(F, axis))


def _dense_sum(F, axis):
    (out,) = dense_reduce((F.formula,), tuple(v.cat for v in F.variables),
                          [v.array for v in F.variables], reduction="Sum", reduction_params=(),
                          axis=axis, ni=F.ni or 1, nj=F.nj or 1)
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.smooth],
                         ids=[c.name for c in CASES if c.smooth])
def test_op_first_derivatives(rng, case):
    """jax.grad of a Sum of the op (our jvp/transpose rules) against jax.grad of the dense jnp
    oracle (JAX differentiating the op table's references), float64."""
    cats, arrays, u, v = _inputs(rng, case, np.float64, m=37, n=53)

    def loss(reduce):
        def f(*arrays):
            F = _formula(case, cats, arrays, u, v)
            return sum(jnp.sum(jnp.sin(reduce(F, axis))) for axis in (0, 1))
        return f

    argnums = tuple(range(len(arrays)))
    g = jax.grad(loss(lambda F, axis: F.sum(axis)), argnums=argnums)(*arrays)
    g_ref = jax.grad(loss(_dense_sum), argnums=argnums)(*arrays)
    for k, (a, b) in enumerate(zip(g, g_ref)):
        scale = np.abs(b).max() + 1e-30
        err = np.abs(np.asarray(a) - np.asarray(b)).max() / scale
        assert err <= 1e-9, f"argument {k} ({cats[k]}): relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(rng, dtype):
    x = rng.uniform(-1, 1, (M, 3)).astype(dtype)
    y = rng.uniform(-1, 1, (N, 3)).astype(dtype)
    b = rng.uniform(0.5, 1.5, (N, 2)).astype(dtype)
    F = (-Vi(x).sqdist(Vj(y))).exp() * Vj(b)
    out = F.sum(1)
    assert out.dtype == dtype and out.shape == (M, 2)
    (ref,) = dense(F, "Sum", 1)  # the same half inputs, widened to float64
    # Only the final rounding to the half dtype: 2^-8 (bfloat16) / 2^-11 (float16) relative.
    rtol = 2.0**-8 if dtype == jnp.bfloat16 else 2.0**-11
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=rtol)
    grads = jax.grad(
        lambda x: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1).astype(jnp.float32).sum()
    )(x)
    assert grads.dtype == dtype and grads.shape == x.shape


def test_mixed_dtypes_raise_naming_both():
    F = Vi(np.ones((5, 3), np.float16)) + Vj(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"float16.*float32"):
        F.sum(1)


def test_every_op_is_tested_and_tables_agree():
    assert dict(_native.cpu.opcode_table()) == opcode_table()
    seen = set()

    def collect(node):
        from jaxkeops.formula import walk, Op
        seen.update(n.name for n in walk([node]) if isinstance(n, Op))

    rng = np.random.default_rng(0)
    for case in CASES:
        cats, arrays, u, v = _inputs(rng, case, np.float64)
        collect(_formula(case, cats, arrays, u, v).formula)
    # ExtractT only appears in derivatives (the transpose of Extract), tested by the grads.
    assert set(OPS) - seen == {"ExtractT"}


def test_tensordot_follows_keops_convention(rng):
    """As KeOps' own test: tensordot over (contfa, contfb), then the kept axes transposed by
    the inverse of perm."""
    a = rng.normal(size=(7, 2 * 3 * 4))
    b = rng.normal(size=(9, 4 * 3 * 5))
    F = Vi(a).keops_tensordot(Vj(b), (2, 3, 4), (4, 3, 5), (2, 1), (0, 1), (1, 0))
    out = np.asarray(F.sum(1))
    ref = np.einsum("iabc,jcbd->ida", a.reshape(7, 2, 3, 4), b.reshape(9, 4, 3, 5))
    np.testing.assert_allclose(out, ref.reshape(7, 10), rtol=1e-10, atol=1e-10)
    K = Vi(a[:, :4]).keops_kron(Vj(b[:, :6]), (2, 2), (2, 3)).sum(1)
    ref = sum(np.kron(a[:, :4].reshape(7, 2, 2)[:, None], b[:, :6].reshape(9, 2, 3)[None])
              .reshape(7, 9, 24).transpose(1, 0, 2))
    np.testing.assert_allclose(K, ref, rtol=1e-10, atol=1e-10)
