"""`python -m jaxkeops.benchmarks gpu_compare`: jaxkeops against KeOps 2.3 (pykeops on torch) and
dense / row-chunked jnp, on jax's default backend (a GPU where one is present).

Made for tools/gpu_check.sh on a lent H200 (issue 14's acceptance sizes); `--size M N` runs
every workload at M×N instead, e.g. a dry run on the CPU. Per workload and implementation: the
first call (compilation included), then warm calls timed between synchronisations
(`block_until_ready`, `torch.cuda.synchronize`) until `repeats` calls or the candidate's time
budget is spent, median reported. Correctness, on the outputs of the first call (a fresh
buffer, the device memory freed just before filled with NaN for jax candidates) and of the last
one: every output element finite (index outputs in range), and the rows of a sample (first,
last and random rows) within 1e-3 relative error of a float64 numpy reference computed over all
j; argKmin is checked on the distances of the returned indices (ties may reorder indices).
Fresh random inputs every run. A total time budget ($JAXKEOPS_GPU_COMPARE_SECONDS, default
330 s) stops starting new candidates once spent; $JAXKEOPS_GPU_COMPARE_LOG names a JSON-lines log
of every measurement.

KeOps runs only where torch sees a CUDA GPU (pykeops's torch bindings, its default
-use_fast_math); elsewhere its column says why it was skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import Vi, Vj

K = 10
EPSILON = 0.1
SAMPLE_ROWS = 64
REPEATS = 7
BASELINE_REPEATS = 3  # the jnp baselines: slower, and only a reference
CANDIDATE_SECONDS = 25.0  # warm calls of one candidate stop after this much time
DENSE_BUDGET_BYTES = 16 * 2**30  # dense jnp's M×N temporaries


@dataclasses.dataclass
class Workload:
    name: str
    title: str
    M: int
    N: int
    D: int
    arrays: Callable[[np.random.Generator, int, int, int], tuple]  # numpy float32 inputs
    keops: Callable  # jaxkeops formula of jnp arrays
    dense_rows: Callable  # the same with the rows of x materialised against all of y (jnp)
    pykeops: Callable | None  # (LazyTensor, *torch tensors) -> torch tensor
    reference: Callable  # float64 numpy reference for some rows: (rows, *arrays) -> array
    kind: str = "values"  # "values", or "indices" (argKmin)
    dense_bytes_per_pair: int = 20


def _normal(rng, n, d, scale=1.0):
    return (rng.standard_normal((n, d)) * scale).astype(np.float32)


def _sqdist64(x_rows, y):
    x64, y64 = x_rows.astype(np.float64), y.astype(np.float64)
    return ((x64 ** 2).sum(1)[:, None] + (y64 ** 2).sum(1)[None, :] - 2 * x64 @ y64.T).clip(0)


def _sqdist_jnp(x, y):
    return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, -1)


# ---------------------------------------------------------------- the workloads

def _gaussian(M, N) -> Workload:
    return Workload(
        "gaussian", "Gaussian sum Σ_j exp(−‖x_i−y_j‖²) b_j", M, N, 3,
        lambda rng, M, N, D: (_normal(rng, M, D), _normal(rng, N, D), _normal(rng, N, 1)),
        lambda x, y, b: ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1),
        lambda x, y, b: jnp.exp(-_sqdist_jnp(x, y)) @ b,
        lambda LT, x, y, b: ((-((LT(x[:, None, :]) - LT(y[None, :, :])) ** 2).sum(-1)).exp()
                             * LT(b[None, :, :])).sum(1),
        lambda rows, x, y, b: np.exp(-_sqdist64(x[rows], y)) @ b.astype(np.float64))


def _sinkhorn(M, N) -> Workload:
    def reference(rows, x, y, g):
        s = g[:, 0].astype(np.float64)[None, :] - _sqdist64(x[rows], y) / EPSILON
        m = s.max(1, keepdims=True)
        return m + np.log(np.exp(s - m).sum(1, keepdims=True))

    return Workload(
        "sinkhorn", f"Sinkhorn logsumexp_j(g_j − ‖x_i−y_j‖²/ε), ε={EPSILON}", M, N, 3,
        lambda rng, M, N, D: (_normal(rng, M, D), _normal(rng, N, D), _normal(rng, N, 1)),
        lambda x, y, g: (Vj(g) - Vi(x).sqdist(Vj(y)) / EPSILON).logsumexp(axis=1),
        lambda x, y, g: jax.nn.logsumexp(g[:, 0][None, :] - _sqdist_jnp(x, y) / EPSILON,
                                         axis=1)[:, None],
        lambda LT, x, y, g: (LT(g[None, :, :]) - ((LT(x[:, None, :]) - LT(y[None, :, :])) ** 2)
                             .sum(-1) / EPSILON).logsumexp(dim=1),
        reference)


def _argkmin(M, N) -> Workload:
    return Workload(
        "argkmin", f"argKmin K={K} of ‖x_i−y_j‖²", M, N, 3,
        lambda rng, M, N, D: (_normal(rng, M, D), _normal(rng, N, D)),
        lambda x, y: Vi(x).sqdist(Vj(y)).argKmin(K, axis=1),
        lambda x, y: jax.lax.top_k(-_sqdist_jnp(x, y), K)[1],
        lambda LT, x, y: ((LT(x[:, None, :]) - LT(y[None, :, :])) ** 2).sum(-1).argKmin(K, dim=1),
        lambda rows, x, y: np.sort(_sqdist64(x[rows], y), axis=1)[:, :K],
        kind="indices")


def _outside(M, N) -> Workload:
    """A formula outside the fused families: the interpreter's workload."""
    return Workload(
        "outside", "outside the families: Σ_j sin(⟨x_i,y_j⟩)·‖x_i−y_j‖₁", M, N, 3,
        lambda rng, M, N, D: (_normal(rng, M, D, 0.5), _normal(rng, N, D, 0.5)),
        lambda x, y: ((Vi(x) | Vj(y)).sin() * (Vi(x) - Vj(y)).abs().sum()).sum(1),
        lambda x, y: (jnp.sin(x @ y.T) * jnp.abs(x[:, None, :] - y[None, :, :]).sum(-1)
                      ).sum(1, keepdims=True),
        lambda LT, x, y: ((LT(x[:, None, :]) | LT(y[None, :, :])).sin()
                          * (LT(x[:, None, :]) - LT(y[None, :, :])).abs().sum(-1)).sum(1),
        lambda rows, x, y: (np.sin(x[rows].astype(np.float64) @ y.astype(np.float64).T)
                            * np.abs(x[rows, None, :].astype(np.float64) - y[None]).sum(-1)
                            ).sum(1, keepdims=True),
        dense_bytes_per_pair=32)


