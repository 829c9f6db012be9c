"""KeOps 2.3's own test suite (getkeops/keops at tag v2.3, pykeops/pykeops/test/*.py),
re-expressed for jaxkeops: every case, with jax/NumPy instead of torch, each against a dense
reference (the M×N matrix materialised by jnp / NumPy, float64 unless the case is about float32
or float16). Written for jaxkeops, not copied: the formulas, shapes and reductions of each KeOps
case, with fresh random inputs, smaller sizes where KeOps' would only slow the dense reference
(the sizes' role, e.g. a large D, is kept), and tolerances of the precision used.

Each test is named `test_<KeOps file>__<KeOps test>`; `KEOPS_CASES` lists the 78 KeOps cases
(75 collected by pytest, plus the 3 of conv2d.py, a file pytest does not collect; KeOps'
test_complex_bw is commented out there) and
`SKIPPED` those not run here, with the reason. `test_every_keops_case_is_covered` checks
that each case is a test here or a skip.

torch → jax: `torch.autograd.grad(out, x, e)` is `jax.vjp`, `create_graph=True` needs nothing
(every derivative is differentiable), `torch.func.*` is `jax.*`, `.squeeze()` / `.cpu()` are
array methods or nothing.
"""

import math
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SEED
from jaxkeops import Genred, KernelSolve, LazyTensor, Pm, Vi, Vj

KEOPS_CASES = (
    "conv2d.py::test_conv2d_fw", "conv2d.py::test_conv2d_bw1", "conv2d.py::test_conv2d_bw2",
    "test_block_sparse_reduction.py::test_block_sparse_reduction",
    "test_chunks.py::test_chunks",
    "test_chunks_ranges.py::test_chunk_ranges",
    "test_complex.py::test_complex_fw",
    "test_complex_numpy.py::test_complex_numpy",
    "test_contiguous_numpy.py::test_contiguous_numpy",
    "test_contiguous_torch.py::test_contiguous_torch",
    "test_finalchunks.py::test_finalchunk",
    "test_finalchunks_ranges.py::test_finalchunks_ranges",
    "test_float16.py::test_float16_fw", "test_float16.py::test_float16_bw",
    "test_gpu_cpu.py::test_torch_keops_cpu", "test_gpu_cpu.py::test_torch_keops_gpu",
    "test_kron.py::test_kron_lazytensor_np", "test_kron.py::test_kron_lazytensor_torch",
    "test_kron.py::test_kron_genred", "test_kron.py::test_kron_genred2",
    "test_lazytensor_clamp.py::test_lazytensor_clamp_fw",
    "test_lazytensor_clamp.py::test_lazytensor_clamp_bw",
    "test_lazytensor_gaussian_batch.py::test_lazytensor_gaussian_batch_fw",
    "test_lazytensor_gaussian_batch.py::test_lazytensor_gaussian_batch_bw",
    "test_lazytensor_gaussian_cpu.py::test_lazytensor_gaussian_cpu",
    "test_lazytensor_gaussian_cpu.py::test_lazytensor_gaussian_cpu_bw1",
    "test_lazytensor_gaussian_cpu.py::test_lazytensor_gaussian_cpu_bw2",
    "test_lazytensor_gaussian_fromhost.py::test_lazytensor_gaussian_fromhost",
    "test_lazytensor_gaussian_inplace.py::test_lazytensor_gaussian_inplace",
    "test_lazytensor_gaussian_numpy_inplace.py::test_lazytensor_gaussian_numpy_inplace",
    "test_lazytensor_grad.py::test_lazytensor_grad",
    "test_lazytensor_grad.py::test_lazytensor_grad_bw1",
    "test_lazytensor_grad.py::test_lazytensor_grad_bw2",
    "test_lazytensor_tensordot.py::test_tensordot",
    "test_numpy.py::test_generic_syntax_sum", "test_numpy.py::test_generic_syntax_lse",
    "test_numpy.py::test_generic_syntax_softmax", "test_numpy.py::test_non_contiguity",
    "test_numpy.py::test_heterogeneous_var_aliases", "test_numpy.py::test_formula_simplification",
    "test_numpy.py::test_argkmin", "test_numpy.py::test_LazyTensor_sum",
    "test_sinc.py::test_sinc", "test_sinc.py::test_sinc_grad",
    "test_torch.py::test_generic_syntax_float", "test_torch.py::test_generic_syntax_double",
    "test_torch.py::test_generic_syntax_softmax", "test_torch.py::test_generic_syntax_simple",
    "test_torch.py::test_logSumExp_kernels_feature",
    "test_torch.py::test_logSumExp_gradient_kernels_feature",
    "test_torch.py::test_non_contiguity", "test_torch.py::test_heterogeneous_var_aliases",
    "test_torch.py::test_invkernel", "test_torch.py::test_softmax", "test_torch.py::test_pickle",
    "test_torch.py::test_LazyTensor_sum", "test_torch.py::test_LazyTensor_logsumexp",
    "test_torch.py::test_LazyTensor_min_chunked", "test_torch.py::test_LazyTensor_min",
    "test_torch.py::test_TensorDot_with_permute",
    *(f"{f}::test_torch_func_{k}" for f in ("test_torch_func.py", "test_torch_func_logsumexp.py")
      for k in ("vmap", "grad", "vjp", "jvp", "jacrev", "jacfwd", "hessian")),
    "test_transpose.py::test_transpose",
    "test_vmap.py::test_vmap_0", "test_vmap.py::test_vmap_1", "test_vmap.py::test_vmap_2",
)

