"""The CPU executor's thread count (jaxkeops/cpu_threads.py): JAXKEOPS_NUM_THREADS and
set_cpu_threads, and results that do not depend on it beyond float rounding."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxkeops

# One process per thread count: the environment variable is read when jaxkeops is imported.
# Few rows and a long inner axis, so that the executor splits the inner axis into a number of
# ranges that depends on the thread count (4 per thread, at least 4·256 columns each).
_CHILD = """
import json, sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jaxkeops
from jaxkeops import Vi, Vj
data = np.load(sys.argv[1])
x, y, b = data["x"], data["y"], data["b"]
gauss = jax.jit(lambda x, y, b: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1))
nearest = jax.jit(lambda x, y: Vi(x).sqdist(Vj(y)).argmin(axis=1))
np.savez(sys.argv[2], sum32=gauss(x.astype(np.float32), y.astype(np.float32),
                                  b.astype(np.float32)),
         sum64=gauss(x, y, b), argmin=nearest(x, y))
print(json.dumps({"threads": jaxkeops.cpu_threads()}))
"""


def _run_child(tmp_path, inputs, threads):
    out = tmp_path / f"out{threads}.npz"
    env = dict(os.environ, JAXKEOPS_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu")
    # Outside the repository, so that the child imports the installed package.
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(inputs), str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child with {threads} thread(s) failed:\n{proc.stderr}"
    reported = json.loads(proc.stdout.strip().splitlines()[-1])["threads"]
    assert reported == threads, f"JAXKEOPS_NUM_THREADS={threads} but cpu_threads() = {reported}"
    return np.load(out)


def test_results_do_not_depend_on_thread_count(tmp_path, rng):
    M, N, D = 5, 10007, 3
    # Points on a coarse grid: many equal distances, so argmin's tie rule (lowest j) is tested
    # across the boundaries of the inner ranges that the threads split.
    x = rng.integers(-2, 3, size=(M, D)).astype(np.float64)
    y = rng.integers(-2, 3, size=(N, D)).astype(np.float64)
    b = rng.normal(size=(N, 1))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x, y=y, b=b)
    one, two = _run_child(tmp_path, inputs, 1), _run_child(tmp_path, inputs, 2)

    sqdist = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    dense_sum = np.exp(-sqdist) @ b
    dense_argmin = np.argmin(sqdist, axis=1)  # first index of the minimum
    for result in (one, two):
        np.testing.assert_allclose(result["sum64"], dense_sum, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(result["sum32"], dense_sum, rtol=2e-5, atol=2e-5)
        np.testing.assert_array_equal(result["argmin"][:, 0], dense_argmin)
    np.testing.assert_allclose(one["sum32"], two["sum32"], rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(one["argmin"], two["argmin"])


def test_bad_environment_value_is_a_clear_error(tmp_path):
    env = dict(os.environ, JAXKEOPS_NUM_THREADS="zero", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", "import jaxkeops"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "JAXKEOPS_NUM_THREADS must be a positive integer" in proc.stderr
    assert "'zero'" in proc.stderr


def test_set_cpu_threads_in_process(rng):
    x = rng.normal(size=(3, 2)).astype(np.float32)
    y = rng.normal(size=(2000, 2)).astype(np.float32)
    reduce = lambda: np.asarray(jaxkeops.Vi(x).sqdist(jaxkeops.Vj(y)).sum(1))  # noqa: E731
    before = jaxkeops.cpu_threads()
    try:
        assert jaxkeops.set_cpu_threads(1) == before
        assert jaxkeops.cpu_threads() == 1
        single = reduce()
        jaxkeops.set_cpu_threads(3)
        assert jaxkeops.cpu_threads() == 3
        np.testing.assert_allclose(reduce(), single, rtol=1e-5)
    finally:
        jaxkeops.set_cpu_threads(before)
    np.testing.assert_allclose(single, ((x[:, None] - y[None]) ** 2).sum(-1).sum(1)[:, None],
                               rtol=1e-4)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"set_cpu_threads: n must be a positive int, got"):
            jaxkeops.set_cpu_threads(bad)


def test_changing_the_count_while_reductions_run(rng):
    """Callers on several threads while the count goes up and down: every result right, no
    deadlock (workers beyond the count finish their job, then sleep)."""
    import concurrent.futures

    import jax

    # Integer coordinates: exact float32 distances, ties resolved to the lowest index.
    x = rng.integers(-3, 4, size=(7, 3)).astype(np.float32)
    y = rng.integers(-3, 4, size=(5003, 3)).astype(np.float32)
    f = jax.jit(lambda x, y: jaxkeops.Vi(x).sqdist(jaxkeops.Vj(y)).argmin(axis=1))
    expected = np.argmin(((x[:, None] - y[None]) ** 2).sum(-1), axis=1)[:, None]
    before = jaxkeops.cpu_threads()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as callers:
            futures = []
            for count in (3, 1, 2, 4, 1, 2):
                jaxkeops.set_cpu_threads(count)
                futures += [callers.submit(lambda: np.asarray(f(x, y))) for _ in range(3)]
            for future in futures:
                np.testing.assert_array_equal(future.result(timeout=60), expected)
    finally:
        jaxkeops.set_cpu_threads(before)
