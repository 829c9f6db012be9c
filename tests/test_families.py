"""The family matcher (jaxkeops/families.py), `jaxkeops.explain` and the fused lowering.

Every case of issue 14's list (the reductions of docs/tutorial.py, radial kernel sums and their
gradients, Sinkhorn, attention, K-nearest distances) must name a fused kernel on "cuda", lower to
the `jaxkeops_fused` custom call there, and, run end to end through the fused kernels' host
emulation (`emulate_fused_on_cpu`), match the dense float64 oracle. The emulation tests need the
CPU module's `jaxkeops_fused` target and are skipped without it.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fused_contract import fused_call
from oracle import assert_close

import jaxkeops
from jaxkeops import LazyTensor, Pm, Vi, Vj, _native
from jaxkeops.families import (FUSED_TARGET, _substitute_fused_call, emulate_fused_on_cpu,
                               match_fused)
from jaxkeops.formula import CAT_I, CAT_J, CAT_P, Var
from jaxkeops.ops import apply_op

HAS_EMULATION = FUSED_TARGET in _native.cpu.registrations()
needs_emulation = pytest.mark.skipif(
    not HAS_EMULATION, reason=f"the CPU module has no {FUSED_TARGET!r} target (branch fused)")
# End to end on the CPU through the fused path: "native" is the CPU module's host emulation of
# the kernels; "contract" a jnp transcription of docs/fused-kernels.md (tests/fused_contract.py)
# in place of the FFI call, which checks the plans (operands, attributes, post-processing).
BACKENDS = [pytest.param("native", marks=needs_emulation), "contract"]


def _fused(backend):
    return emulate_fused_on_cpu() if backend == "native" else _substitute_fused_call(fused_call)
needs_cuda_module = pytest.mark.skipif(not _native.has_cuda(),
                                       reason="jaxkeops._jaxkeops_cuda was not built")


# ---------------------------------------------------------------- the cases
# Each case: keops(arrays, axis), dense(arrays, axis) (jnp on the materialised grid, float64)
# and the arrays gradients are taken for. x, b2, u are outer arrays (n_outer rows), y, b, v,
# mask inner ones: for axis=1 outer means i, for axis=0 it means j (the dense reference is the
# same for both axes).

def _V(axis, inner):
    """The LazyTensor builder of an inner (inner=True) or outer variable for `axis`."""
    return (Vj if axis == 1 else Vi) if inner else (Vi if axis == 1 else Vj)


def _sqdist(x, y):
    return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, -1)


KERNELS = {  # f(s, c) as LazyTensor and as jnp (s the squared distance, c a parameter)
    "gaussian": (lambda s, c: (-s * c).exp(), lambda s, c: jnp.exp(-s * c)),
    "laplace": (lambda s, c: (-(s.sqrt()) * c).exp(), lambda s, c: jnp.exp(-jnp.sqrt(s) * c)),
    "cauchy": (lambda s, c: 1 / (1 + s * c), lambda s, c: 1 / (1 + s * c)),
    "inverse_multiquadric": (lambda s, c: (1 + s * c).rsqrt(),
                             lambda s, c: 1 / jnp.sqrt(1 + s * c)),
    "matern32": (lambda s, c: (1 + math.sqrt(3) * s.sqrt() * c)
                 * (-math.sqrt(3) * s.sqrt() * c).exp(),
                 lambda s, c: (1 + math.sqrt(3) * jnp.sqrt(s) * c)
                 * jnp.exp(-math.sqrt(3) * jnp.sqrt(s) * c)),
    "matern52": (lambda s, c: (1 + math.sqrt(5) * s.sqrt() * c + 5 / 3 * s * c * c)
                 * (-math.sqrt(5) * s.sqrt() * c).exp(),
                 lambda s, c: (1 + math.sqrt(5) * jnp.sqrt(s) * c + 5 / 3 * s * c * c)
                 * jnp.exp(-math.sqrt(5) * jnp.sqrt(s) * c)),
}


def _kernel_case(name):
    f_lazy, f_dense = KERNELS[name]

    def keops(a, axis):
        x, y, b, c = a["x"], a["y"], a["b"], a["c"]
        s = _V(axis, False)(x).sqdist(_V(axis, True)(y))
        return (f_lazy(s, Pm(c)) * _V(axis, True)(b)).sum(axis)

    def dense(a, axis):
        return f_dense(_sqdist(a["x"], a["y"]), a["c"][0]) @ a["b"]

    return keops, dense, ("x", "y", "b")


def _sinkhorn(a, axis):
    x, y, u, v, eps = a["x"], a["y"], a["u"], a["v"], a["c"]
    O, I = _V(axis, False), _V(axis, True)
    return (O(u) + I(v) - O(x).sqdist(I(y)) / Pm(eps)).logsumexp(axis)


def _sinkhorn_dense(a, axis):
    t = a["u"] + a["v"][:, 0][None, :] - _sqdist(a["x"], a["y"]) / a["c"][0]
    return jax.nn.logsumexp(t, axis=1)[:, None]


def _attention(a, axis):
    q, k, v, c = a["x"], a["y"], a["b"], a["c"]
    O, I = _V(axis, False), _V(axis, True)
    return (Pm(c) * (O(q) | I(k))).sumsoftmaxweight(I(v), axis)


def _attention_dense(a, axis):
    return jax.nn.softmax(a["c"][0] * a["x"] @ a["y"].T, axis=1) @ a["b"]


def _sel(method, *args, vector=False):
    """A selection reduction of S = ‖x - y‖² (or of V = x - y when vector)."""

    def keops(a, axis):
        O, I = _V(axis, False), _V(axis, True)
        F = (O(a["x"]) - I(a["y"])) if vector else O(a["x"]).sqdist(I(a["y"]))
        out = getattr(F, method)(*args, axis=axis)
        return out

    def dense(a, axis):
        F = (a["x"][:, None, :] - a["y"][None, :, :]) if vector else _sqdist(a["x"], a["y"])[..., None]
        values = np.asarray(F, np.float64)  # (outer, inner, d)
        if method in ("min", "argmin", "min_argmin"):  # arg ones: checked through the values
            return values.min(1)
        if method in ("max", "argmax", "max_argmax"):
            return values.max(1)
        best = np.take_along_axis(values, np.argsort(values, axis=1, kind="stable")[:, :args[0]],
                                  axis=1)
        return best if values.shape[2] > 1 else best[..., 0]  # KeOps: (K,) for a scalar

    return keops, dense, ()


def _tutorial_sum_S(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    return ((O(a["x"]) - I(a["y"])) ** 2).sum(-1).sum(axis)


def _tutorial_sum_V(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    return (O(a["x"]) - I(a["y"])).sum(axis)


def _gaussian_product(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    return ((-O(a["x"]).sqdist(I(a["y"]))).exp() * I(a["b"])).sum(axis)


def _lse_plain(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    return ((O(a["x"]) - I(a["y"])) ** 2).sum(-1).logsumexp(axis)


def _lse_weighted(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    V = O(a["x"]) - I(a["y"])
    return (-(V ** 2).sum(-1)).logsumexp(axis, weight=V.exp())


def _lse_weighted_dense(a, axis):
    V = a["x"][:, None, :] - a["y"][None, :, :]
    S = -jnp.sum(V ** 2, -1)
    return jax.nn.logsumexp(S[..., None], axis=1, b=jnp.exp(V))


def _lse_masked(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    S = ((O(a["x"]) - I(a["y"])) ** 2).sum(-1)
    return (-S + I(a["mask"]).log()).logsumexp(axis)


def _lse_masked_dense(a, axis):
    S = _sqdist(a["x"], a["y"])
    return jax.nn.logsumexp(-S + jnp.log(a["mask"][:, 0])[None, :], axis=1)[:, None]


def _ssmw_V(a, axis):
    O, I = _V(axis, False), _V(axis, True)
    V = O(a["x"]) - I(a["y"])
    return (V ** 2).sum(-1).sumsoftmaxweight(V, axis)


def _ssmw_V_dense(a, axis):
    V = a["x"][:, None, :] - a["y"][None, :, :]
    return jnp.sum(jax.nn.softmax(jnp.sum(V ** 2, -1), axis=1)[..., None] * V, axis=1)


def _matvec(a, axis):
    """K @ v as the solve runs it (K_ij = exp(-‖x_i - x'_j‖²), a Sum over j) and K.T @ v."""
    x_i = LazyTensor(a["x"][:, None, :])
    x_j = LazyTensor(a["y"][None, :, :])
    K = (-((x_i - x_j) ** 2).sum(-1)).exp()
    return K @ a["b"] if axis == 1 else K.T @ a["b2"]


def _matvec_dense(a, axis):
    K = jnp.exp(-_sqdist(a["x"], a["y"]))
    return K @ a["b"] if axis == 1 else K.T @ a["b2"]


def _lse_dense(a, axis):
    return jax.nn.logsumexp(_sqdist(a["x"], a["y"]), axis=1)[:, None]


CASES = {
    # docs/tutorial.py
    "tutorial sum S": (_tutorial_sum_S, lambda a, ax: _sqdist(a["x"], a["y"]).sum(1)[:, None],
                       ("x", "y")),
    "tutorial sum V": (_tutorial_sum_V,
                       lambda a, ax: (a["x"][:, None, :] - a["y"][None, :, :]).sum(1),
                       ("x", "y")),
    "gaussian product": (_gaussian_product,
                         lambda a, ax: jnp.exp(-_sqdist(a["x"], a["y"])) @ a["b"],
                         ("x", "y", "b")),
    "logsumexp": (_lse_plain, _lse_dense, ("x", "y")),
    "logsumexp weight exp(V)": (_lse_weighted, _lse_weighted_dense, ("x", "y")),
    "logsumexp masked": (_lse_masked, _lse_masked_dense, ("x", "y")),
    "sumsoftmaxweight(S, V)": (_ssmw_V, _ssmw_V_dense, ("x", "y")),
    "matvec K @ v / K.T @ a": (_matvec, _matvec_dense, ("x", "y")),
    "min S": _sel("min"), "argmin S": _sel("argmin"), "min_argmin S": _sel("min_argmin"),
    "max V": _sel("max", vector=True), "argmax V": _sel("argmax", vector=True),
    "max_argmax V": _sel("max_argmax", vector=True),
    "Kmin S": _sel("Kmin", 4), "argKmin S": _sel("argKmin", 4),
    "Kmin_argKmin S": _sel("Kmin_argKmin", 4),
    "Kmin V": _sel("Kmin", 3, vector=True), "argKmin V": _sel("argKmin", 3, vector=True),
    "Kmin_argKmin V": _sel("Kmin_argKmin", 3, vector=True),
    # kernel sums (with b_j weights) and their gradients
    **{f"{name} sum": _kernel_case(name) for name in KERNELS},
    "sinkhorn": (_sinkhorn, _sinkhorn_dense, ("x", "y", "u", "v")),
    "attention": (_attention, _attention_dense, ("x", "y", "b")),
}

SELECTIONS = {name for name in CASES if name.split()[0].lower().startswith(("min", "max", "kmin",
                                                                             "argkmin", "argmin",
                                                                             "argmax"))}
DIFFERENTIABLE = {name: CASES[name][2] for name in CASES if name not in SELECTIONS and CASES[name][2]}


def _arrays(rng, n_outer=7, n_inner=13, D=3, E=2, dtype=np.float64):
    r = lambda *s: rng.normal(size=s).astype(dtype)  # noqa: E731
    mask = (rng.uniform(size=(n_inner, 1)) < 0.7).astype(dtype)
    mask[0] = 1
    return {
        "x": r(n_outer, D) * 0.7, "y": r(n_inner, D) * 0.7, "b": r(n_inner, E),
        "b2": r(n_outer, E), "u": r(n_outer, 1), "v": r(n_inner, 1),
        "c": rng.uniform(0.5, 1.5, size=(1,)).astype(dtype), "mask": mask,
    }


def _as_jax(a):
    return {k: jnp.asarray(v) for k, v in a.items()}


def _forward(name, axis):
    keops = CASES[name][0]
    return lambda a: keops(a, axis)


def _loss(name, axis, wrt, cotangent):
    keops = CASES[name][0]

    def loss(p, a):
        out = keops({**a, **p}, axis)
        out = out[0] if isinstance(out, tuple) else out
        return jnp.sum(out * cotangent)

    return lambda a: jax.grad(loss)({wrt: a[wrt]}, a)


# ---------------------------------------------------------------- explain

def _kernels(fn, *args, platform="cuda"):
    return [r.kernel for r in jaxkeops.explain(fn, *args, platform=platform)]


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_explain_names_a_fused_kernel_for_every_case(rng, name, axis):
    a = _as_jax(_arrays(rng))
    records = jaxkeops.explain(_forward(name, axis), a, platform="cuda")
    assert records, "no reduction found"
    for r in records:
        assert r.kernel != "interpreter", f"{r.reduction}: {r.formulas}"
        assert r.kernel.startswith("fused")
    # on the CPU the interpreter runs them (no emulation)
    assert set(_kernels(_forward(name, axis), a, platform="cpu")) == {"interpreter"}


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("name,wrt", [(n, w) for n, ws in sorted(DIFFERENTIABLE.items())
                                      for w in ws])
def test_explain_names_a_fused_kernel_for_every_gradient_reduction(rng, name, wrt, axis):
    a = _as_jax(_arrays(rng))
    out = jax.eval_shape(_forward(name, axis), a)
    cotangent = jnp.ones(out.shape, out.dtype)
    records = jaxkeops.explain(_loss(name, axis, wrt, cotangent), a, platform="cuda")
    assert len(records) >= 2  # the forward pass and at least one made by differentiation
    for r in records:
        assert r.kernel != "interpreter", f"{r.reduction}: {r.formulas}"


def test_explain_outside_the_families_says_interpreter(rng):
    x, y = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(8, 3)))
    l1 = lambda x, y: (Vi(x) - Vj(y)).abs().sum(-1)  # noqa: E731
    outside = {
        # two different distances of the same points: one score per kernel
        "l1 and sqdist": lambda x, y: ((Vi(x) | Vj(y)).sin() * l1(x, y)
                                       * Vi(x).sqdist(Vj(y))).sum(1),
        # an elementwise vector function of a pair
        "sin(x_i * y_j)": lambda x, y: (Vi(x) * Vj(y)).sin().sum(1),
        # a vector pair weight of a logsumexp that no exp(o_i + w_j) factorises
        "logsumexp, weight (x_i y_j)²": lambda x, y: (-Vi(x).sqdist(Vj(y))).logsumexp(
            1, weight=(Vi(x) * Vj(y)).square()),
    }
    for name, fn in outside.items():
        records = jaxkeops.explain(fn, x, y, platform="cuda")
        assert [r.kernel for r in records] == ["interpreter"], name
        assert (records[0].n_outer, records[0].n_inner) == (6, 8)
    # Σ_j atan(⟨x_i, y_j⟩)·‖x_i - y_j‖₁ is in a family: the l1 score, a = ⟨x_i, y_j⟩, a program
    (r,) = jaxkeops.explain(lambda x, y: ((Vi(x) | Vj(y)).atan() * l1(x, y)).sum(1), x, y,
                            platform="cuda")
    assert r.kernel == "fused Sum: program(l1, a)"
    # ... but not with sin, cos or sinc, whose CUDA math needs a stack frame: the interpreter
    for op in ("sin", "cos", "sinxdivx"):
        (r,) = jaxkeops.explain(
            lambda x, y: (getattr(Vi(x) | Vj(y), op)() * l1(x, y)).sum(1), x, y, platform="cuda")
        assert r.kernel == "interpreter", op


