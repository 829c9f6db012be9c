"""Batch dimensions (KeOps style) and jax.vmap, against dense jnp in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkeops import LazyTensor, Pm, Vi, Vj


def gaussian_batch_dense(x, y, b, axis):
    K = np.exp(-((x - y) ** 2).sum(-1))[..., None]  # (..., M, N, 1)
    return (K * b).sum(axis)


@pytest.mark.parametrize("axis", [2, 3])
def test_keops_gaussian_batch(rng, axis):
    # As KeOps' test_lazytensor_gaussian_batch: batch shapes (3,4), (3,1), (1,4) broadcast.
    x = rng.normal(size=(3, 4, 20, 1, 2))
    y = rng.normal(size=(3, 1, 1, 25, 2))
    b = rng.normal(size=(1, 4, 1, 25, 3)) if axis == 3 else rng.normal(size=(1, 4, 20, 1, 3))
    K = (-((LazyTensor(x) - LazyTensor(y)) ** 2).sum(-1)).exp()
    KB = K * LazyTensor(b)
    assert KB.shape == (3, 4, 20, 25, 3)
    out = KB.sum(axis=axis)
    np.testing.assert_allclose(out, gaussian_batch_dense(x, y, b, axis), rtol=1e-12, atol=1e-12)


def test_batch_parameter_varies_along_batch(rng):
    x = rng.normal(size=(2, 7, 1, 3))
    y = rng.normal(size=(1, 1, 9, 3))
    s = rng.uniform(0.5, 2.0, size=(2, 1, 1, 1))
    out = (-LazyTensor(x).sqdist(LazyTensor(y)) * LazyTensor(s)).exp().sum(2)
    ref = np.exp(-((x - y) ** 2).sum(-1, keepdims=True) * s).sum(2)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_incompatible_batch_shapes_error():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        LazyTensor(np.ones((3, 5, 1, 2))) - LazyTensor(np.ones((2, 1, 4, 2)))


def test_batch_axis_error_names_expected_axes():
    F = LazyTensor(np.ones((3, 5, 1, 2))).sqdist(LazyTensor(np.ones((3, 1, 4, 2))))
    with pytest.raises(ValueError, match=r"axis=0.*expected 1.*or 2"):
        F.sum(0)


def f_keops(x, y, s):
    return ((-Vi(x).sqdist(Vj(y)) * Pm(s)).exp() * Vj(y)).sum(1)


def f_dense(x, y, s):
    return jnp.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * s[0]) @ y


@pytest.mark.parametrize(
    "in_axes,out_axes",
    [((0, None, None), 0), ((None, None, 0), 0), ((0, None, 0), 0), ((1, 0, None), 1),
     ((0, 0, 0), 1)],
)
def test_vmap(rng, in_axes, out_axes):
    B, M, N, D = 4, 11, 13, 3
    shapes = {0: (M, D), 1: (N, D), 2: (1,)}
    args = []
    for k, ax in enumerate(in_axes):
        shape = shapes[k]
        if ax is not None:
            shape = shape[:ax] + (B,) + shape[ax:]
        args.append(rng.uniform(0.2, 1.0, size=shape))
    out = jax.vmap(f_keops, in_axes, out_axes)(*args)
    ref = jax.vmap(f_dense, in_axes, out_axes)(*args)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


def test_nested_vmap(rng):
    x = rng.normal(size=(2, 3, 10, 2))
    y = rng.normal(size=(3, 12, 2))
    s = rng.uniform(0.5, 1, size=(2, 1))
    inner = lambda f: jax.vmap(f, (0, 0, None))  # noqa: E731
    outer = lambda f: jax.vmap(inner(f), (0, None, 0))  # noqa: E731
    np.testing.assert_allclose(outer(f_keops)(x, y, s), outer(f_dense)(x, y, s), rtol=1e-12)


def loss(f):
    return lambda x, y, s: jnp.sum(jnp.sin(f(x, y, s)))


def test_vmap_of_grad_and_grad_of_vmap(rng):
    x = rng.normal(size=(3, 10, 2))
    y = rng.normal(size=(12, 2))
    s = rng.uniform(0.5, 1, size=(3, 1))
    for argnum in range(3):
        vg = jax.vmap(jax.grad(loss(f_keops), argnum), (0, None, 0))(x, y, s)
        vg_ref = jax.vmap(jax.grad(loss(f_dense), argnum), (0, None, 0))(x, y, s)
        np.testing.assert_allclose(vg, vg_ref, rtol=1e-10, atol=1e-12)
    gv = lambda f: jax.grad(lambda y: jnp.sum(jax.vmap(f, (0, None, 0))(x, y, s) ** 2))  # noqa: E731
    np.testing.assert_allclose(gv(f_keops)(y), gv(f_dense)(y), rtol=1e-10)


def test_jit_vmap_hessian(rng):
    x = rng.normal(size=(3, 8, 2))
    y = rng.normal(size=(9, 2))
    s = rng.uniform(0.5, 1, size=(3, 1))
    h = lambda f: jax.jit(jax.vmap(jax.hessian(loss(f), 0), (0, None, 0)))  # noqa: E731
    np.testing.assert_allclose(h(f_keops)(x, y, s), h(f_dense)(x, y, s), rtol=1e-9, atol=1e-12)


def test_vmap_lowers_to_one_custom_call(rng):
    x = rng.normal(size=(64, 30, 3)).astype(np.float32)
    y = rng.normal(size=(64, 40, 3)).astype(np.float32)
    s = np.ones((64, 1), np.float32)
    hlo = jax.jit(jax.vmap(f_keops)).lower(x, y, s).as_text()
    assert hlo.count('custom_call_target = "jaxkeops_reduce"') + hlo.count(
        "@jaxkeops_reduce") == 1, hlo


def test_matmul_with_batch_dims(rng):
    x = rng.normal(size=(3, 5, 1, 2))
    y = rng.normal(size=(1, 1, 7, 2))
    K = (-((LazyTensor(x) - LazyTensor(y)) ** 2).sum(-1)).exp()
    Kd = np.exp(-((x - y) ** 2).sum(-1))  # (3, 5, 7)
    v = rng.normal(size=(3, 7, 4))
    np.testing.assert_allclose(K @ v, Kd @ v, rtol=1e-12)
    v1 = rng.normal(size=(1, 7))  # broadcast along the batch, one column
    np.testing.assert_allclose(K @ v1, np.einsum("bmn,n->bm", Kd, v1[0]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(3, 7,\) or \(3, 7, E\)"):
        K @ rng.normal(size=(2, 7))
