"""The CUDA executor (src/cuda/).

Without a GPU (CI builds the module with nvcc but has no GPU): the module loads, its tables
agree with the CPU module's, and the main cases lower for platform "cuda" to the jaxkeops custom
call (not to the pure-JAX fallback). With a GPU (`jax.devices("gpu")` not empty): every
reduction, a spread of ops, both axes, both dtypes, batch dims and the split path (few output
rows over a long reduced axis) run on the GPU and match the CPU executor and the dense oracle.
The rest of the suite also runs on the GPU there, since jax then defaults to it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close

import jaxkeops
from jaxkeops import LazyTensor, Pm, Vi, Vj, _native

needs_module = pytest.mark.skipif(
    not _native.has_cuda(), reason="jaxkeops._jaxkeops_cuda was not built (no nvcc at build time)"
)


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


GPUS = _gpus() if _native.has_cuda() else []
needs_gpu = pytest.mark.skipif(not GPUS, reason="no GPU (jax.devices('gpu') is empty)")


# ---------------------------------------------------------------- cases (x: (.., M, D) etc.)

def _scores(x, y):
    return Vi(x).sqdist(Vj(y))


def _weight(bi, bj):
    """A (2,)-dim weight that depends on both indices: valid for either reduced axis."""
    return Vi(bi) * Vj(bj)


CASES = {
    "Sum": lambda x, y, bi, bj, axis: ((-_scores(x, y)).exp() * _weight(bi, bj)).sum(axis),
    "LogSumExp": lambda x, y, bi, bj, axis: (-_scores(x, y)).logsumexp(axis),
    "LogSumExpWeight": lambda x, y, bi, bj, axis: (-_scores(x, y)).logsumexp(
        axis, weight=_weight(bi, bj).square() + 0.5),
    "SumSoftMaxWeight": lambda x, y, bi, bj, axis: (-_scores(x, y)).sumsoftmaxweight(
        _weight(bi, bj), axis),
    "Min_ArgMin": lambda x, y, bi, bj, axis: (Vi(x) - Vj(y)).min_argmin(axis),
    "Max_ArgMax": lambda x, y, bi, bj, axis: (Vi(x) - Vj(y)).max_argmax(axis),
    "Min": lambda x, y, bi, bj, axis: _scores(x, y).min(axis),
    "ArgMax": lambda x, y, bi, bj, axis: (Vi(x) * Vj(y)).argmax(axis),
    "KMin_ArgKMin": lambda x, y, bi, bj, axis: _scores(x, y).Kmin_argKmin(5, axis),
    "KMin_vector": lambda x, y, bi, bj, axis: (Vi(x) - Vj(y)).Kmin(3, axis=axis),
    "ArgKMin": lambda x, y, bi, bj, axis: _scores(x, y).argKmin(4, axis),
    # A spread of ops: elementwise, dim reductions, broadcasting, selection, concat/extract,
    # matrix products (TensorDot), integer powers, parameters.
    "ops": lambda x, y, bi, bj, axis: (
        (Vi(x) | Vj(y)).sin() * Pm(jnp.array([0.5, 2.0], x.dtype)).sum(-1)
        + (Vi(x) - Vj(y)).abs().sqrt().min(-1)
        + Vi(x).concat(Vj(y))[1:3].sqnorm2().rsqrt() ** 3
        + (Vi(bi) - Vj(bj)).clamp(-0.5, 0.5).relu().sum(-1)
        + Vi(x).matvecmult(Vj(y)).atan().extract(0, 1)
    ).sum(axis),
}


def _arrays(rng, M, N, D=3, dtype=np.float32, batch=()):
    return (
        rng.normal(size=(*batch, M, D)).astype(dtype),
        rng.normal(size=(*batch, N, D)).astype(dtype),
        rng.uniform(0.5, 1.5, size=(*batch, M, 2)).astype(dtype),
        rng.uniform(0.5, 1.5, size=(*batch, N, 2)).astype(dtype),
    )


def _lowered(fn, *args, platform="cuda"):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _custom_calls(text, target=None):
    """The jaxkeops custom calls of a lowering: to the interpreter (`jaxkeops_reduce`) and to
    the fused kernels (`jaxkeops_fused`, formulas of a family), or to `target` only."""
    targets = [target] if target else ["jaxkeops_reduce", "jaxkeops_fused"]
    return sum(text.count(f"stablehlo.custom_call @{t}(") for t in targets)


# ---------------------------------------------------------------- without a GPU

@needs_module
def test_module_tables_agree_with_the_cpu_module():
    cuda, cpu = _native.cuda, _native.cpu
    assert cuda.opcode_table() == cpu.opcode_table()
    assert cuda.reduction_table() == cpu.reduction_table()
    assert tuple(cuda.ffi_api_version()) == tuple(cpu.ffi_api_version())
    assert cuda.jaxlib_build_version == cpu.jaxlib_build_version
    assert set(cuda.registrations()) == {_native.REDUCE_TARGET, "jaxkeops_fused"}
    # The CPU module has the same targets, plus the host emulation of the CUDA interpreter.
    assert set(cpu.registrations()) == set(cuda.registrations()) | {
        "jaxkeops_reduce_gpu_emulation"}


@needs_module
@pytest.mark.parametrize("name", ["Sum", "LogSumExpWeight", "SumSoftMaxWeight", "Min_ArgMin",
                                  "KMin_ArgKMin", "ops"])
@pytest.mark.parametrize("axis", [0, 1])
def test_main_cases_lower_to_the_custom_call_for_cuda(rng, name, axis):
    args = _arrays(rng, 7, 13)
    fn = lambda *a: CASES[name](*a, axis)  # noqa: E731
    text = _lowered(fn, *args)
    assert _custom_calls(text) == 1, text[:2000]
    # The fused kernels exactly where the family matcher says so (explain), else the interpreter.
    (record,) = jaxkeops.explain(fn, *args, platform="cuda")
    fused = record.kernel != "interpreter"
    assert _custom_calls(text, "jaxkeops_fused" if fused else "jaxkeops_reduce") == 1
    assert fused == (name not in ("LogSumExpWeight", "ops"))
    # The native call, not the chunked pure-JAX fallback (which lowers to a while loop).
    assert "stablehlo.while" not in text


@needs_module
def test_vmapped_and_batched_calls_lower_to_one_custom_call(rng):
    x, y, bi, bj = _arrays(rng, 7, 13, batch=(4,))
    f = jax.vmap(lambda x, y: _scores(x, y).Kmin_argKmin(3, axis=1))
    text = _lowered(f, x, y)
    assert _custom_calls(text) == 1
    assert "tensor<4x7x3xi64>" in text  # batch dim in front of (M, K), int64 indices (x64)
    # KeOps batch dims (LazyTensor on (B, M, 1, D) / (1, N, D) arrays) too.
    g = lambda x, y: LazyTensor(x[:, :, None]).sqdist(LazyTensor(y[None, None])).sum(2)  # noqa
    assert _custom_calls(_lowered(g, x, y[0])) == 1


@needs_module
def test_gradient_lowers_to_custom_calls(rng):
    x, y, bi, bj = _arrays(rng, 7, 13)
    loss = lambda x, y: CASES["Sum"](x, y, bi, bj, 1).sum()  # noqa: E731
    text = _lowered(jax.grad(loss, argnums=(0, 1)), x, y)
    assert _custom_calls(text) >= 2  # the forward and the cotangent reductions
    assert "stablehlo.while" not in text


# ---------------------------------------------------------------- on a GPU

def _run(device, fn, *arrays):
    arrays = [jax.device_put(a, device) for a in arrays]
    out = jax.jit(fn)(*arrays)
    return jax.tree.map(np.asarray, out if isinstance(out, tuple) else (out,))


def _check_against_cpu(gpu_out, cpu_out, dtype):
    for g, c in zip(gpu_out, cpu_out):
        assert g.shape == c.shape and g.dtype == c.dtype
        if np.issubdtype(g.dtype, np.integer):
            # Indices: the same up to rounding ties in float32 (exact in float64).
            agree = (g == c).mean()
            assert agree == 1.0 if dtype == np.float64 else agree > 0.99
        else:
            finite = np.isfinite(c)
            np.testing.assert_array_equal(np.isfinite(g), finite)
            assert_close(g[finite], c[finite], dtype, rtol32=1e-4, rtol64=1e-10,
                         scale=np.abs(c[finite]) + np.abs(c[finite]).mean() + 1e-30)


@needs_gpu
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("M,N", [(1, 1), (203, 517)])
def test_gpu_matches_cpu(rng, name, dtype, axis, M, N):
    args = _arrays(rng, M, N, dtype=dtype)
    fn = lambda *a: CASES[name](*a, axis)  # noqa: E731
    if name in ("KMin_ArgKMin", "KMin_vector", "ArgKMin") and min(M, N) < 5:
        pytest.skip("K larger than the reduced axis")
    assert _custom_calls(_lowered(fn, *args)) == 1
    _check_against_cpu(_run(GPUS[0], fn, *args), _run(jax.devices("cpu")[0], fn, *args), dtype)


@needs_gpu
@pytest.mark.parametrize("name", ["Sum", "LogSumExp", "SumSoftMaxWeight", "Min_ArgMin",
                                  "KMin_ArgKMin"])
def test_gpu_split_reduction(rng, name):
    """M = 100 rows over N = 200000: the inner axis is split across blocks and the partial
    states combined on the device, in inner order."""
    args = _arrays(rng, 100, 200_000, dtype=np.float32)
    fn = lambda *a: CASES[name](*a, 1)  # noqa: E731
    _check_against_cpu(_run(GPUS[0], fn, *args), _run(jax.devices("cpu")[0], fn, *args),
                       np.float32)


@needs_gpu
@pytest.mark.parametrize("axis", [0, 1])
def test_gpu_ties_go_to_the_lowest_index_across_splits(rng, axis):
    """Integer-valued data: exact ties, in the plain and the split path."""
    for M, N in ((37, 300), (3, 100_003)):
        x = rng.integers(0, 3, size=(M, 1)).astype(np.float32)
        y = rng.integers(0, 3, size=(N, 1)).astype(np.float32)
        fn = lambda x, y: (  # noqa: E731
            _scores(x, y).min_argmin(axis) + _scores(x, y).Kmin_argKmin(3, axis))
        g, c = _run(GPUS[0], fn, x, y), _run(jax.devices("cpu")[0], fn, x, y)
        for a, b in zip(g, c):
            np.testing.assert_array_equal(a, b)


@needs_gpu
@pytest.mark.parametrize("axis", [0, 1])
def test_gpu_batch_dims_and_vmap(rng, axis):
    x, y, bi, bj = _arrays(rng, 20, 25, dtype=np.float64, batch=(3,))
    cases = {
        "vmap": jax.vmap(lambda x, y: _scores(x, y).Kmin_argKmin(4, axis=axis)),
        "keops batch": lambda x, y: (-LazyTensor(x[:, :, None]).sqdist(
            LazyTensor(y[:1, None]))).sumsoftmaxweight(LazyTensor(x[:, :, None]), 1 + axis),
        "nested vmap": jax.vmap(jax.vmap(lambda x, y: _scores(x, y).sum(axis), (0, None)),
                                (0, None)),
    }
    for fn in cases.values():
        args = (x, y) if fn is not cases["nested vmap"] else (x[:, None].repeat(2, 1), y[0])
        _check_against_cpu(_run(GPUS[0], fn, *args), _run(jax.devices("cpu")[0], fn, *args),
                           np.float64)


@needs_gpu
def test_gpu_empty_axis_large_dims_and_gradient(rng):
    cpu = jax.devices("cpu")[0]
    # An empty reduced axis: init then finalize (Sum 0, Min +inf, index -1).
    x, y = rng.normal(size=(5, 3)), np.zeros((0, 3))
    fn = lambda x, y: (_scores(x, y).sum(1), *_scores(x, y).min_argmin(1))  # noqa: E731
    for a, b in zip(_run(GPUS[0], fn, x, y), _run(cpu, fn, x, y)):
        np.testing.assert_array_equal(a, b)
    # Wide inner registers: the j tile moves from shared memory to the workspace.
    x, y = rng.normal(size=(40, 3000)), rng.normal(size=(70, 3000))
    fn = lambda x, y: (-(_scores(x, y) / 3000.0)).exp().sum(1)  # noqa: E731
    _check_against_cpu(_run(GPUS[0], fn, x, y), _run(cpu, fn, x, y), np.float64)
    # A gradient runs its cotangent reductions on the GPU too.
    x, y, bi, bj = _arrays(rng, 50, 60, dtype=np.float64)
    loss = lambda x, y: CASES["Sum"](x, y, bi, bj, 1).sum()  # noqa: E731
    grad = jax.grad(loss, argnums=(0, 1))
    _check_against_cpu(_run(GPUS[0], grad, x, y), _run(cpu, grad, x, y), np.float64)