# KeOps cases not run here, and why.
SKIPPED = {
    "test_gpu_cpu.py::test_torch_keops_gpu":
        "needs a CUDA device (KeOps skips it without one too); the CPU case of the same file "
        "runs here",
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_skipped_keops_case(case):
    pytest.skip(SKIPPED[case])  # listed so that a run's summary shows them, with the reason


def _name(case: str) -> str:
    file, test = case.split("::")
    return f"test_{file.removesuffix('.py')}__{test}"


def test_every_keops_case_is_covered():
    assert len(KEOPS_CASES) == len(set(KEOPS_CASES)) == 78
    module = sys.modules[__name__]
    missing = [c for c in KEOPS_CASES if c not in SKIPPED and not hasattr(module, _name(c))]
    assert not missing, missing
    assert set(SKIPPED) <= set(KEOPS_CASES)


def _close32(ours, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(ours, np.float64), want, rtol=tol, atol=tol)


def _close64(ours, want, tol=1e-10):
    np.testing.assert_allclose(np.asarray(ours), want, rtol=tol, atol=tol)


def _sqdist(x, y):
    return np.sum((x[:, None, :] - y[None, :, :]) ** 2, -1)


def _lse(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


# --- test_numpy.py and the Genred cases of test_torch.py ----------------------------------------

ALIASES_INDEXED = ["p=Pm(0,1)", "a=Vj(1,1)", "x=Vi(2,3)", "y=Vj(3,3)"]  # test_numpy's
ALIASES_POSITIONAL = ["p=Pm(1)", "a=Vj(1)", "x=Vi(3)", "y=Vj(3)"]  # test_torch's
M, N, D = 10, 6, 3  # KeOps' sizes in these two files


@pytest.fixture
def genred_data(rng):
    return (rng.uniform(0.2, 0.6, size=1), rng.uniform(size=(N, 1)), rng.uniform(size=(M, D)),
            rng.uniform(size=(N, D)))


def _square_exp_sum(sigma, g, x, y):  # Σ_j (p - a_j)² exp(x_i + y_j)
    return np.sum((sigma - g[None, :, :]) ** 2 * np.exp(x[:, None, :] + y[None, :, :]), 1)


def _score(sigma, g, x, y):  # (p - a_j)² exp(-|x_i - y_j|²), (M, N)
    return (sigma - g.T) ** 2 * np.exp(-_sqdist(x, y))


def _softmax_weights(s, w):
    e = np.exp(s - s.max(1, keepdims=True))
    return e @ w / e.sum(1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_test_numpy__test_generic_syntax_sum(genred_data, dtype):
    op = Genred("Square(p-a)*Exp(x+y)", ALIASES_INDEXED, reduction_op="Sum", axis=1)
    out = op(*(a.astype(dtype) for a in genred_data), backend="auto")
    assert out.dtype == dtype and out.shape == (M, D)
    (_close32 if dtype == np.float32 else _close64)(out, _square_exp_sum(*genred_data))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_test_numpy__test_generic_syntax_lse(genred_data, dtype):
    op = Genred("Square(p-a)*Exp(-SqNorm2(x-y))", ALIASES_INDEXED, reduction_op="LogSumExp",
                axis=1)
    out = op(*(a.astype(dtype) for a in genred_data), backend="auto")
    assert out.shape == (M, 1)
    (_close32 if dtype == np.float32 else _close64)(out[:, 0], _lse(_score(*genred_data), 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_test_numpy__test_generic_syntax_softmax(genred_data, dtype):
    op = Genred("Square(p-a)*Exp(-SqNorm2(x-y))", ALIASES_INDEXED,
                reduction_op="SumSoftMaxWeight", axis=1, formula2="y")
    out = op(*(a.astype(dtype) for a in genred_data), backend="auto")
    want = _softmax_weights(_score(*genred_data), genred_data[3])
    (_close32 if dtype == np.float32 else _close64)(out, want)


def test_test_numpy__test_non_contiguity(genred_data):
    sigma, g, x, y = (a.astype(np.float32) for a in genred_data)
    op = Genred("Square(p-a)*Exp(-SqNorm2(y-x))", ALIASES_INDEXED, reduction_op="Sum", axis=1)
    y_strided = np.asfortranarray(y)
    assert not y_strided.flags.c_contiguous
    contiguous = op(sigma, g, x, y, backend="auto")
    np.testing.assert_array_equal(op(sigma, g, x, y_strided), contiguous)
    _close32(contiguous[:, 0], np.sum(_score(*genred_data), 1))


def test_test_numpy__test_heterogeneous_var_aliases(genred_data):
    sigma, g, x, y = genred_data
    op = Genred("Square(p-Var(3,1,1))*Exp(-SqNorm2(y-x))", ["p=Pm(0,1)", "x=Vi(1,3)", "y=Vj(2,3)"],
                reduction_op="Sum", axis=1)
    out = op(*(a.astype(np.float32) for a in (sigma, x, y, g)), backend="auto")
    _close32(out[:, 0], np.sum(_score(sigma, g, x, y), 1))


def test_test_numpy__test_formula_simplification(genred_data):
    _, _, x, y = genred_data
    op = Genred("Grad(Grad(x + Var(1,3,1), x, Var(2,3,0)),x, Var(3,3,0))", ["x=Vi(0,3)"],
                reduction_op="Sum", axis=1)
    out = op(x, y, x, x, backend="auto")
    np.testing.assert_array_equal(out, np.zeros_like(x))


def test_test_numpy__test_argkmin(genred_data):
    _, _, x, y = genred_data
    op = Genred("SqDist(x,y)", [f"x = Vi({D})", f"y = Vj({D})"], reduction_op="ArgKMin", axis=1,
                opt_arg=3)
    out = op(x, y, backend="auto")
    np.testing.assert_array_equal(out, np.argsort(_sqdist(x, y), axis=1, kind="stable")[:, :3])


def test_test_numpy__test_LazyTensor_sum(rng):
    A, B = 4, 6
    X, L = rng.uniform(size=(A, 1, M, D)), rng.uniform(size=(1, B, M, 1))
    Y, S = rng.uniform(size=(1, B, N, D)), rng.uniform(size=(A, B, 1)) + 1
    for dtype, close in ((np.float32, lambda o, w: _close32(o, w, 1e-4)), (np.float64, _close64)):
        x, l, y, s = (a.astype(dtype) for a in (X, L, Y, S))
        x_i, l_i = LazyTensor(x[:, :, :, None, :]), LazyTensor(l[:, :, :, None, :])
        y_j, s_p = LazyTensor(y[:, :, None, :, :]), LazyTensor(s[:, :, None, None, :])
        K = 1 / (1 + ((l_i + x_i * y_j) ** 2 + s_p).sum(-1)).exp()
        out = K.sum(3).squeeze(-1)
        d = (((L[:, :, :, None] + X[:, :, :, None] * Y[:, :, None]) ** 2)
             + S[:, :, None, None]).sum(-1)
        want = (1 / np.exp(1 + d)).sum(3)
        assert out.shape == want.shape == (A, B, M) and out.dtype == dtype
        close(out, want)


def test_test_torch__test_generic_syntax_float(genred_data):
    out = Genred("Square(p-a)*Exp(x+y)", ALIASES_POSITIONAL, axis=1)(
        *(a.astype(np.float32) for a in genred_data), backend="auto")
    _close32(out, _square_exp_sum(*genred_data))


def test_test_torch__test_generic_syntax_double(genred_data):
    out = Genred("Square(p-a)*Exp(x+y)", ALIASES_POSITIONAL, axis=1)(*genred_data, backend="auto")
    _close64(out, _square_exp_sum(*genred_data))


def test_test_torch__test_generic_syntax_softmax(genred_data):
    op = Genred("Square(p-a)*Exp(-SqNorm2(x-y))", ALIASES_POSITIONAL,
                reduction_op="SumSoftMaxWeight", axis=1, formula2="y")
    _close64(op(*genred_data, backend="auto"),
             _softmax_weights(_score(*genred_data), genred_data[3]))


SIMPLE = "Pow((X|Y),2) * ((Elem(P,0) * X) + (Elem(P,1) * Y))"
SIMPLE_ALIASES = ["P = Pm(2)", f"X = Vi({D}) ", f"Y = Vj({D}) "]


def _simple_reference(p, x, y):
    scals = (x @ y.T) ** 2
    return p[0] * scals.sum(1, keepdims=True) * x + p[1] * (scals @ y)


def test_test_torch__test_generic_syntax_simple(rng, genred_data):
    _, _, x, y = genred_data
    p = rng.uniform(size=2)
    out = Genred(SIMPLE, SIMPLE_ALIASES, reduction_op="Sum", axis=1)(
        *(a.astype(np.float32) for a in (p, x, y)), backend="auto")
    _close32(out, _simple_reference(p, x, y))


def test_test_torch__test_non_contiguity(rng, genred_data):
    _, _, x, y = (a.astype(np.float32) for a in genred_data)
    p = rng.uniform(size=2).astype(np.float32)
    op = Genred(SIMPLE, SIMPLE_ALIASES, reduction_op="Sum", axis=1)
    y_strided = np.asfortranarray(y)
    assert not y_strided.flags.c_contiguous
    _close32(op(p, x, y_strided, backend="auto"), _simple_reference(p, x, y))


def test_test_torch__test_heterogeneous_var_aliases(genred_data):
    test_test_numpy__test_heterogeneous_var_aliases(genred_data)  # the same case, torch arrays


LOG_KERNELS = {  # log k(x, y) for σ: as pykeops.numpy.utils.log_np_kernel
    "gaussian": (lambda x, y, s: -Pm(1 / s ** 2) * Vi(x).sqdist(Vj(y)), lambda d2: -d2),
    "laplacian": (lambda x, y, s: -(Pm(1 / s ** 2) * Vi(x).sqdist(Vj(y))).sqrt(),
                  lambda d2: -np.sqrt(d2)),
    "cauchy": (lambda x, y, s: (1 + Pm(1 / s ** 2) * Vi(x).sqdist(Vj(y))).power(-1).log(),
               lambda d2: -np.log(1 + d2)),
    "inverse_multiquadric": (
        lambda x, y, s: (1 + Pm(1 / s ** 2) * Vi(x).sqdist(Vj(y))).sqrt().power(-1).log(),
        lambda d2: -0.5 * np.log(1 + d2)),
}


@pytest.mark.parametrize("kernel", LOG_KERNELS)
def test_test_torch__test_logSumExp_kernels_feature(genred_data, kernel):
    sigma, g, x, y = (a.astype(np.float32) for a in genred_data)
    lazy, dense = LOG_KERNELS[kernel]
    out = lazy(x, y, sigma).logsumexp(dim=1, weight=Vj(np.exp(g)))
    s = genred_data[0]
    want = _lse(dense(_sqdist(genred_data[2], genred_data[3]) / s ** 2) + genred_data[1].T, 1)
    _close32(out[:, 0], want)


def test_test_torch__test_logSumExp_gradient_kernels_feature(rng):
    p, f, g = rng.uniform(size=2), rng.uniform(size=(M, 1)), rng.uniform(size=(N, 1))
    op = Genred("(Elem(P,0) * X) + (Elem(P,1) * Y)", ["P = Pm(2)", "X = Vi(1) ", "Y = Vj(1) "],
                reduction_op="LogSumExp", axis=1)
    ours = jax.grad(lambda f, g: jnp.sum(op(p, f, g, backend="auto")), argnums=(0, 1))(f, g)
    dense = lambda f, g: jnp.sum(jax.nn.logsumexp(p[0] * f + p[1] * g.T, axis=1))
    for o, w in zip(ours, jax.grad(dense, argnums=(0, 1))(f, g)):
        _close64(o, w)
    _close64(ours[0][:, 0], np.full(M, p[0]))  # KeOps' closed form of the first one


def test_test_torch__test_invkernel(rng):
    E = 3
    x, a, e = rng.uniform(size=(M, D)), rng.uniform(size=(M, E)), rng.uniform(size=(M, E))
    sigma, alpha = np.array([0.4]), 0.1
    solve = KernelSolve("Exp(-oos2*SqDist(x,y))*b",
                        [f"x = Vi({D})", f"y = Vj({D})", f"b = Vj({E})", "oos2 = Pm(1)"], "b",
                        axis=1)
    ours = lambda x: solve(x, x, a, sigma, alpha=alpha, eps=1e-12)
    dense = lambda x: jnp.linalg.solve(
        alpha * jnp.eye(M) + jnp.exp(-sigma * jnp.sum((x[:, None] - x[None]) ** 2, -1)), a)
    c, vjp = jax.vjp(ours, x)
    c_, vjp_ = jax.vjp(dense, x)
    _close64(c, c_, 1e-7)
    _close64(vjp(e)[0], vjp_(e)[0], 1e-6)


def test_test_torch__test_softmax(genred_data, rng):
    _, _, x, y = genred_data
    b = rng.uniform(size=(N, 3))
    op = Genred("SqDist(x,y)", [f"x = Vi({D})", f"y = Vj({D})", "b = Vj(3)"],
                reduction_op="SumSoftMaxWeight", axis=1, formula2="b")
    _close64(op(x, y, b), _softmax_weights(_sqdist(x, y), b))


def test_test_torch__test_pickle(genred_data):
    op = Genred("SqDist(x,y)", [f"x = Vi({D})", f"y = Vj({D})"], reduction_op="Sum", axis=1)
    again = pickle.loads(pickle.dumps(op))
    assert type(again) is type(op)
    _, _, x, y = genred_data
    np.testing.assert_array_equal(again(x, y), op(x, y))


# --- test_torch.py: batched LazyTensors and their derivatives -----------------------------------

A5, B3 = 5, 3  # test_torch's batch dims


@pytest.fixture
def batch_data(rng):
    return (rng.uniform(size=(A5, B3, M, D)), rng.uniform(size=(A5, 1, M, 1)),
            rng.uniform(size=(1, B3, N, D)), rng.uniform(size=(A5, B3, 1)) + 1)


def _as_batched(x, l, y, s, lazy: bool):
    x_i, l_i, y_j, s_p = x[..., None, :], l[..., None, :], y[..., None, :, :], s[..., None, None, :]
    if lazy:
        return LazyTensor(x_i), LazyTensor(l_i), LazyTensor(y_j), LazyTensor(s_p)
    return x_i, l_i, y_j, s_p


def test_test_torch__test_LazyTensor_sum(batch_data):
    x, l, y, s = batch_data

    def a_i(x, y, s, lazy):
        x_i, l_i, y_j, s_p = _as_batched(x, l, y, s, lazy)
        if lazy:
            return (-(0.5 * (l_i * x_i - y_j) ** 2 / s_p).sum(-1)).exp().sum(3).squeeze(-1)
        return jnp.exp(-(0.5 * (l_i * x_i - y_j) ** 2 / s_p).sum(-1)).sum(3)

    def results(lazy):
        f = lambda x, y, s: jnp.sum(a_i(x, y, s, lazy) ** 2)
        g = jax.grad(f, argnums=(0, 1, 2))
        g_xx = jax.grad(lambda x: jnp.sum(g(x, y, s)[0] ** 2))(x)
        return (a_i(x, y, s, lazy), *g(x, y, s), g_xx)

    for ours, want in zip(results(True), results(False)):
        assert ours.shape == want.shape
        _close64(ours, want)


def test_test_torch__test_LazyTensor_logsumexp(batch_data):
    x, l, y, s = batch_data

    def a_i(x, y, s, lazy):
        x_i, l_i, y_j, s_p = _as_batched(x, l, y, s, lazy)
        if lazy:
            K = -1 / (1 + ((l_i * x_i + y_j).relu() * s_p / 9).sum(-1))
            return K.logsumexp(3).squeeze(-1)
        d = (jnp.maximum(l_i * x_i + y_j, 0) * s_p / 9).sum(-1)
        return jax.nn.logsumexp(-1 / (1 + d), axis=3)

    def results(lazy):
        g = jax.grad(lambda x, y, s: jnp.sum(a_i(x, y, s, lazy)), argnums=(0, 1, 2))
        g_xs = jax.grad(lambda s: jnp.sum(jnp.abs(g(x, y, s)[0])))(s)
        return (a_i(x, y, s, lazy), *g(x, y, s), g_xs)

    for ours, want in zip(results(True), results(False)):
        assert ours.shape == want.shape
        _close64(ours, want)


def test_test_torch__test_LazyTensor_min_chunked(rng):
    x, y = rng.uniform(size=(M, 990)), rng.uniform(size=(N, 990))  # D = 990: a large D
    K = ((-((LazyTensor(x[:, None]) + LazyTensor(y[None])) ** 2)).exp()).sum(-1, keepdim=True)
    m, am = K.min_argmin(dim=0)
    dense = np.exp(-(x[:, None] + y[None]) ** 2).sum(-1, keepdims=True)
    _close64(m, dense.min(0))
    np.testing.assert_array_equal(am, dense.argmin(0))


def test_test_torch__test_LazyTensor_min(batch_data):
    x, l, y, s = batch_data

    def K(lazy):
        x_i, l_i, y_j, s_p = _as_batched(x, l, y, s, lazy)
        if lazy:
            d = ((1 + ((l_i * x_i + y_j).relu() * s_p) ** 2).log()).sum(-1, keepdim=True)
        else:
            d = np.log(1 + (np.maximum(l_i * x_i + y_j, 0) * s_p) ** 2).sum(-1, keepdims=True)
        return (d ** 1.5 + 1).cos() * (d * (3.2 + s_p)).sin() if lazy else \
            np.cos(d ** 1.5 + 1) * np.sin(d * (3.2 + s_p))

    m, am = K(True).min_argmin(dim=2)
    dense = K(False)
    assert m.shape == dense.min(2).shape
    _close64(m, dense.min(2))
    np.testing.assert_array_equal(am, dense.argmin(2))


def test_test_torch__test_TensorDot_with_permute(rng):
    x, y = rng.normal(size=(M, 2, 3, 2, 2, 4)), rng.normal(size=(N, 2, 4, 2, 3, 2, 3))
    dimfa, dimfb = x.shape[1:], y.shape[1:]
    contfa, contfb, perm = (5, 1, 3), (2, 5, 3), (4, 3, 2, 0, 1)  # axes counted with the batch
    dense_perm = (0, *(1 + np.argsort(perm)))

    def dense(x, y):
        return jnp.transpose(jnp.tensordot(x, y, axes=(contfa, contfb)).sum(3), dense_perm)

    def ours(x, y):
        f = LazyTensor(x.reshape(M, 1, -1)).keops_tensordot(
            LazyTensor(y.reshape(1, N, -1)), dimfa, dimfb, tuple(np.subtract(contfa, 1)),
            tuple(np.subtract(contfb, 1)), perm)
        return f.sum_reduction(dim=1)

    out, vjp = jax.vjp(ours, x, y)
    want, vjp_ = jax.vjp(dense, x, y)
    _close64(out.ravel(), want.ravel())
    e = rng.normal(size=want.shape)
    for g, g_ in zip(vjp(e.reshape(M, -1)), vjp_(e)):
        _close64(g, g_)


# --- torch.func: test_torch_func.py and test_torch_func_logsumexp.py ---------------------------

B1, B2, MF, NF, DF = 5, 4, 10, 20, 2


def _gaussian_norm(x_i, y_j, b_j, p, lazy):
    if lazy:
        x_i, y_j, b_j, p = (LazyTensor(a) for a in (x_i, y_j, b_j, p))
        r = ((-p * ((x_i - y_j) ** 2).sum(-1)).exp() * b_j).sum(2)
    else:
        K = jnp.exp(-p[..., 0] * ((x_i - y_j) ** 2).sum(-1))[..., None]
        r = (K * b_j).sum(2)
    return jnp.sqrt(jnp.sum(r ** 2))


def _lse_norm(x_i, y_j, b_j, lazy):
    if lazy:
        x_i, y_j, b_j = (LazyTensor(a) for a in (x_i, y_j, b_j))
        r = ((x_i - y_j) ** 2).sum(-1).logsumexp(axis=2, other=b_j)
    else:
        d2 = ((x_i - y_j) ** 2).sum(-1)[..., None]
        r = jnp.log((jnp.exp(d2) * b_j).sum(2))
    return jnp.sqrt(jnp.sum(r ** 2))


def _func_inputs(rng, with_p: bool):
    shapes = [(B1, B2, MF, 1, DF), (B1, 1, 1, NF, DF), (B1, B2, 1, NF, 1)]
    args = [rng.normal(size=shapes[0]) * 0.5, rng.normal(size=shapes[1]) * 0.5,
            rng.uniform(0.5, 1.5, size=shapes[2])]
    if with_p:
        shapes.append((B1, 1, 1, 1, 1))
        args.append(rng.uniform(size=shapes[3]))
    tangents = [rng.normal(size=s) for s in shapes]
    return tuple(args), tuple(tangents)


TRANSFORMS = {
    "vmap": lambda f, args, tangents: jax.vmap(f)(*args),
    "grad": lambda f, args, tangents: jax.grad(f, argnums=tuple(range(len(args))))(*args),
    "vjp": lambda f, args, tangents: jax.vjp(f, *args)[1](1.0)[0],
    "jvp": lambda f, args, tangents: jax.jvp(f, args, tangents)[1],
    "jacrev": lambda f, args, tangents: jax.jacrev(f, argnums=tuple(range(len(args))))(*args),
    "jacfwd": lambda f, args, tangents: jax.jacfwd(f)(*args),
    "hessian": lambda f, args, tangents: jax.hessian(f)(*args),
}


def _check_transform(transform, fn, args, tangents):
    ours = TRANSFORMS[transform](lambda *a: fn(*a, lazy=True), args, tangents)
    want = TRANSFORMS[transform](lambda *a: fn(*a, lazy=False), args, tangents)
    for o, w in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
        assert o.shape == w.shape
        _close64(o, w, 1e-9)


def _make_func_test(transform, fn, with_p):
    def test(rng):
        args, tangents = _func_inputs(rng, with_p)
        _check_transform(transform, fn, args, tangents)
    return test


for _t in TRANSFORMS:
    globals()[f"test_test_torch_func__test_torch_func_{_t}"] = _make_func_test(
        _t, _gaussian_norm, True)
    globals()[f"test_test_torch_func_logsumexp__test_torch_func_{_t}"] = _make_func_test(
        _t, _lse_norm, False)


# --- test_vmap.py -------------------------------------------------------------------------------


def _vmap_fn(x_i, x_j, y_j, lazy):
    if lazy:
        x_i, x_j, y_j = LazyTensor(x_i), LazyTensor(x_j), LazyTensor(y_j)
        return ((-((x_i - x_j) ** 2).sum(-1)).exp() * y_j).sum(1)
    return (jnp.exp(-((x_i - x_j) ** 2).sum(-1))[..., None] * y_j).sum(1)


def _check_vmap(rng, shapes, in_axes, out_axes):
    x_i, x_j, y_j = (rng.normal(size=s) for s in shapes)
    runs = {}
    for lazy in (True, False):
        f = jax.vmap(lambda a, b, c: _vmap_fn(a, b, c, lazy), in_axes=in_axes, out_axes=out_axes)
        runs[lazy] = jax.vjp(lambda x: f(x, x_j, y_j), x_i)
    (ours, vjp), (want, vjp_) = runs[True], runs[False]
    assert ours.shape == want.shape
    _close64(ours, want)
    u = rng.uniform(size=want.shape)
    _close64(vjp(u)[0], vjp_(u)[0])


def test_test_vmap__test_vmap_0(rng):
    _check_vmap(rng, [(5, 10, 1, 2), (5, 1, 20, 2), (5, 1, 20, 1)], 0, 0)


def test_test_vmap__test_vmap_1(rng):
    _check_vmap(rng, [(10, 5, 1, 2), (1, 5, 20, 2), (1, 5, 20, 1)], 1, 1)


def test_test_vmap__test_vmap_2(rng):
    _check_vmap(rng, [(10, 5, 1, 2), (5, 1, 20, 2), (1, 5, 20, 1)], (1, 0, 1), 2)


# --- the Gaussian-convolution files: K @ b with pykeops' keywords -------------------------------


# Module-scoped fixtures below draw from np.random.default_rng([SEED, k]): the run's seed.


def _gaussian_matvec_case(rng, m, n, d, dv, dtype, batch_x=(), batch_y=(), batch_b=(),
                          **options):
    """(K @ b with `options`, the dense float64 reference) for K = exp(-|x_i - y_j|²)."""
    x = rng.uniform(size=(*batch_x, m, 1, d)) / math.sqrt(d)
    y = rng.uniform(size=(*batch_y, 1, n, d)) / math.sqrt(d)
    b = rng.normal(size=(*batch_b, n, dv))
    K = (-((LazyTensor(x.astype(dtype)) - LazyTensor(y.astype(dtype))).square()).sum(
        dim=len(np.broadcast_shapes(batch_x, batch_y)) + 2)).exp()
    ours = K.__matmul__(b.astype(dtype), **options)
    want = np.exp(-((x - y) ** 2).sum(-1)) @ b
    return ours, want


def test_test_chunks__test_chunks(rng):  # a large D (KeOps: chunked formula)
    ours, want = _gaussian_matvec_case(rng, 200, 300, 300, 1, np.float32, sum_scheme="block_sum")
    _close32(ours, want, 1e-4)


def test_test_finalchunks__test_finalchunk(rng):  # a large output dimension
    ours, want = _gaussian_matvec_case(rng, 200, 300, 3, 300, np.float32, sum_scheme="block_sum")
    _close32(ours, want, 1e-4)


def test_test_chunks_ranges__test_chunk_ranges(rng):  # batched, large D (no ranges in it)
    ours, want = _gaussian_matvec_case(rng, 50, 70, 300, 1, np.float32, batch_x=(2, 3),
                                       batch_y=(2, 1), batch_b=(1, 3), sum_scheme="block_sum")
    _close32(ours, want, 1e-4)


def test_test_finalchunks_ranges__test_finalchunks_ranges(rng):
    ours, want = _gaussian_matvec_case(rng, 50, 70, 3, 300, np.float32, batch_x=(2, 3),
                                       batch_y=(2, 1), batch_b=(1, 3), sum_scheme="block_sum")
    _close32(ours, want, 1e-4)


def test_test_lazytensor_gaussian_fromhost__test_lazytensor_gaussian_fromhost(rng):
    ours, want = _gaussian_matvec_case(rng, 250, 200, 3, 1, np.float64, sum_scheme="block_sum",
                                       device_id=-1)
    _close64(ours, want)


def test_test_lazytensor_gaussian_inplace__test_lazytensor_gaussian_inplace(rng):
    out = np.empty((20, 1), np.float32)
    ours, want = _gaussian_matvec_case(rng, 20, 30, 3, 1, np.float32, sum_scheme="block_sum",
                                       out=out)
    _close32(out, want)
    np.testing.assert_array_equal(out, ours)


def test_test_lazytensor_gaussian_numpy_inplace__test_lazytensor_gaussian_numpy_inplace(rng):
    m, n = 300, 200
    x, y = rng.uniform(size=(m, 1, 3)) / math.sqrt(3), rng.uniform(size=(1, n, 3)) / math.sqrt(3)
    b = rng.normal(size=(n, 1))
    out = np.empty((m, 1), np.float32)
    K = (-(LazyTensor(x.astype(np.float32)) - LazyTensor(y.astype(np.float32))).sum(axis=2)).exp()
    K.__matmul__(b.astype(np.float32), out=out)
    _close32(out, np.exp(-(x - y).sum(-1)) @ b, 1e-4)


def test_test_contiguous_numpy__test_contiguous_numpy(rng):
    a1, b, c = (rng.uniform(size=(2, 100, 5)) for _ in range(3))
    a2 = np.ascontiguousarray(a1.transpose(2, 0, 1)).transpose(1, 2, 0)  # same values, strided
    assert not a2.flags.c_contiguous
    b_j = LazyTensor(b[:, None])
    d1 = LazyTensor(a1[:, :, None]).sqdist(b_j).exp() @ c
    d2 = LazyTensor(a2[:, :, None]).sqdist(b_j).exp() @ c
    np.testing.assert_array_equal(d1, d2)
    _close64(d1, np.exp(((a1[:, :, None] - b[:, None]) ** 2).sum(-1)) @ c, 1e-9)


def test_test_contiguous_torch__test_contiguous_torch(rng):
    test_test_contiguous_numpy__test_contiguous_numpy(rng)  # the same case with jax arrays
    a1, b, c = (jnp.asarray(rng.uniform(size=(2, 100, 5))) for _ in range(3))
    a2 = jnp.transpose(jnp.transpose(a1, (2, 0, 1)), (1, 2, 0))
    b_j = LazyTensor(b[:, None])
    np.testing.assert_array_equal(LazyTensor(a1[:, :, None]).sqdist(b_j).exp() @ c,
                                  LazyTensor(a2[:, :, None]).sqdist(b_j).exp() @ c)


def _second_order_case(rng, m, n, **options):
    """K @ b, its gradient in b of Σ out², and that gradient's own gradient in b."""
    x = rng.uniform(size=(m, 1, 3)) / math.sqrt(3)
    y = rng.uniform(size=(1, n, 3)) / math.sqrt(3)
    b = rng.normal(size=(n, 1))

    def out(b, lazy):
        if lazy:
            K = (-((LazyTensor(x) - LazyTensor(y)) ** 2).sum(dim=2)).exp()
            return K.__matmul__(b, **options).squeeze()
        return (jnp.exp(-((x - y) ** 2).sum(-1)) @ b).squeeze()

    def chain(lazy):
        g = jax.grad(lambda b: jnp.sum(out(b, lazy) ** 2))
        return out(b, lazy), g(b), jax.grad(lambda b: jnp.sum(g(b) ** 2))(b)

    return chain(True), chain(False)


@pytest.fixture(scope="module")
def conv2d_results():
    # KeOps: M, N = 20000, 30000 with backend="GPU_2D"; here a size the dense reference affords
    # (the backend keyword warns, once per process, and runs where the arrays are).
    from jaxkeops import call_options

    call_options._warned.clear()  # another test may have drawn the one warning already
    with pytest.warns(UserWarning, match="backend"):
        return _second_order_case(np.random.default_rng([SEED, 20]), 400, 600, backend="GPU_2D")


def test_conv2d__test_conv2d_fw(conv2d_results):
    _close64(conv2d_results[0][0], conv2d_results[1][0])


def test_conv2d__test_conv2d_bw1(conv2d_results):
    _close64(conv2d_results[0][1], conv2d_results[1][1])


def test_conv2d__test_conv2d_bw2(conv2d_results):
    _close64(conv2d_results[0][2], conv2d_results[1][2], 1e-9)


@pytest.fixture(scope="module")
def gaussian_cpu_results():
    return _second_order_case(np.random.default_rng([SEED, 21]), 300, 250, backend="auto")


def test_test_lazytensor_gaussian_cpu__test_lazytensor_gaussian_cpu(gaussian_cpu_results):
    _close64(gaussian_cpu_results[0][0], gaussian_cpu_results[1][0])


def test_test_lazytensor_gaussian_cpu__test_lazytensor_gaussian_cpu_bw1(gaussian_cpu_results):
    _close64(gaussian_cpu_results[0][1], gaussian_cpu_results[1][1])


def test_test_lazytensor_gaussian_cpu__test_lazytensor_gaussian_cpu_bw2(gaussian_cpu_results):
    _close64(gaussian_cpu_results[0][2], gaussian_cpu_results[1][2], 1e-9)


def test_test_gpu_cpu__test_torch_keops_cpu(rng):
    with pytest.warns(UserWarning, match="backend"):
        ours, want = _gaussian_matvec_case(rng, 300, 200, 3, 1, np.float32, backend="CPU")
    _close32(ours, want)


def test_test_transpose__test_transpose(rng):
    x, y, w = rng.normal(size=(300, 3)), rng.normal(size=(500, 3)), rng.uniform(size=(300, 2))
    K = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(2)).exp()
    _close64(K.t() @ w, np.exp(-_sqdist(x, y)).T @ w)


# --- batches, gradients, clamp, sinc, tensordot, kron, complex, float16 --------------------------


def test_test_lazytensor_gaussian_batch__test_lazytensor_gaussian_batch_fw(rng):
    _gaussian_batch(rng, 0)


def test_test_lazytensor_gaussian_batch__test_lazytensor_gaussian_batch_bw(rng):
    _gaussian_batch(rng, 1)


def _gaussian_batch(rng, order):
    x = rng.uniform(size=(1, 4, 20, 1, 3)) / math.sqrt(3)
    y = rng.uniform(size=(3, 4, 1, 25, 3)) / math.sqrt(3)
    b = rng.normal(size=(3, 1, 25, 2)).astype(np.float32)

    def out(b, lazy):
        if lazy:
            K = (-((LazyTensor(x.astype(np.float32)) - LazyTensor(y.astype(np.float32))) ** 2)
                 .sum(dim=4)).exp()
        else:
            K = jnp.exp(-((x - y) ** 2).sum(-1))
        return K @ b

    results = [(o, jax.grad(lambda b: jnp.sum(out(b, lazy) ** 2))(b))
               for lazy in (True, False) for o in [out(b, lazy)]]
    ours, want = results[0][order], results[1][order]
    assert ours.shape == want.shape
    _close32(ours, want, 1e-4)


def _cos_grad_chain(lazy, x, y, b):
    def out(x):
        if lazy:
            return ((LazyTensor(x).cos() - LazyTensor(y)).sum(dim=2) @ b).squeeze()
        return ((jnp.cos(x) - y).sum(2) @ b).squeeze()

    g = jax.grad(lambda x: jnp.sum(out(x) ** 2))
    return out(x), g(x), jax.grad(lambda x: jnp.sum(g(x) ** 2))(x)


@pytest.fixture(scope="module")
def grad_chain():
    rng = np.random.default_rng([SEED, 30])
    x, y = rng.uniform(size=(100, 1, 3)), rng.uniform(size=(1, 100, 1))
    b = rng.normal(size=(100, 1))
    return [_cos_grad_chain(lazy, x, y, b) for lazy in (True, False)]


def test_test_lazytensor_grad__test_lazytensor_grad(grad_chain):
    _close64(grad_chain[0][0], grad_chain[1][0])


def test_test_lazytensor_grad__test_lazytensor_grad_bw1(grad_chain):
    _close64(grad_chain[0][1], grad_chain[1][1])


def test_test_lazytensor_grad__test_lazytensor_grad_bw2(grad_chain):
    _close64(grad_chain[0][2], grad_chain[1][2], 1e-9)


@pytest.fixture(scope="module")
def clamp_results():
    rng = np.random.default_rng([SEED, 40])
    x, y = rng.normal(size=(300, 1, 3)), rng.normal(size=(1, 400, 3))
    lo, hi = -1.23, 1.54

    def out(x, lazy):
        if lazy:
            d = (LazyTensor(x) * LazyTensor(y)).clamp(lo, hi).sum(dim=2)
            return jnp.squeeze((-(d ** 2)).exp().sum(dim=1))
        return jnp.squeeze(jnp.exp(-(jnp.clip(x * y, lo, hi).sum(2) ** 2)).sum(1))

    return [(out(x, lazy), jax.grad(lambda x: jnp.sum(out(x, lazy) ** 2))(x))
            for lazy in (True, False)]


def test_test_lazytensor_clamp__test_lazytensor_clamp_fw(clamp_results):
    _close64(clamp_results[0][0], clamp_results[1][0])


def test_test_lazytensor_clamp__test_lazytensor_clamp_bw(clamp_results):
    _close64(clamp_results[0][1], clamp_results[1][1])


@pytest.fixture(scope="module")
def sinc_results():
    x = np.random.default_rng([SEED, 50]).uniform(size=(5, 1)) * 2 * math.pi
    ours = jax.value_and_grad(lambda x: LazyTensor(x[:, None]).sinc().sum(0).sum())(x)
    want = jax.value_and_grad(lambda x: jnp.sum(jnp.sinc(x)))(x)
    return ours, want


def test_test_sinc__test_sinc(sinc_results):
    _close64(sinc_results[0][0], sinc_results[1][0])


def test_test_sinc__test_sinc_grad(sinc_results):
    _close64(sinc_results[0][1], sinc_results[1][1])


def test_test_lazytensor_tensordot__test_tensordot(rng):
    a, b = rng.normal(size=4 * 7), rng.normal(size=7)
    A, B = LazyTensor(a[None, None, :]), LazyTensor(b[None, None, :])
    C = A.keops_tensordot(B, (4, 7), (7,), (1,), (0,)).sum_reduction(dim=1)
    _close64(np.ravel(C), a.reshape(4, 7) @ b)


KRON_M, KRON_N = 11, 150


def _kron_reference(x, y, shape_x, shape_y):
    return np.stack([sum(np.kron(xi.reshape(shape_x), yj.reshape(shape_y)).ravel() for yj in y)
                     for xi in x])


def _kron_lazytensor(rng, as_jax):
    dimfa, dimfb = [3, 2, 1, 2], [1, 2, 2, 3]
    x, y = rng.uniform(size=(KRON_M, 12)), rng.uniform(size=(KRON_N, 12))
    wrap = jnp.asarray if as_jax else np.asarray
    ours = LazyTensor(wrap(x)[:, None, :]).keops_kron(LazyTensor(wrap(y)[None, :, :]), dimfa,
                                                       dimfb).sum(axis=1)
    _close64(ours, _kron_reference(x, y, dimfa, dimfb))


def test_test_kron__test_kron_lazytensor_np(rng):
    _kron_lazytensor(rng, False)


def test_test_kron__test_kron_lazytensor_torch(rng):
    _kron_lazytensor(rng, True)


def _kron_genred(rng, da, db, permute):
    dx, dy = int(np.prod(da)), int(np.prod(db))
    x, y = rng.uniform(size=(KRON_M, dx)), rng.uniform(size=(KRON_N, dy))
    aliases = [f"x=Vi(0,{dx})", f"y=Vj(1,{dy})"]
    kron = Genred(f"Kron(x, y, {list(da)}, {list(db)})", aliases, reduction_op="Sum", axis=1)
    tdot = Genred(f"TensorDot(x, y, {list(da)}, {list(db)}, [], [], {list(permute)})", aliases,
                  reduction_op="Sum", axis=1)
    want = _kron_reference(x, y, da, db)
    _close64(kron(x, y), want)
    _close64(tdot(x, y), want)
    return x, y, want


def test_test_kron__test_kron_genred(rng):
    _kron_genred(rng, (2, 3), (2, 2), (0, 2, 1, 3))


def test_test_kron__test_kron_genred2(rng):
    x, y, want = _kron_genred(rng, (2, 3, 2), (2, 2, 3), (0, 2, 4, 1, 3, 5))
    interleaved = np.stack([sum(np.einsum("ijk,lmn->iljmkn", xi.reshape(2, 3, 2),
                                          yj.reshape(2, 2, 3)).ravel() for yj in y) for xi in x])
    _close64(interleaved, want)  # KeOps' own check of its reference


def test_test_complex__test_complex_fw(rng):  # a non-uniform discrete Fourier transform
    m, n = 300, 400
    x = (rng.uniform(size=(1, n, 1)) + 1j * rng.uniform(size=(1, n, 1))).astype(np.complex64)
    p, f = rng.uniform(size=(1, n, 1)), rng.uniform(size=(m, 1, 1))
    X = LazyTensor(x) * (-2 * math.pi * 1j * LazyTensor(p.astype(np.float32))
                         * LazyTensor(f.astype(np.float32))).exp()
    ours = X.sum(dim=0)
    want = (x.astype(np.complex128) * np.exp(-2j * math.pi * p * f)).sum(0)
    assert ours.dtype == np.complex64 and ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_test_complex_numpy__test_complex_numpy(rng):
    m, n = 300, 400
    x = (rng.uniform(size=(m, 1, 3)) + 1j * rng.uniform(size=(m, 1, 3))).astype(np.complex64)
    y = (rng.uniform(size=(1, n, 3)) + 1j * rng.uniform(size=(1, n, 3))).astype(np.complex64)

    def fun(x, y):  # the same code for numpy arrays and LazyTensors (`.real`: a property)
        return ((x * y) * y.real + x + x.real).sum(axis=2).sum(axis=0)

    ours = fun(LazyTensor(x), LazyTensor(y))
    want = fun(x.astype(np.complex128), y.astype(np.complex128))
    np.testing.assert_allclose(np.squeeze(ours), want, rtol=1e-4)


def test_test_float16__test_float16_fw(rng):
    _float16(rng, 0)


def test_test_float16__test_float16_bw(rng):  # KeOps: GPU only; jaxkeops runs float16 on CPU
    _float16(rng, 1)


def _float16(rng, order):
    x = rng.normal(size=(5, 1, 1)).astype(np.float16)
    y = rng.normal(size=(1, 5, 1)).astype(np.float16)

    def out(x, lazy):
        if lazy:
            return jnp.squeeze((LazyTensor(x) - LazyTensor(y)).sum(dim=2).sum(dim=0))
        return jnp.squeeze((x - y).sum(2).sum(0))

    ours = out(x, True), jax.grad(lambda x: out(x, True)[0])(x)
    want = out(x, False), jax.grad(lambda x: out(x, False)[0])(x)
    assert ours[order].dtype == np.float16
    np.testing.assert_allclose(np.asarray(ours[order], np.float32),
                               np.asarray(want[order], np.float32), rtol=1e-3, atol=1e-2)


def test_test_block_sparse_reduction__test_block_sparse_reduction(rng):
    """A Gaussian convolution from a noisy circle to a blob, clustered on a grid, with the
    clusters whose centroids are far apart skipped: equal to the dense sum over the kept
    blocks, and within 0.5 % of the dense sum over all pairs (KeOps: 0.2 %, see below)."""
    from jaxkeops import cluster

    M_, N_, sigma = 500, 500, 0.05
    t = np.linspace(0, 2 * np.pi, M_ + 1)[:-1]
    x = np.stack([0.4 + 0.4 * np.cos(t), 0.5 + 0.3 * np.sin(t)], 1) + 0.01 * rng.normal(size=(M_, 2))
    y = rng.normal(size=(N_, 2)) / 10 + 0.6
    x, y = x.astype(np.float32), y.astype(np.float32)
    x_labels, y_labels = cluster.grid_cluster(x, 0.05), cluster.grid_cluster(y, 0.05)
    x, x_labels = cluster.sort_clusters(x, x_labels)
    y, y_labels = cluster.sort_clusters(y, y_labels)
    x_ranges, x_centroids, _ = cluster.cluster_ranges_centroids(x, x_labels)
    y_ranges, y_centroids, _ = cluster.cluster_ranges_centroids(y, y_labels)
    keep = ((np.asarray(x_centroids)[:, None] - np.asarray(y_centroids)[None]) ** 2).sum(2) < (
        4 * sigma) ** 2
    ranges = cluster.from_matrix(x_ranges, y_ranges, keep)
    K = (-(((LazyTensor(x[:, None, :] / sigma) - LazyTensor(y[None, :, :] / sigma)) ** 2)
           .sum(dim=2)) / 2).exp()
    b = rng.normal(size=(N_, 1)).astype(np.float32)
    full = K @ b
    K.ranges = ranges
    sparse = np.asarray(K @ b, np.float64)
    # The dense reference over the kept blocks, in float64.
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    block_keep = keep[np.asarray(x_labels)][:, np.asarray(y_labels)]
    k64 = np.exp(-((xs[:, None] - ys[None]) ** 2).sum(-1) / sigma ** 2 / 2)
    np.testing.assert_allclose(sparse, np.where(block_keep, k64, 0) @ b, rtol=2e-4, atol=2e-5)
    assert 0 < block_keep.mean() < 1
    rel_error = np.abs(sparse - np.asarray(full)).sum() / np.abs(np.asarray(full)).sum()
    # KeOps asserts < 0.2 %; the truncation error depends on the random cloud (0.20-0.21 % seen
    # here), so 0.5 %: the exact check is the masked dense sum above.
    assert rel_error < 5e-3


def test_matmul_takes_pykeops_keywords(rng):
    """KeOps' tests call K.__matmul__(b, backend=, sum_scheme=, device_id=, out=): the keywords
    of the Sum, with out= of the product's own shape (also for a vector b)."""
    x, y, b = rng.normal(size=(7, 2)), rng.normal(size=(9, 2)), rng.normal(size=9)
    K = (-Vi(x).sqdist(Vj(y))).exp()
    want = np.exp(-_sqdist(x, y)) @ b
    out = np.empty(7)
    result = K.__matmul__(b, out=out, sum_scheme="block_sum", device_id=-1)
    np.testing.assert_array_equal(out, result)
    _close64(out, want)
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) 'foo'"):
        K.__matmul__(b, foo=1)
    with pytest.raises(TypeError, match="call=False is not available for @"):
        K.__matmul__(b, call=False)
    with pytest.raises(ValueError, match="out has shape \\(7, 1\\)"):
        K.__matmul__(b, out=np.empty((7, 1)))
