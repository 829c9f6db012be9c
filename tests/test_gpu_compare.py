"""The GPU comparison benchmark (jaxkeops/benchmarks/gpu_compare.py), on whatever backend is
the default (the CPU here): its correctness check must catch wrong outputs, and a tiny run must
produce a table with every jax candidate checked."""

import numpy as np
import pytest

from jaxkeops.benchmarks import gpu_compare


@pytest.mark.parametrize("name", list(gpu_compare.MAKERS))
def test_check_accepts_the_reference_and_rejects_wrong_outputs(name):
    rng = np.random.default_rng()
    M, N = 37, 29
    w = gpu_compare.MAKERS[name](M, N)
    arrays = w.arrays(rng, M, N, w.D)
    rows = np.array([0, 5, M - 1])
    every = np.arange(M)
    if w.kind == "indices":
        x, y = arrays
        d = ((x[:, None, :].astype(np.float64) - y[None]) ** 2).sum(-1)
        good = np.argsort(d, axis=1)[:, :gpu_compare.K]
        assert gpu_compare._check(w, good, arrays, rows)[0]
        wrong = good.copy()
        wrong[M - 1] = np.argsort(d[M - 1])[-gpu_compare.K:]  # the K farthest instead
        assert not gpu_compare._check(w, wrong, arrays, rows)[0]
        out_of_range = good.copy()
        out_of_range[3, 0] = N
        assert not gpu_compare._check(w, out_of_range, arrays, rows)[0]
    else:
        good = w.reference(every, *arrays).astype(np.float32)
        ok, err, _ = gpu_compare._check(w, good, arrays, rows)
        assert ok and err < 1e-6
        wrong = good.copy()
        wrong[5] += 1e-2 * np.abs(good).max()
        assert not gpu_compare._check(w, wrong, arrays, rows)[0]
        unwritten = good.copy()
        unwritten[11] = np.nan  # a row outside the sample: every element is checked for NaN
        assert not gpu_compare._check(w, unwritten, arrays, rows)[0]


def test_tiny_run_checks_every_jax_candidate(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_compare, "REPEATS", 2)
    monkeypatch.setenv("JAXKEOPS_GPU_COMPARE_LOG", str(tmp_path / "log.jsonl"))
    table = gpu_compare.report(scale=(53, 41), names=["gaussian", "argkmin"])
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2 + 1  # header, rule, two workloads, first call
    for line in lines[2:4]:
        assert "53 × 41" in line
        assert "jaxkeops ok" in line and "dense jnp ok" in line and "row-chunked jnp ok" in line
        assert "FAIL" not in line and "✗" not in line
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert sum('"candidate": "jaxkeops"' in line for line in log) == 2