# Issue 14's acceptance sizes on an H200.
GPU_SIZES = {"gaussian": (10**6, 10**6), "sinkhorn": (10**6, 10**6), "argkmin": (10**5, 10**6),
             "outside": (10**5, 10**6)}
MAKERS = {"gaussian": _gaussian, "sinkhorn": _sinkhorn, "argkmin": _argkmin,
          "outside": _outside}


# ---------------------------------------------------------------- measuring

@dataclasses.dataclass
class Result:
    first: float | None = None
    median: float | None = None
    runs: int = 0
    error: float | None = None  # relative error on the sampled rows
    ok: bool | None = None
    note: str = ""


class _Log:
    def __init__(self):
        path = os.environ.get("JAXKEOPS_GPU_COMPARE_LOG")
        self.file = open(path, "a") if path else None

    def write(self, **record):
        print("  " + json.dumps(record, default=str), flush=True)
        if self.file:
            self.file.write(json.dumps(record, default=str) + "\n")
            self.file.flush()


def _time(run, sync) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    sync(out)
    return time.perf_counter() - start, out


def _measure(run, sync, deadline, repeats) -> tuple[Result, object, object]:
    """Timings, and the outputs of the first and the last call."""
    result = Result()
    result.first, first = _time(run, sync)
    out = first
    samples = []
    stop = time.perf_counter() + CANDIDATE_SECONDS
    while len(samples) < repeats and time.perf_counter() < min(stop, deadline):
        t, out = _time(run, sync)
        samples.append(t)
    if not samples:  # one warm call at least, when the first one left time
        samples.append(result.first)
        result.note = "median = first call (time budget)"
    result.median = statistics.median(samples)
    result.runs = len(samples)
    return result, first, out


def _check(w: Workload, out, arrays, rows) -> tuple[bool, float, str]:
    """Output against the float64 reference on the sampled rows; every element checked for
    finiteness (indices for range)."""
    out = np.asarray(out)
    if w.kind == "indices":
        if out.shape != (w.M, K) or out.min() < 0 or out.max() >= w.N:
            return False, float("nan"), f"indices out of range or shape {out.shape}"
        x, y = arrays
        got = np.sort(((x[rows, None, :].astype(np.float64) - y[out[rows]]) ** 2).sum(-1), 1)
        ref = w.reference(rows, *arrays)
    else:
        if out.shape[0] != w.M or not np.all(np.isfinite(out)):
            return False, float("nan"), f"non-finite values or shape {out.shape}"
        got = out[rows].astype(np.float64).reshape(len(rows), -1)
        ref = w.reference(rows, *arrays).reshape(len(rows), -1)
    err = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    return err < 1e-3, err, ""