def test_explain_records_sizes_batch_dtype_and_prints_a_table(rng):
    x = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(9, 3)), jnp.float32)
    fn = jax.vmap(lambda x: Vi(x).sqdist(Vj(y)).argKmin(2, axis=1))
    (r,) = jaxkeops.explain(fn, x, platform="cuda")
    assert (r.reduction, r.axis, r.n_outer, r.n_inner, r.batch, r.dtype) == (
        "ArgKMin(K=2)", 1, 6, 9, (4,), "float32")
    text = str(jaxkeops.explain(fn, x, platform="cuda"))
    assert "ArgKMin(K=2)" in text and r.kernel in text and "6 × 9" in text
    assert str(jaxkeops.explain(lambda x: x + 1, x)).endswith("(no jaxkeops reduction)")
    with pytest.raises(ValueError, match="platform"):
        jaxkeops.explain(fn, x, platform="tpu")


def test_explain_walks_solves_and_loops(rng):
    x = jnp.asarray(rng.normal(size=(20, 3)))
    b = jnp.asarray(rng.normal(size=(20, 2)))

    def solve(x, b):
        x_i, x_j = LazyTensor(x[:, None, :]), LazyTensor(x[None, :, :])
        return (-((x_i - x_j) ** 2).sum(-1)).exp().solve(b, alpha=0.1)

    records = jaxkeops.explain(solve, x, b, platform="cuda")
    assert records and all(r.kernel.startswith("fused Sum") for r in records)

    def scanned(x):
        body = lambda c, _: (c + Vi(x).sqdist(Vj(x)).min(1), None)  # noqa: E731
        return jax.lax.scan(body, jnp.zeros((20, 1)), None, length=3)[0]

    assert _kernels(scanned, x) != [] and all(k != "interpreter" for k in _kernels(scanned, x))


