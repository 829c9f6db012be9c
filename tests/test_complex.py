"""Complex LazyTensors against numpy complex128 on the materialised M×N grid."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkeops import ComplexLazyTensor, LazyTensor, Pm, Vi, Vj, _native
from test_tile_interpreter import on_emulated_gpu

M, N, D = 7, 5, 3  # not multiples of any tile size
DTYPES = [np.complex64, np.complex128]
REAL = {np.complex64: np.float32, np.complex128: np.float64}


def _complex(rng, shape, dtype, offset=0.0):
    z = 0.7 * (rng.normal(size=shape) + 1j * rng.normal(size=shape)) + offset
    return z.astype(dtype)


def _inputs(rng, dtype):
    """x_i, y_j complex (|y| away from 0 for divisions), u_i real, v_j real positive."""
    real = REAL[dtype]
    return dict(
        x=_complex(rng, (M, D), dtype),
        y=_complex(rng, (N, D), dtype, offset=2.0 + 1.0j),
        u=rng.normal(size=(M, D)).astype(real),
        v=rng.uniform(1.0, 2.0, size=(N, D)).astype(real),
    )


def _symbols(a):
    return Vi(a["x"]), Vj(a["y"]), Vi(a["u"]), Vj(a["v"])


def _grid(a):
    """The same operands as numpy complex128 / float64 arrays broadcast on the (M, N, D) grid."""
    return (a["x"].astype(np.complex128)[:, None], a["y"].astype(np.complex128)[None],
            a["u"].astype(np.float64)[:, None], a["v"].astype(np.float64)[None])


# name: (LazyTensor expression, numpy expression), over (x_i, y_j, u_i, v_j).
FEATURES = {
    "mul": (lambda x, y, u, v: x * y, lambda x, y, u, v: x * y),
    "add_sub_neg": (lambda x, y, u, v: (x - y) + x - (-y),
                    lambda x, y, u, v: (x - y) + x - (-y)),
    "div": (lambda x, y, u, v: x / y, lambda x, y, u, v: x / y),
    "real_times_complex": (lambda x, y, u, v: u * y - x * v + u / y - y / v + (v - x),
                           lambda x, y, u, v: u * y - x * v + u / y - y / v + (v - x)),
    "python_complex_constants": (
        lambda x, y, u, v: 1j * x + (0.5 - 2j) - y / 3j + x * (2 + 0j) + 2.5j,
        lambda x, y, u, v: 1j * x + (0.5 - 2j) - y / 3j + x * (2 + 0j) + 2.5j),
    "conj": (lambda x, y, u, v: x.conj() * y, lambda x, y, u, v: np.conj(x) * y),
    "exp": (lambda x, y, u, v: (x * y.conj()).exp(), lambda x, y, u, v: np.exp(x * np.conj(y))),
    "exp_of_imaginary": (lambda x, y, u, v: (1j * u).exp() * y,
                         lambda x, y, u, v: np.exp(1j * u) * y),
    "exp1j_complex": (lambda x, y, u, v: (x - y).exp1j(), lambda x, y, u, v: np.exp(1j * (x - y))),
    "exp1j_real": (lambda x, y, u, v: (u * v).exp1j() * x,
                   lambda x, y, u, v: np.exp(1j * u * v) * x),
    "real2complex": (lambda x, y, u, v: u.real2complex() * y + v.real2complex(),
                     lambda x, y, u, v: u * y + v + 0j),
    "imag2complex": (lambda x, y, u, v: v.imag2complex() * x - u.imag2complex(),
                     lambda x, y, u, v: 1j * v * x - 1j * u),
    "sum_features": (lambda x, y, u, v: (x * y).sum(-1),
                     lambda x, y, u, v: (x * y).sum(-1, keepdims=True)),
    "broadcast_dim_1": (lambda x, y, u, v: (x * y).sum(-1) * x + y / (x.sum(-1) + 4),
                        lambda x, y, u, v: (x * y).sum(-1, keepdims=True) * x
                        + y / (x.sum(-1, keepdims=True) + 4)),
    # Real-valued features: real LazyTensors.
    "real": (lambda x, y, u, v: (x * y).real, lambda x, y, u, v: (x * y).real),
    "imag": (lambda x, y, u, v: (x * y).imag + u.real2complex().imag,
             lambda x, y, u, v: (x * y).imag + 0 * u),
    "abs": (lambda x, y, u, v: (x - y).abs() + abs(x * v), lambda x, y, u, v: np.abs(x - y)
            + np.abs(x * v)),
    "angle": (lambda x, y, u, v: (x * y).angle(), lambda x, y, u, v: np.angle(x * y)),
    "parts_of_dimension_1": (  # a dimension-1 real part in a dimension-D complex
        lambda x, y, u, v: (v.sum(-1) + u.imag2complex()).real - (2j + u).imag,
        lambda x, y, u, v: v.sum(-1, keepdims=True) + 0 * u - 2),
}


def _terms(K, reference, a):
    """The numpy terms (M, N, D) of the LazyTensor K = lazy(*_symbols(a))."""
    return np.broadcast_to(reference(*_grid(a)), (M, N, K.shape[-1] if len(K.shape) == 3 else 1))


def _check(out, terms, axis, dtype):
    """out against the reduction of the numpy terms (M, N, D): errors relative to Σ|term|."""
    ref, scale = terms.sum(axis), np.abs(terms).sum(axis)
    rtol = 2e-5 if dtype == np.complex64 else 1e-12
    out = np.asarray(out)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.iscomplexobj(out) == np.iscomplexobj(ref)
    err = np.abs(out - ref) / (scale + 1e-30)
    assert err.max() <= rtol, f"relative error {err.max():.3g} > {rtol:.1g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["complex64", "complex128"])
@pytest.mark.parametrize("feature", FEATURES)
def test_feature_against_numpy(rng, feature, dtype):
    lazy, reference = FEATURES[feature]
    a = _inputs(rng, dtype)
    K = lazy(*_symbols(a))
    terms = _terms(K, reference, a)
    for axis in (0, 1):
        out = K.sum(axis)
        expected = np.dtype(dtype) if K.is_complex else np.dtype(REAL[dtype])
        assert out.dtype == expected, (out.dtype, expected)
        _check(out, terms, axis, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["complex64", "complex128"])
def test_matmul_with_complex_vectors(rng, dtype):
    a = _inputs(rng, dtype)
    x, y, u, v = _grid(a)
    real_K = (-((Vi(a["u"]) - Vj(a["v"])) ** 2).sum(-1)).exp()
    complex_K = (Vi(a["x"]) * Vj(a["y"]).conj()).sum(-1)
    dense_real = np.exp(-((u - v) ** 2).sum(-1))
    dense_complex = (x * np.conj(y)).sum(-1)
    b = _complex(rng, (N, 2), dtype)
    w = rng.normal(size=(N,)).astype(REAL[dtype])
    for K, dense in ((real_K, dense_real), (complex_K, dense_complex)):
        for rhs in (b, b[:, 0]):
            out = K @ rhs
            assert out.dtype == np.dtype(dtype)
            terms = dense[:, :, None] * rhs.astype(np.complex128).reshape(1, N, -1)
            _check(out.reshape(M, -1), terms, 1, dtype)
    out = complex_K @ w  # a complex K times a real vector
    _check(out[:, None], dense_complex[:, :, None] * w[None, :, None], 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["complex64", "complex128"])
def test_sumsoftmaxweight_with_complex_weights(rng, dtype):
    a = _inputs(rng, dtype)
    X, Y, U, V = _symbols(a)
    x, y, u, v = _grid(a)
    scores = -((u - v) ** 2).sum(-1)  # (M, N)
    weights = x * np.conj(y) + 1j * v  # (M, N, D)
    for axis in (0, 1):
        out = (-U.sqdist(V)).sumsoftmaxweight(X * Y.conj() + V.imag2complex(), axis=axis)
        p = np.exp(scores - scores.max(axis, keepdims=True))
        p /= p.sum(axis, keepdims=True)
        assert out.dtype == np.dtype(dtype)
        _check(out, p[..., None] * weights, axis, dtype)
    if dtype == np.complex128:  # differentiable in the scores and the complex weight
        def loss(x, u, lazy):
            if lazy:
                out = (-Vi(u).sqdist(V)).sumsoftmaxweight(Vi(x) * Y.conj(), axis=1)
            else:
                s = -((u[:, None] - a["v"][None]) ** 2).sum(-1)
                out = (jax.nn.softmax(s, axis=1)[..., None] * x[:, None]
                       * jnp.conj(a["y"])[None]).sum(1)
            return jnp.sum(jnp.abs(out) ** 2)
        for k in (0, 1):
            g = jax.grad(loss, argnums=k)(a["x"], a["u"], True)
            ref = jax.grad(loss, argnums=k)(a["x"], a["u"], False)
            np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-12 * float(np.abs(ref).max()))


def test_pykeops_names_and_keywords(rng):
    a = _inputs(rng, np.complex128)
    X, Y, U, V = _symbols(a)
    z = X * Y.conj()
    assert (z.ndim, z.dim(), z.nbatchdims, z.batchdims) == (D, 3, 0, None)
    assert z.dtype == np.complex128 and z.sum(-1).ndim == 1
    ref = z.sum(1)
    np.testing.assert_array_equal(z.sum_reduction(axis=1), ref)
    np.testing.assert_array_equal(z.reduction("Sum", axis=1), ref)
    np.testing.assert_array_equal(z.sum(dim=1, backend="auto", dtype_acc="float64"), ref)
    with pytest.raises(TypeError, match="^logsumexp: not defined for a complex LazyTensor"):
        z.logsumexp_reduction(axis=1)
    with pytest.raises(TypeError, match="out= and call=False are not supported"):
        z.sum(1, out=np.zeros((M, D), np.complex128))
    with pytest.raises(TypeError, match="out= and call=False are not supported"):
        (-U.sqdist(V)).sumsoftmaxweight(z, axis=1, call=False)
    with pytest.raises(NotImplementedError, match="ranges"):
        z.ranges = (np.zeros((1, 2), np.int32),) * 6


def test_parameters_and_3d_operands(rng):
    p = _complex(rng, (D,), np.complex128)
    x = _complex(rng, (M, 1, D), np.complex128)
    y = _complex(rng, (1, N, D), np.complex128)
    K = LazyTensor(x) * LazyTensor(y) + Pm(p) * Pm(jnp.asarray(0.5 + 1j)) - Pm(2j)
    assert isinstance(K, ComplexLazyTensor) and K.shape == (M, N, D)
    terms = x * y + p * (0.5 + 1j) - 2j
    _check(K.sum(1), terms, 1, np.complex128)
    _check(K.sum(0), terms, 0, np.complex128)
    KT = K.T  # transposed, not conjugated
    assert KT.shape == (N, M, D) and len(KT.re.variables) == len(K.re.variables)
    _check(KT.sum(1), terms, 0, np.complex128)


@pytest.mark.parametrize("m, n, d", [(1, 1, 1), (1, 9, 40), (11, 1, 2)])
def test_edge_sizes(rng, m, n, d):
    x = _complex(rng, (m, d), np.complex128)
    y = _complex(rng, (n, d), np.complex128)
    K = (Vi(x) * Vj(y) * 0.3).exp() * Vj(y).conj() + 1j
    terms = np.exp(x[:, None] * y[None] * 0.3) * np.conj(y[None]) + 1j
    for axis in (0, 1):
        _check(K.sum(axis), terms, axis, np.complex128)


def test_batch_dims(rng):
    x = _complex(rng, (2, M, 1, D), np.complex128)
    y = _complex(rng, (1, 1, N, D), np.complex128)
    K = (LazyTensor(x) * LazyTensor(y)).exp()
    assert K.shape == (2, M, N, D)
    out = K.sum(2)  # KeOps' axis with one batch dim: 2 is j
    ref = np.exp(x * y).sum(2)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def _kernel_sum(x, y, b):
    """A complex Gaussian-Fourier kernel product over j: Σ_j exp(-|x_i - y_j|^2 + i <x_i, y_j>) b_j
    with x and y real parts of the complex points and conj() in the phase."""
    X, Y = Vi(x), Vj(y)
    K = (-((X - Y).abs() ** 2).sum(-1) + 1j * (X * Y.conj()).real.sum(-1)).exp()
    return K @ b


def test_jit_and_vmap(rng):
    x = _complex(rng, (M, 2), np.complex128)
    y = _complex(rng, (N, 2), np.complex128)
    b = _complex(rng, (N,), np.complex128)
    eager = _kernel_sum(x, y, b)
    X, Y = x[:, None], y[None]
    dense = np.exp(-(np.abs(X - Y) ** 2).sum(-1) + 1j * (X * np.conj(Y)).real.sum(-1)) @ b
    np.testing.assert_allclose(eager, dense, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(_kernel_sum)(x, y, b), dense, rtol=1e-12)
    bs = _complex(rng, (3, N), np.complex128)
    batched = jax.vmap(_kernel_sum, in_axes=(None, None, 0))(x, y, bs)
    np.testing.assert_allclose(batched, np.stack([_kernel_sum(x, y, bk) for bk in bs]),
                               rtol=1e-12)
    # A ComplexLazyTensor is a pytree: it crosses jit as an argument.
    K = Vi(x) * Vj(y) + 1j
    np.testing.assert_allclose(jax.jit(lambda K: K.sum(1))(K), K.sum(1), rtol=1e-12)


def test_gradients_follow_jax_conventions(rng):
    x = _complex(rng, (M, 2), np.complex128)
    y = _complex(rng, (N, 2), np.complex128)
    u = rng.normal(size=(M, 2))
    b = _complex(rng, (N,), np.complex128)

    def f(x, y, u, b):
        X, Y, U = Vi(x), Vj(y), Vi(u)
        K = ((X / (Y + 3)).exp() * U.exp1j() + X.conj() * Y + X.real.imag2complex() * Y.imag
             + (X - Y).exp1j() * 0.5).sum(-1)
        return (K @ b) + (X * Y).abs().sum(1).sum() + (X - Y + 6).angle().sum(0).sum()

    def dense_f(x, y, u, b):
        X, Y, U = x[:, None], y[None], u[:, None]
        K = (jnp.exp(X / (Y + 3)) * jnp.exp(1j * U) + jnp.conj(X) * Y + 1j * X.real * Y.imag
             + jnp.exp(1j * (X - Y)) * 0.5).sum(-1)
        return K @ b + jnp.abs(X * Y).sum((0, 1)).sum() + jnp.angle(X - Y + 6).sum((0, 1)).sum()

    np.testing.assert_allclose(f(x, y, u, b), dense_f(x, y, u, b), rtol=1e-12)
    # Same gradients as the jnp formula, for a real loss of complex inputs.
    loss = lambda g: lambda *args: jnp.sum(jnp.abs(g(*args)) ** 2)  # noqa: E731
    for k in range(4):
        ref = jax.grad(loss(dense_f), argnums=k)(x, y, u, b)
        np.testing.assert_allclose(jax.grad(loss(f), argnums=k)(x, y, u, b), ref, rtol=1e-10,
                                   atol=1e-12 * float(np.abs(ref).max()))
    check_grads(f, (x, y, u, b), order=1, modes=("fwd", "rev"))


def test_second_order_gradients(rng):
    x = _complex(rng, (M, 1), np.complex128)
    y = _complex(rng, (N, 1), np.complex128)

    def f(x, y):
        return ((Vi(x) - Vj(y)) ** 2 * -0.5).exp().sum(1)

    check_grads(f, (x, y), order=2, modes=("fwd", "rev"))


def test_complex64_gradient_matches_jnp(rng):
    x = _complex(rng, (M, D), np.complex64)
    y = _complex(rng, (N, D), np.complex64)
    g = jax.grad(lambda x: jnp.sum(jnp.abs((Vi(x) * Vj(y)).exp().sum(1)) ** 2))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.abs(jnp.exp(x[:, None] * y[None]).sum(1)) ** 2))(x)
    assert g.dtype == np.complex64
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_errors(rng):
    x = Vi(_complex(rng, (M, D), np.complex64))
    y = Vj(_complex(rng, (N, 2), np.complex64))
    for method, args in (("logsumexp", (1,)), ("min", (0,)), ("argKmin", (2, 1)),
                         ("sumsoftmaxweight", (x, 1)), ("solve", (np.zeros(M),))):
        with pytest.raises(TypeError, match=f"^{method}: not defined for a complex LazyTensor"):
            getattr(x, method)(*args)
    with pytest.raises(ValueError, match=r"complex x \* y: operand dimensions 3 and 2"):
        x * y
    with pytest.raises(TypeError, match="Atan2: not defined between a real and a complex"):
        Vj(np.ones((N, 1), np.float32)).atan2(Pm(1j))
    with pytest.raises(TypeError, match="a complex operand where a real LazyTensor is expected"):
        Vj(np.ones((N, 1), np.float32)) ** Pm(1j)
    with pytest.raises(TypeError, match="complex64 operand counts as float32"):
        (x * Vj(np.ones((N, 1), np.float64))).sum(1)
    with pytest.raises(ValueError, match=r"complex LazyTensor argument of shape \(7, 3\).*"
                                         "ambiguous"):
        LazyTensor(np.ones((M, D), np.complex64))
    with pytest.raises(ValueError, match=r"K @ v: v has shape \(4,\)"):
        (x.sum(-1) * y.sum(-1)) @ np.ones(4, np.complex64)
    with pytest.raises(TypeError, match="real2complex: this LazyTensor is already complex"):
        x.real2complex()


@pytest.mark.parametrize("dtype", DTYPES, ids=["complex64", "complex128"])
def test_cuda_interpreter_emulated_on_the_host(rng, dtype):
    """The CUDA tile interpreter's own per-thread code (run on the host) on complex formulas:
    real and imaginary halves of the operands side by side in its registers."""
    a = _inputs(rng, dtype)
    cases = [FEATURES[name] for name in ("div", "exp", "broadcast_dim_1", "angle")]
    with on_emulated_gpu():
        for lazy, reference in cases:
            K = lazy(*_symbols(a))
            for axis in (0, 1):
                _check(K.sum(axis), _terms(K, reference, a), axis, dtype)


@pytest.mark.skipif(not _native.has_cuda(), reason="jaxkeops._jaxkeops_cuda was not built")
def test_complex_reduction_lowers_to_one_cuda_custom_call(rng):
    a = _inputs(rng, np.complex64)
    fn = lambda x, y: ((Vi(x) * Vj(y).conj()).exp().sum(-1) @ y[:, 0])  # noqa: E731
    text = jax.jit(fn).trace(a["x"], a["y"]).lower(lowering_platforms=("cuda",)).as_text()
    calls = sum(text.count(f"stablehlo.custom_call @{t}(")
                for t in ("jaxkeops_reduce", "jaxkeops_fused"))
    assert calls == 1, text[:2000]
    assert "stablehlo.while" not in text  # the native call, not the pure-JAX fallback


def test_api_page_lists_every_public_name():
    """docs/api.md's complex section names every public attribute of ComplexLazyTensor."""
    text = (pathlib.Path(__file__).parent.parent / "docs" / "api.md").read_text()
    section = text[text.index("## Complex LazyTensors"):]
    section = section[:section.index("\n## ")]
    names = {name for name in vars(ComplexLazyTensor)
             if not name.startswith("_") or (name.startswith("__") and name.endswith("__"))}
    names -= {"__init__", "__dict__", "__doc__", "__module__", "__weakref__",
              "__array_priority__"}
    names |= {"re", "im"}
    missing = sorted(n for n in names if f"`{n}`" not in section and f"`{n}(" not in section
                     and f", `{n}`" not in section)
    assert not missing, f"docs/api.md's complex section does not list {missing}"
