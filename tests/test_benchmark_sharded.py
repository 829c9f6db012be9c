"""`python -m jaxkeops.benchmarks sharded` at a tiny size, and its reading of the pairs per device
off compiled HLO."""

import re
import subprocess
import sys

import jax
import numpy as np

from jaxkeops import Vi, Vj
from jaxkeops.benchmarks.sharded import custom_call_pairs, operand_categories


def test_sharded_benchmark_prints_a_ratio_per_device_count(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxkeops.benchmarks", "sharded", "--size",
                           "34", "22"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\| (\d) \| (\d+) \|.*\| ([^|]+) \| ([^|]+) \|$", proc.stdout, re.M)
    assert [r[0] for r in rows] == ["1", "2"], proc.stdout
    ratios = {}
    for devices, threads, shapes, ratio in rows:
        assert threads == "1", proc.stdout  # one executor thread per device
        assert re.fullmatch(r"\d+ × \d+(, \d+ × \d+)*", shapes.strip()), proc.stdout
        ratios[devices] = float(ratio)
    assert ratios["1"] == 1.0  # one device computes all M·N pairs
    # Split across both devices (1.00) or every device doing all the work (2.00) are both honest
    # readings; anything else would mean the HLO was misread.
    assert ratios["2"] in (1.0, 2.0), proc.stdout


def test_custom_call_pairs_reads_outer_and_inner_rows(rng):
    x = rng.normal(size=(13, 3)).astype(np.float32)
    y = rng.normal(size=(7, 3)).astype(np.float32)

    def over_j(x, y, b):  # outer rows: x's 13; inner: y's and b's 7
        return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(axis=1)

    def over_i(x, y, b):  # outer rows: y's 7; inner: x's and b's 13
        return ((-Vi(x).sqdist(Vj(y))).exp() * Vi(b)).sum(axis=0)

    for f, b, expected in ((over_j, rng.normal(size=(7, 2)), [(13, 7)]),
                           (over_i, rng.normal(size=(13, 2)), [(7, 13)])):
        b = b.astype(np.float32)
        var_cats, axis = operand_categories(f, x, y, b)
        hlo = jax.jit(f).lower(x, y, b).compile().as_text()
        assert custom_call_pairs(hlo, var_cats, axis) == expected, f.__name__

    # A batch of 2 problems: 2 × 13 outer rows, each against 7 inner rows.
    batched = jax.vmap(over_j)
    xs, ys = np.stack([x, x + 1]), np.stack([y, y - 1])
    bs = rng.normal(size=(2, 7, 2)).astype(np.float32)
    var_cats, axis = operand_categories(batched, xs, ys, bs)
    hlo = jax.jit(batched).lower(xs, ys, bs).compile().as_text()
    assert custom_call_pairs(hlo, var_cats, axis) == [(26, 7)]
