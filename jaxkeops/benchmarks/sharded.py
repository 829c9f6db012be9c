"""`python -m jaxkeops.benchmarks sharded`: a Gaussian sum with x, y and b split by rows over 1
and over 2 forced CPU devices, each configuration in its own process (XLA_FLAGS are read when
jax starts) with one executor thread per device (JAXKEOPS_NUM_THREADS=1).

Besides the wall and process CPU times of a call, it reports the pairs each device computes,
read off the compiled per-device HLO: every jaxkeops custom call's outer rows × inner rows,
taken from the shapes of its operands of the outer and inner categories. Over M·N/n that ratio
is 1.00 when the work is split across the n devices and n when every device computes the whole
problem (operands all-gathered).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np

DEVICE_COUNTS = (1, 2)
REPEATS = 3
TIMEOUT_S = 1800
_TARGET = "jaxkeops_reduce"  # the CPU executor's (its operands are the formula's variables)
_RESULT_PREFIX = "SHARDED_RESULT "
NOTE = ("each configuration runs in its own process with JAXKEOPS_NUM_THREADS=1 (one executor "
        "thread per device); the pairs per device are read off the compiled per-device HLO "
        "(every jaxkeops custom call's outer rows × inner rows): 1.00 = the work is split, "
        "n = every device computes the whole problem")


def _gaussian_sum(x, y, b):
    from jaxkeops import Vi, Vj
    return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(axis=1)


def operand_categories(f, *args) -> tuple[tuple[int, ...], int]:
    """(var_cats, axis) of the one keops_reduce in f's jaxpr."""
    import jax
    eqns = [e for e in jax.make_jaxpr(f)(*args).eqns if e.primitive.name == "keops_reduce"]
    assert len(eqns) == 1, f"expected one keops_reduce in the benchmark, found {len(eqns)}"
    return tuple(eqns[0].params["var_cats"]), eqns[0].params["axis"]


_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")
_CONSTRAINTS = re.compile(r"operand_layout_constraints=\{((?:[^{}]|\{[^{}]*\})*)\}")


def custom_call_pairs(hlo_text: str, var_cats, axis: int) -> list[tuple[int, int]]:
    """(outer rows, inner rows) of every jaxkeops_reduce custom call in a compiled HLO module:
    the second-to-last dimension of its operands of the outer / inner category, the outer one
    times the batch dims (one pair per batch entry, outer row and inner row)."""
    outer_cat, inner_cat = (0, 1) if axis == 1 else (1, 0)
    calls = []
    for line in hlo_text.splitlines():
        if "custom-call(" not in line or f'custom_call_target="{_TARGET}"' not in line:
            continue
        constraints = _CONSTRAINTS.search(line)
        if constraints is None:
            raise ValueError(f"no operand shapes in this custom call: {line[:300]}")
        shapes = [tuple(int(d) for d in dims.split(",") if d)
                  for dims in _SHAPE.findall(re.sub(r"\{[^{}]*\}", "", constraints.group(1)))]
        if len(shapes) != len(var_cats):
            raise ValueError(f"a jaxkeops custom call with {len(shapes)} operands for "
                             f"{len(var_cats)} variables: {line[:300]}")

        def rows(cat, with_batch):
            sizes = {int(np.prod(s[:-1])) if with_batch else s[-2]
                     for s, c in zip(shapes, var_cats) if c == cat}
            return max(sizes) if sizes else 1
        calls.append((rows(outer_cat, True), rows(inner_cat, False)))
    return calls


def _child(n_devices: int, M: int, N: int, repeats: int) -> None:
    """Runs in the configuration's own process: times the sharded Gaussian sum and prints one
    line of JSON."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxkeops import cpu_threads

    devices = jax.devices()
    assert len(devices) == n_devices, f"asked for {n_devices} devices, jax has {len(devices)}"
    rng = np.random.default_rng(0)
    x, y = (rng.normal(size=(n, 3)).astype(np.float32) for n in (M, N))
    b = rng.normal(size=(N, 1)).astype(np.float32)
    rows = NamedSharding(Mesh(np.array(devices), ("devices",)), P("devices"))
    args = [jax.device_put(a, rows) for a in (x, y, b)]
    f = jax.jit(_gaussian_sum)
    var_cats, axis = operand_categories(_gaussian_sum, *args)
    calls = custom_call_pairs(f.lower(*args).compile().as_text(), var_cats, axis)
    first, wall, cpu = _time_calls(lambda: f(*args), repeats)
    print(_RESULT_PREFIX + json.dumps({
        "devices": n_devices, "threads": cpu_threads(), "first": first, "median": wall,
        "cpu": cpu, "calls": calls, "pairs_per_device": sum(o * i for o, i in calls)}),
        flush=True)


def _time_calls(run, repeats: int) -> tuple[float, float, float]:
    """Seconds of the first call, then the medians of the warm calls' wall time and of this
    process's CPU time (all its threads: on a loaded machine the CPU time still tells how much
    work the devices did together)."""
    import statistics
    import time

    import jax
    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(run())
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return first, statistics.median(walls), statistics.median(cpus)


def _run_configuration(n_devices: int, M: int, N: int, repeats: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXKEOPS_NUM_THREADS="1",
               XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count="
                                           f"{n_devices}"]))
    proc = subprocess.run([sys.executable, "-m", "jaxkeops.benchmarks.sharded", str(n_devices),
                           str(M), str(N), str(repeats)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {n_devices}-device run failed (exit code {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(_RESULT_PREFIX):])


def report(M: int, N: int, repeats: int = REPEATS) -> str:
    from jaxkeops.benchmarks.harness import _seconds
    for n in DEVICE_COUNTS:
        if M % n or N % n:
            raise SystemExit(f"sharded: M={M} and N={N} must be divisible by {n} devices")
    lines = ["| devices | executor threads per device | first call | median time | "
             "median process CPU time | custom calls per device (outer × inner rows) | "
             "pairs per device / (M·N/n) |",
             "|---|---|---|---|---|---|---|"]
    for n in DEVICE_COUNTS:
        r = _run_configuration(n, M, N, repeats)
        shapes = ", ".join(f"{o} × {i}" for o, i in r["calls"]) or "none found"
        ratio = r["pairs_per_device"] / (M * N / n)
        lines.append(f"| {n} | {r['threads']} | {_seconds(r['first'])} | "
                     f"{_seconds(r['median'])} | {_seconds(r['cpu'])} | {shapes} | "
                     f"{ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    _child(*(int(a) for a in sys.argv[1:5]))
