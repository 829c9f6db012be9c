"""jax.export of jaxkeops reductions: serialize, deserialize, call; fixed and symbolic shapes;
gradients; the reloading process must import jaxkeops."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxkeops
from jaxkeops import Vi, Vj

pytest.importorskip("flatbuffers")  # jax's Exported serialization needs it (test extra)


def _gaussian_sum(x, y, b):
    return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(axis=1)


def _loss(x, y, b):
    return (_gaussian_sum(x, y, b) ** 2).sum() + Vi(x).sqdist(Vj(y)).logsumexp(axis=0).sum()


def _round_trip(fn, *args_specs):
    exported = export.export(jax.jit(fn), disabled_checks=jaxkeops.export_disabled_checks())(
        *args_specs)
    return export.deserialize(exported.serialize())


def _inputs(rng, m, n, dtype=np.float32):
    return (rng.standard_normal((m, 3)).astype(dtype), rng.standard_normal((n, 3)).astype(dtype),
            rng.standard_normal((n, 2)).astype(dtype))


def test_export_with_fixed_shapes(rng):
    x, y, b = _inputs(rng, 37, 53)
    restored = _round_trip(_gaussian_sum, x, y, b)
    np.testing.assert_allclose(restored.call(x, y, b), _gaussian_sum(x, y, b), rtol=1e-6)
    grad = jax.grad(_loss, argnums=(0, 1, 2))
    restored_grad = _round_trip(grad, x, y, b)
    for got, expected in zip(restored_grad.call(x, y, b), grad(x, y, b)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_export_with_symbolic_shapes(rng):
    m, n = export.symbolic_shape("m, n")
    specs = (jax.ShapeDtypeStruct((m, 3), np.float32), jax.ShapeDtypeStruct((n, 3), np.float32),
             jax.ShapeDtypeStruct((n, 2), np.float32))
    restored = _round_trip(_gaussian_sum, *specs)
    restored_grad = _round_trip(jax.grad(_loss, argnums=(0, 1, 2)), *specs)
    for M, N in [(1, 1), (37, 53), (300, 7)]:  # one exported function, many sizes
        x, y, b = _inputs(rng, M, N)
        np.testing.assert_allclose(restored.call(x, y, b), _gaussian_sum(x, y, b), rtol=1e-6)
        for got, expected in zip(restored_grad.call(x, y, b), jax.grad(_loss, (0, 1, 2))(x, y, b)):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_export_with_symbolic_batch_and_kmin(rng):
    bsz, m, n = export.symbolic_shape("b, m, n")

    def knn(x, y):
        return jax.vmap(lambda x, y: Vi(x).sqdist(Vj(y)).argKmin(K=2, axis=1))(x, y)

    restored = _round_trip(knn, jax.ShapeDtypeStruct((bsz, m, 3), np.float32),
                           jax.ShapeDtypeStruct((bsz, n, 3), np.float32))
    x = rng.standard_normal((4, 11, 3)).astype(np.float32)
    y = rng.standard_normal((4, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(restored.call(x, y), knn(x, y))


def test_deserializing_process_must_import_jaxkeops(rng, tmp_path):
    x, y, b = _inputs(rng, 5, 4)
    blob = tmp_path / "gaussian.bin"
    blob.write_bytes(_round_trip(_gaussian_sum, x, y, b).serialize())
    code = (
        "import sys, numpy as np, jax\n"
        "from jax import export\n"
        f"e = export.deserialize(bytearray(open({str(blob)!r}, 'rb').read()))\n"
        "args = [np.ones((5, 3), np.float32), np.ones((4, 3), np.float32),"
        " np.ones((4, 2), np.float32)]\n"
        "if sys.argv[1] == 'import': import jaxkeops\n"
        "print(np.asarray(e.call(*args)).sum())\n"
    )
    # Run outside the repository, so that the installed package is imported, not the sources.
    run = dict(capture_output=True, text=True, cwd=tmp_path)
    without = subprocess.run([sys.executable, "-c", code, "no"], **run)
    assert without.returncode != 0 and "jaxkeops_reduce" in without.stderr
    with_import = subprocess.run([sys.executable, "-c", code, "import"], **run)
    assert with_import.returncode == 0, with_import.stderr
    assert float(with_import.stdout) == pytest.approx(5 * 4 * 2, rel=1e-6)