def test_explain_on_the_cpu_with_emulation(rng):
    if not HAS_EMULATION:
        pytest.skip("no host emulation target")
    a = _as_jax(_arrays(rng))
    with emulate_fused_on_cpu():
        kernels = _kernels(_forward("gaussian product", 1), a, platform="cpu")
    assert kernels[0].startswith("fused")


# ---------------------------------------------------------------- the matcher itself

def test_matcher_attributes_of_the_main_families():
    x, y, b = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 2, CAT_J)
    s = apply_op("SqDist", (x, y))
    gaussian = apply_op("Mult", (apply_op("Exp", (apply_op("Minus", (s,)),)), b))
    plan = match_fused((gaussian,), (CAT_I, CAT_J, CAT_J), "Sum", (), 1)
    assert (plan.score, plan.phi, plan.factor, plan.value_dim) == (1, 1, 1, 2)
    # reducing over i: b (a j variable) is outer, pulled out of the sum and applied after
    over_i = match_fused((gaussian,), (CAT_I, CAT_J, CAT_J), "Sum", (), 0)
    assert (over_i.factor, over_i.post_mult, over_i.X, over_i.Y) == (0, b, y, x)
    lse = match_fused((apply_op("Minus", (s,)),), (CAT_I, CAT_J), "LogSumExp", (), 1)
    assert (lse.score, lse.phi, lse.factor) == (1, 0, 0)
    knn = match_fused((s,), (CAT_I, CAT_J), "ArgKMin", (10,), 1)
    assert (knn.score, knn.phi, knn.k) == (1, 0, 10)
    diff = match_fused((apply_op("Subtract", (y, x)),), (CAT_I, CAT_J), "Min", (), 0)
    assert (diff.score, diff.phi, diff.factor, diff.negate_xy) == (0, 3, 2, False)
    diff1 = match_fused((apply_op("Subtract", (y, x)),), (CAT_I, CAT_J), "Min", (), 1)
    assert diff1.negate_xy  # y_j - x_i = (-x_i) - (-y_j)