def _torch_cuda():
    """(torch, pykeops LazyTensor) where torch sees a CUDA GPU and pykeops imports, else the
    reason why not."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA GPU"
    try:
        import pykeops
        from pykeops.torch import LazyTensor
    except Exception as e:  # noqa: BLE001 - any import failure means "no KeOps baseline"
        return None, f"pykeops unusable: {type(e).__name__}: {e}"
    if not pykeops.config.gpu_available:  # it would run on the CPU: no comparison
        return None, "pykeops found no usable CUDA (libcuda / nvrtc / headers; see its warnings)"
    pykeops.set_verbose(False)
    return (torch, LazyTensor), ""


def _row_chunked(fn, rows):
    from jaxkeops.benchmarks.cases import row_chunked
    return jax.jit(lambda x, *rest: row_chunked(fn, x, *rest, rows=rows))


def run_workload(w: Workload, deadline: float, log: _Log, keops) -> dict[str, Result]:
    rng = np.random.default_rng()
    arrays = w.arrays(rng, w.M, w.N, w.D)
    rows = np.unique(np.concatenate([np.arange(min(3, w.M)), np.arange(max(0, w.M - 3), w.M),
                                     rng.integers(0, w.M, SAMPLE_ROWS)]))
    device = jax.devices()[0]
    jarrays = [jax.device_put(a, device) for a in arrays]
    jsync = jax.block_until_ready
    # jaxkeops and KeOps first: the comparison that matters gets the time budget first.
    results: dict[str, Result] = {}
    results["jaxkeops"] = _run_candidate(w, "jaxkeops", lambda f=jax.jit(w.keops): f(*jarrays),
                                         jsync, arrays, rows, deadline, log)
    if keops[0] is None:
        results["KeOps 2.3"] = Result(note=keops[1])
    else:
        torch, LazyTensor = keops[0]
        targs = [torch.from_numpy(a).cuda() for a in arrays]
        results["KeOps 2.3"] = _run_candidate(
            w, "KeOps 2.3", lambda: w.pykeops(LazyTensor, *targs),
            lambda out: torch.cuda.synchronize(), arrays, rows, deadline, log,
            to_numpy=lambda out: out.cpu().numpy())
    chunk = 1024 if device.platform == "gpu" else 256
    baselines = [(f"row-chunked jnp ({chunk} rows)", _row_chunked(w.dense_rows, chunk))]
    if w.M * w.N * w.dense_bytes_per_pair <= DENSE_BUDGET_BYTES:
        baselines.append(("dense jnp", jax.jit(w.dense_rows)))
    else:
        results["dense jnp"] = Result(note="temporaries over the budget")
    for name, fn in baselines:
        results[name] = _run_candidate(w, name, lambda fn=fn: fn(*jarrays), jsync, arrays, rows,
                                       deadline, log, repeats=BASELINE_REPEATS)
    return results


def _poison_jax_memory(nbytes: int) -> None:
    """Fills a block of device memory of the output's size with NaN and frees it: the
    allocator likely hands it to the next output, so that an element the kernel never writes
    shows up as NaN instead of stale data."""
    jax.block_until_ready(jnp.full((max(nbytes // 4, 1),), jnp.nan, jnp.float32)).delete()


def _run_candidate(w, name, run, sync, arrays, rows, deadline, log, to_numpy=np.asarray,
                   repeats=None):
    if time.perf_counter() > deadline:
        return Result(note="skipped: time budget spent")
    try:
        if to_numpy is np.asarray:
            _poison_jax_memory(w.M * (K if w.kind == "indices" else 1) * 4)
        result, first, out = _measure(run, sync, deadline, repeats or REPEATS)
        # The first call's output (a fresh buffer) and the last one's.
        ok_first, _, why_first = _check(w, to_numpy(first), arrays, rows)
        result.ok, result.error, why = _check(w, to_numpy(out), arrays, rows)
        if not ok_first:
            result.ok, why = False, f"first call: {why_first or 'wrong values'}; {why}"
        result.note = "; ".join(filter(None, [result.note, why]))
    except Exception as e:  # noqa: BLE001 - one failing candidate must not stop the others
        result = Result(ok=False, note=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    log.write(workload=w.name, M=w.M, N=w.N, candidate=name, **dataclasses.asdict(result))
    return result


def first_call_seconds(keops, M=10**4) -> dict[str, float | str]:
    """Time from a formula never seen before (a fresh random bandwidth written into it) to its
    first result, in this already warm process (imports and device start-up excluded)."""
    rng = np.random.default_rng()
    x, y, b = (_normal(rng, M, 3) for _ in range(3))
    c = int(rng.integers(2, 10**9))
    out: dict[str, float | str] = {}
    start = time.perf_counter()
    jax.block_until_ready(((-Vi(x).sqdist(Vj(y)) / c).exp() * Vj(b)).sum(1))
    out["jaxkeops"] = time.perf_counter() - start
    if keops[0] is None:
        out["KeOps 2.3"] = keops[1]
    else:
        torch, LT = keops[0]
        tx, ty, tb = (torch.from_numpy(a).cuda() for a in (x, y, b))
        torch.cuda.synchronize()
        start = time.perf_counter()
        ((-((LT(tx[:, None, :]) - LT(ty[None, :, :])) ** 2).sum(-1) / c).exp()
         * LT(tb[None, :, :])).sum(1)
        torch.cuda.synchronize()
        out["KeOps 2.3"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------- the report

def _cell(r: Result) -> str:
    if r.median is None:
        return f"— ({r.note})" if r.note else "—"
    flag = "" if r.ok else " ✗"
    return f"{_seconds(r.median)}{flag}"


def _seconds(t: float) -> str:
    return f"{t * 1e6:.0f} µs" if t < 1e-3 else f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s"


def report(scale: tuple[int, int] | None = None, names=None) -> str:
    """Runs the workloads (GPU_SIZES, or every one at `scale` = (M, N)) and returns the table."""
    budget = float(os.environ.get("JAXKEOPS_GPU_COMPARE_SECONDS", "330"))
    deadline = time.perf_counter() + budget
    log = _Log()
    keops = _torch_cuda()
    device = jax.devices()[0]
    log.write(device=str(device.device_kind), platform=device.platform, jax=jax.__version__,
              keops=keops[1] or "pykeops on torch CUDA")
    lines = ["| workload | M × N | jaxkeops | KeOps 2.3 | dense jnp | row-chunked jnp | "
             "jaxkeops / KeOps | correct (rel. error) |", "|---|---|---|---|---|---|---|---|"]
    for name in names or MAKERS:
        M, N = scale or GPU_SIZES[name]
        w = MAKERS[name](M, N)
        print(f"{w.title}, M={M}, N={N}", flush=True)
        res = run_workload(w, deadline, log, keops)
        ours, theirs = res["jaxkeops"], res["KeOps 2.3"]
        ratio = (f"{ours.median / theirs.median:.2f}×" if ours.median and theirs.median
                 else "—")
        chunked = next(v for k, v in res.items() if k.startswith("row-chunked"))
        checks = ", ".join(f"{k.split(' (')[0]} {'ok' if v.ok else 'FAIL'} "
                           f"({v.error:.1e})" if v.error is not None else
                           f"{k.split(' (')[0]} {'FAIL' if v.ok is False else 'n/a'}"
                           for k, v in res.items() if v.ok is not None)
        lines.append(f"| {w.title} | {M:,} × {N:,} | {_cell(ours)} | {_cell(theirs)} | "
                     f"{_cell(res['dense jnp'])} | {_cell(chunked)} | {ratio} | {checks} |")
    first = first_call_seconds(keops) if time.perf_counter() < deadline else {}
    if first:
        def cell(v):
            return _seconds(v) if isinstance(v, float) else f"— ({v})"
        lines.append(f"| first call of a new formula (Gaussian, M=N=10^4) | — | "
                     f"{cell(first['jaxkeops'])} | {cell(first['KeOps 2.3'])} | — | — | "
                     f"{_ratio(first)} | — |")
        log.write(first_call=first)
    head = (f"Device: {device.device_kind} ({device.platform}), jax {jax.__version__}; "
            f"median of up to {REPEATS} warm calls after the first (✗: failed its check); "
            f"{datetime_now()}.")
    return head + "\n\n" + "\n".join(lines)


def _ratio(first) -> str:
    a, b = first.get("jaxkeops"), first.get("KeOps 2.3")
    return f"{a / b:.2f}×" if isinstance(a, float) and isinstance(b, float) else "—"


def datetime_now() -> str:
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