def test_matcher_program_for_a_laplace_kernel():
    x, y, b, c = Var(0, 3, CAT_I), Var(1, 3, CAT_J), Var(2, 1, CAT_J), Var(3, 1, CAT_P)
    s = apply_op("SqDist", (x, y))
    laplace = apply_op("Mult", (apply_op("Exp", (apply_op("Mult", (c, apply_op("Sqrt", (s,)))),)),
                                b))
    plan = match_fused((laplace,), (CAT_I, CAT_J, CAT_J, CAT_P), "Sum", (), 1)
    assert plan.phi == 2 and len(plan.program) % 4 == 0 and 0 < len(plan.program) // 4 <= 32
    assert plan.program[1::4][-1] == 0  # φ ends in slot 0


# ---------------------------------------------------------------- CUDA lowering

def _lowered_cuda(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@needs_cuda_module
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_lowering_calls_the_fused_kernels(rng, name, axis):
    a = _as_jax(_arrays(rng))
    text = _lowered_cuda(_forward(name, axis), a)
    assert f"stablehlo.custom_call @{FUSED_TARGET}(" in text
    assert "@jaxkeops_reduce(" not in text


@needs_cuda_module
@pytest.mark.parametrize("name,wrt", [(n, w) for n, ws in sorted(DIFFERENTIABLE.items())
                                      for w in ws])
def test_cuda_lowering_of_gradients_calls_only_fused_kernels(rng, name, wrt):
    a = _as_jax(_arrays(rng))
    out = jax.eval_shape(_forward(name, 1), a)
    text = _lowered_cuda(_loss(name, 1, wrt, jnp.ones(out.shape, out.dtype)), a)
    assert text.count(f"stablehlo.custom_call @{FUSED_TARGET}(") >= 1  # (an unused forward pass is dropped)
    assert "@jaxkeops_reduce(" not in text


# ---------------------------------------------------------------- end to end, host emulation

def _check(out, ref, dtype):
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(outs, refs):
        assert_close(o, r, dtype, rtol32=2e-4, rtol64=1e-9)


def _selection_check(name, out, a64, axis):
    """Selections: values against the dense values; indices through the values they select."""
    keops, dense, _ = CASES[name]
    ref = np.asarray(dense(a64, axis), np.float64)
    vector = name.endswith("V")
    vals = np.asarray((a64["x"][:, None, :] - a64["y"][None, :, :]) if vector
                      else _sqdist(a64["x"], a64["y"])[..., None], np.float64)
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        o = np.asarray(o)
        if np.issubdtype(o.dtype, np.integer):
            idx = o.reshape(o.shape[0], -1, vals.shape[2])
            picked = np.take_along_axis(vals, idx, axis=1).reshape(o.shape)
            np.testing.assert_allclose(picked, ref, rtol=2e-5, atol=1e-5)
        else:
            np.testing.assert_allclose(o, ref, rtol=2e-5, atol=1e-5)


def _with_backends(combos, contract_combos):
    """Every combo on the native emulation; the (slower to run, since it materialises the
    grid) jnp transcription of the contract on a few."""
    native = [pytest.param("native", *c, marks=needs_emulation) for c in combos]
    return native + [("contract", *c) for c in contract_combos]


@pytest.mark.parametrize("backend,D,dtype", _with_backends(
    [(1, np.float32), (3, np.float64), (8, np.float64), (17, np.float32)],
    [(1, np.float32), (3, np.float64)]))
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_emulated_fused_forward_matches_the_oracle(rng, name, axis, D, dtype, backend):
    sizes = {1: (1, 33), 3: (37, 129), 8: (65, 1), 17: (130, 70)}[D]
    a = _arrays(rng, *sizes, D=D, dtype=dtype)
    if name.startswith(("Kmin", "argKmin")) and sizes[1] < 4:
        a = _arrays(rng, sizes[0], 9, D=D, dtype=dtype)
    a64 = _as_jax({k: v.astype(np.float64) for k, v in a.items()})
    with _fused(backend):
        kernels = _kernels(_forward(name, axis), _as_jax(a), platform="cpu")
        assert all(k != "interpreter" for k in kernels)
        out = jax.jit(_forward(name, axis))(_as_jax(a))
    if name in SELECTIONS:
        _selection_check(name, out, a64, axis)
    else:
        _check(out, CASES[name][1](a64, axis), dtype)


# Both axes and both dtypes run on the emulation, the contract on one axis: three runs per
# gradient rather than six (this file is the suite's slowest; CI's time budget is tight).
@pytest.mark.parametrize("backend,axis,dtype", _with_backends(
    [(0, np.float32), (1, np.float64)], [(1, np.float64)]))
@pytest.mark.parametrize("name,wrt", [(n, w) for n, ws in sorted(DIFFERENTIABLE.items())
                                      for w in ws])
def test_emulated_fused_gradients_match_the_oracle(rng, name, wrt, backend, axis, dtype):
    a = _arrays(rng, 45, 67, D=3, dtype=dtype)
    a64 = _as_jax({k: v.astype(np.float64) for k, v in a.items()})
    out = jax.eval_shape(_forward(name, axis), _as_jax(a))
    cot = rng.normal(size=out.shape)
    dense = CASES[name][1]

    def dense_loss(p, a):
        return jnp.sum(dense({**a, **p}, axis) * cot)

    ref = jax.grad(dense_loss)({wrt: a64[wrt]}, a64)[wrt]
    with _fused(backend):
        grad = jax.jit(_loss(name, axis, wrt, jnp.asarray(cot, dtype)))(_as_jax(a))[wrt]
    _check(grad, ref, dtype)


# The φ-program families (their φ is a program, not affine) forward and differentiated with
# respect to x, y and b: on the hot φ-program body (src/fused/phi_rows.h, D ≤ 4) and on the
# generic body, both against the dense oracle. (D, dtype, n_outer, n_inner) cycle over the
# table; D = 6 is past the hot body (generic both times).
PHI_FAMILIES = ["laplace", "cauchy", "inverse_multiquadric", "matern32", "matern52"]
PHI_SHAPES = [(1, np.float32, 1, 131), (3, np.float64, 130, 1), (4, np.float32, 67, 45),
              (3, np.float32, 257, 33), (6, np.float64, 20, 30)]
PHI_CASES = [(name, wrt) + PHI_SHAPES[k % len(PHI_SHAPES)]
             for k, (name, wrt) in enumerate(itertools.product(PHI_FAMILIES, [None, "x", "y", "b"]))]


@needs_emulation
@pytest.mark.parametrize("name,wrt,D,dtype,n_outer,n_inner", PHI_CASES)
def test_phi_program_families_hot_and_generic_match_the_oracle(rng, name, wrt, D, dtype, n_outer,
                                                               n_inner):
    case = f"{name} sum"
    a = _arrays(rng, n_outer, n_inner, D=D, dtype=dtype)
    a64 = _as_jax({k: v.astype(np.float64) for k, v in a.items()})
    dense = CASES[case][1]
    if wrt is None:
        fn, ref = _forward(case, 1), dense(a64, 1)
    else:
        cot = rng.normal(size=(n_outer, a["b"].shape[1]))
        fn = _loss(case, 1, wrt, jnp.asarray(cot, dtype))
        ref = jax.grad(lambda p, a: jnp.sum(dense({**a, **p}, 1) * cot))({wrt: a64[wrt]}, a64)[wrt]
    with emulate_fused_on_cpu():
        compiled = jax.jit(fn)  # one compilation; the body is chosen when the call runs
        for hot in (True, False):
            previous = _native.cpu.set_fused_emulation_hot(hot)
            try:
                before = _native.cpu.fused_emulation_hot_phi_launches()
                out = jax.block_until_ready(compiled(_as_jax(a)))
                launches = _native.cpu.fused_emulation_hot_phi_launches() - before
            finally:
                _native.cpu.set_fused_emulation_hot(previous)
            assert (launches > 0) == (hot and D <= 4), (hot, launches)
            _check(out[wrt] if wrt else out, ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["gaussian product", "sinkhorn", "attention", "Kmin_argKmin S",
                                  "laplace sum"])
def test_emulated_fused_under_vmap_and_batch_dims(rng, name, backend):
    batched = [_arrays(rng, 11, 19) for _ in range(3)]
    stacked = {k: jnp.stack([jnp.asarray(b[k]) for b in batched]) for k in batched[0]}
    stacked["y"] = jnp.asarray(batched[0]["y"])  # broadcast (not mapped)
    in_axes = ({k: (None if k == "y" else 0) for k in stacked},)
    with _fused(backend):
        out = jax.jit(jax.vmap(_forward(name, 1), in_axes=in_axes))(stacked)
    for n, b in enumerate(batched):
        b = _as_jax({**b, "y": batched[0]["y"]})
        got = jax.tree.map(lambda o: o[n], out)
        if name in SELECTIONS:
            _selection_check(name, got, b, 1)
        else:
            _check(got, CASES[name][1](b, 1), np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_emulated_fused_with_keops_batch_dims(rng, backend):
    """LazyTensors on (B, M, 1, D) and (1, N, D) arrays: batch dims broadcast, never copied."""
    x = rng.normal(size=(2, 3, 9, 1, 3))
    y = rng.normal(size=(1, 3, 1, 14, 3))
    b = rng.normal(size=(2, 1, 1, 14, 2))

    def fn(x, y, b):
        K = (-LazyTensor(x).sqdist(LazyTensor(y))).exp()
        return (K * LazyTensor(b)).sum(3), LazyTensor(x).sqdist(LazyTensor(y)).argKmin(3, axis=3)

    with _fused(backend):
        assert all(k != "interpreter" for k in _kernels(fn, x, y, b, platform="cpu"))
        out, idx = jax.jit(fn)(x, y, b)
    S = ((x - y) ** 2).sum(-1)  # (2, 3, 9, 14)
    ref = np.einsum("bcij,bcje->bcie", np.exp(-S), np.broadcast_to(b[:, :, 0], (2, 3, 14, 2)))
    _check(out, ref, np.float64)
    picked = np.take_along_axis(S, np.asarray(idx), axis=-1)
    np.testing.assert_allclose(picked, np.sort(S, -1)[..., :3], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_weighted_squared_distance_score(rng, axis, backend):
    """Σ_d w_d (x_d - y_d)² with a parameter w: score 4, the weights first in C."""
    a = _as_jax(_arrays(rng, 23, 41, D=3))
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=(3,)))

    def fn(a):
        O, I = _V(axis, False), _V(axis, True)
        s = O(a["x"]).weightedsqdist(I(a["y"]), Pm(w))
        return ((-s * Pm(a["c"])).exp() * I(a["b"])).sum(axis), s.argKmin(3, axis=axis)

    (sum_record, knn_record) = jaxkeops.explain(fn, a, platform="cuda")
    assert sum_record.kernel == "fused Sum: exp_affine(weighted sqdist) · Z_j"
    assert knn_record.kernel == "fused ArgKMin(K=3): affine(weighted sqdist)"
    with _fused(backend):
        out, idx = jax.jit(fn)(a)
    S = jnp.sum(w * (a["x"][:, None, :] - a["y"][None, :, :]) ** 2, -1)
    _check(out, jnp.exp(-S * a["c"][0]) @ a["b"], np.float64)
    picked = np.take_along_axis(np.asarray(S), np.asarray(idx), axis=1)
    np.testing.assert_allclose(picked, np.sort(np.asarray(S), 1)[:, :3], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_selections_of_l1_and_dot_scores(rng, axis, backend):
    """K-min of Σ_d |x_d - y_d| and max / argmax of ⟨x, y⟩ (issue 14's selection scores)."""
    a = _as_jax(_arrays(rng, 17, 29, D=3))

    def fn(a):
        O, I = _V(axis, False), _V(axis, True)
        l1 = (O(a["x"]) - I(a["y"])).abs().sum(-1)
        dot = O(a["x"]) | I(a["y"])
        return l1.Kmin_argKmin(4, axis=axis) + dot.max_argmax(axis=axis)

    kernels = _kernels(fn, a)
    assert kernels == ["fused KMin_ArgKMin(K=4): affine(l1)", "fused Max_ArgMax: affine(dot)"]
    with _fused(backend):
        kmin, _, dmax, dargmax = jax.jit(fn)(a)
    L1 = np.abs(np.asarray(a["x"])[:, None, :] - np.asarray(a["y"])[None, :, :]).sum(-1)
    dots = np.asarray(a["x"]) @ np.asarray(a["y"]).T
    np.testing.assert_allclose(kmin, np.sort(L1, 1)[:, :4], rtol=1e-12)
    np.testing.assert_allclose(dmax[:, 0], dots.max(1), rtol=1e-12)
    np.testing.assert_array_equal(dargmax[:, 0], dots.argmax(1))
