"""The benchmark cases: each builds jaxkeops and its same-run baselines for one workload.

Baselines, in this order after jaxkeops: dense jnp (the whole M×N grid materialised, skipped
with a note when its temporaries would not fit the memory budget), row-chunked jnp (`lax.map`
over blocks of rows: the usual hand-written alternative) and pykeops (numpy bindings, when it
is importable; its first call includes the formula's C++ compilation unless cached).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import Vi, Vj
from jaxkeops.benchmarks.harness import Candidate

CHUNK_ROWS = 256


@dataclasses.dataclass
class Case:
    title: str
    pairs: int
    candidates: list[Candidate]  # jaxkeops first
    notes: list[str]
    alternate: bool = True  # see harness.compare
    repeats: int | None = None  # overrides --repeats (many calls of a microsecond workload)


@dataclasses.dataclass
class Benchmark:
    default_size: tuple[int, int]
    make: Callable[..., Case]  # (M, N, dense_budget_bytes) -> Case
    in_default: bool = True  # run when no benchmark is named (the CPU timings)


def row_chunked(row_fn, x, *rest, rows=CHUNK_ROWS):
    """`lax.map` over blocks of rows of x; row_fn(x_block, *rest) -> (rows, ...)."""
    M = x.shape[0]
    blocks = -(-M // rows)
    xp = jnp.pad(x, ((0, blocks * rows - M), (0, 0))).reshape(blocks, rows, x.shape[1])
    out = jax.lax.map(lambda xb: row_fn(xb, *rest), xp)
    return out.reshape(blocks * rows, *out.shape[2:])[:M]


def _pykeops():
    """pykeops' numpy LazyTensor, or None when pykeops is not installed or unusable."""
    try:
        import pykeops
        from pykeops.numpy import LazyTensor
    except Exception:  # noqa: BLE001 - any import failure means "no pykeops baseline"
        return None
    pykeops.set_verbose(False)
    return LazyTensor


def _standard(title, pairs, keops, dense_row, dense_bytes, budget, arrays, pykeops_fn=None):
    """jaxkeops, dense jnp, row-chunked jnp and pykeops candidates of one workload.

    keops(*arrays) and dense_row(x_block, *rest) are jax functions of the same arrays (x first);
    dense_bytes is the size of the dense version's temporaries; pykeops_fn(LazyTensor, *numpy
    arrays) builds and reduces the pykeops formula."""
    notes = []
    keops_jit = jax.jit(keops)
    candidates = [Candidate("jaxkeops", lambda: keops_jit(*arrays))]
    if dense_bytes <= budget:
        dense_jit = jax.jit(dense_row)
        candidates.append(Candidate("dense jnp", lambda: dense_jit(*arrays)))
    else:
        notes.append(f"dense jnp skipped: its temporaries need {dense_bytes / 2**30:.1f} GiB "
                     f"(budget {budget / 2**30:.1f} GiB, `--dense-gib`)")
    chunked = jax.jit(lambda x, *rest: row_chunked(dense_row, x, *rest))
    candidates.append(Candidate(f"row-chunked jnp ({CHUNK_ROWS} rows)",
                                lambda: chunked(*arrays)))
    if pykeops_fn is not None:
        LazyTensor = _pykeops()
        if LazyTensor is None:
            notes.append("pykeops not installed: no pykeops baseline")
        else:
            host = [np.asarray(a) for a in arrays]
            candidates.append(Candidate("pykeops (numpy)", lambda: pykeops_fn(LazyTensor, *host)))
    return Case(title, pairs, candidates, notes)


def _data(M, N, D, E=1, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(M, D)) * scale, jnp.float32)
    y = jnp.asarray(rng.normal(size=(N, D)) * scale, jnp.float32)
    b = jnp.asarray(rng.normal(size=(N, E)), jnp.float32)
    return x, y, b


def _sqdist_dense(x, y):
    return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, -1)


# ---------------------------------------------------------------- Gaussian sums

def _gaussian_keops(x, y, b):
    return ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(1)


def _gaussian_dense(x, y, b):
    return jnp.exp(-_sqdist_dense(x, y)) @ b


def _gaussian_pykeops(LazyTensor, x, y, b):
    X, Y = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    return ((-((X - Y) ** 2).sum(-1)).exp() * LazyTensor(b[None, :, :])).sum(1)


def gaussian(M, N, budget, D=3, E=1):
    arrays = _data(M, N, D, E)
    columns = "" if E == 1 else f", {E} columns (K @ v)"
    return _standard(f"Gaussian sum, M={M}, N={N}, D={D}{columns}, float32", M * N,
                     _gaussian_keops, _gaussian_dense, 4 * M * N * (D + 2), budget, arrays,
                     _gaussian_pykeops)


def gaussian_d100(M, N, budget):
    return gaussian(M, N, budget, D=100)


def gaussian_e64(M, N, budget):
    """K @ v with 64 columns: each pair's 64 multiply-adds dominate (the row-block sum path)."""
    return gaussian(M, N, budget, E=64)


def gaussian_grad(M, N, budget, D=3):
    """Gradient of Σ_i a_i (the Gaussian sum) with respect to x; jaxkeops' forward pass as a
    further reference (pykeops needs torch for gradients: no pykeops baseline)."""
    arrays = _data(M, N, D)
    grad = lambda f: jax.grad(lambda x, y, b: f(x, y, b).sum())  # noqa: E731
    case = _standard(f"Gradient of a Gaussian sum wrt x, M={M}, N={N}, D={D}, float32", M * N,
                     grad(_gaussian_keops), grad(_gaussian_dense), 8 * M * N * (D + 2), budget,
                     arrays)
    # The chunked baseline differentiates through lax.map.
    chunked = jax.jit(grad(lambda x, y, b: row_chunked(_gaussian_dense, x, y, b)))
    case.candidates[-1] = Candidate(case.candidates[-1].name, lambda: chunked(*arrays))
    fwd = jax.jit(_gaussian_keops)
    case.candidates.append(Candidate("jaxkeops forward only", lambda: fwd(*arrays)))
    return case


def vmap_gaussian(M, N, budget, D=3, B=64):
    """jax.vmap over B problems of size M×N against one problem of B·M rows (same pairs)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, M, D)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32)
    batched = jax.jit(jax.vmap(_gaussian_keops, (0, None, None)))
    tall = jax.jit(_gaussian_keops)
    x_tall = x.reshape(B * M, D)
    return Case(f"vmap of a Gaussian sum: {B} × (M={M}, N={N}), D={D}, float32", B * M * N, [
        Candidate(f"jaxkeops, jax.vmap over {B} problems", lambda: batched(x, y, b)),
        Candidate(f"jaxkeops, one problem of {B}×{M} rows", lambda: tall(x_tall, y, b)),
    ], [])


# ---------------------------------------------------------------- K nearest neighbours

K_NEIGHBOURS = 10


def argkmin(M, N, budget, D=3, K=K_NEIGHBOURS):
    arrays = _data(M, N, D)[:2]

    def keops(x, y):
        return Vi(x).sqdist(Vj(y)).argKmin(K, axis=1)

    def dense(x, y):
        return jax.lax.top_k(-_sqdist_dense(x, y), K)[1]

    def pykeops_fn(LazyTensor, x, y):
        X, Y = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
        return ((X - Y) ** 2).sum(-1).argKmin(K, axis=1)

    return _standard(f"argKmin, K={K} (K nearest neighbours), M={M}, N={N}, D={D}, float32",
                     M * N, keops, dense, 4 * M * N * (D + 3), budget, arrays, pykeops_fn)


# ---------------------------------------------------------------- Sinkhorn step

EPSILON = 0.1


def sinkhorn(M, N, budget, D=3, eps=EPSILON):
    """One Sinkhorn half-step: f_i = logsumexp_j (g_j - |x_i - y_j|² / ε)."""
    x, y, g = _data(M, N, D)

    def keops(x, y, g):
        return (Vj(g) - Vi(x).sqdist(Vj(y)) / eps).logsumexp(axis=1)

    def dense(x, y, g):
        return jax.nn.logsumexp(g[:, 0][None, :] - _sqdist_dense(x, y) / eps, axis=1)[:, None]

    def pykeops_fn(LazyTensor, x, y, g):
        X, Y = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
        return (LazyTensor(g[None, :, :]) - ((X - Y) ** 2).sum(-1) / eps).logsumexp(axis=1)

    return _standard(f"Sinkhorn step: logsumexp_j (g_j - |x_i - y_j|²/ε), ε={eps}, M={M}, "
                     f"N={N}, D={D}, float32", M * N, keops, dense, 4 * M * N * (D + 3), budget,
                     (x, y, g), pykeops_fn)


# ---------------------------------------------------------------- attention

def attention(M, N, budget, D=64):
    """Softmax attention: out_i = Σ_j softmax_j(q_i · k_j) v_j, with D = E (queries scaled by
    1/√D as usual)."""
    q, k, v = _data(M, N, D, E=D, scale=D ** -0.25)

    def keops(q, k, v):
        return (Vi(q) | Vj(k)).sumsoftmaxweight(Vj(v), axis=1)

    def dense(q, k, v):
        return jax.nn.softmax(q @ k.T, axis=1) @ v

    def pykeops_fn(LazyTensor, q, k, v):
        Q, K = LazyTensor(q[:, None, :]), LazyTensor(k[None, :, :])
        return (Q | K).sumsoftmaxweight(LazyTensor(v[None, :, :]), axis=1)

    case = _standard(f"Attention (sumsoftmaxweight), M={M}, N={N}, D=E={D}, float32", M * N,
                     keops, dense, 4 * M * N * 3, budget, (q, k, v), pykeops_fn)
    peak = fma_peak()
    if peak is not None:
        # q·k and the weighted sum of v: 2·D multiply-adds per pair whatever the method.
        case.notes.append(f"arithmetic ceiling: {peak / (2 * D):.2f} G pairs/s ({2 * D} FMA per "
                          f"pair at this machine's measured float32 FMA peak, {peak:.0f} G FMA/s "
                          f"on all cores)")
    return case


# ---------------------------------------------------------------- latency

# Run in a fresh interpreter: the time from a formula never seen before to its first result
# (tracing, program compilation, XLA compilation, run), imports excluded.
_FIRST_RESULT_SCRIPT = """
import sys, time
import numpy as np
which, M, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
x, y, b = (rng.normal(size=(M, 3)).astype(np.float32) for _ in range(3))
if which == "jaxkeops":
    import jax
    from jaxkeops import Vi, Vj
    start = time.perf_counter()
    f = ((-Vi(x).sqdist(Vj(y)) / c).exp() * Vj(b)).sum(1)
    jax.block_until_ready(f)
else:
    import pykeops
    from pykeops.numpy import LazyTensor
    pykeops.set_verbose(False)
    start = time.perf_counter()
    X, Y, B = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
    f = ((-((X - Y) ** 2).sum(-1) / c).exp() * B).sum(1)
print(time.perf_counter() - start)
"""


def first_result_seconds(which: str, M: int = 500) -> float:
    """Fresh-process time to the first result of a Gaussian sum whose integer bandwidth was
    never used before: pykeops writes integer constants into the formula it compiles, so no
    cache can hold its compiled form."""
    import subprocess
    import sys
    c = int(np.random.default_rng().integers(2, 10**9))
    out = subprocess.run([sys.executable, "-c", _FIRST_RESULT_SCRIPT, which, str(M), str(c)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def latency(M, N, budget):
    """Small problems: eager (un-jitted) calls, whose cost is dispatch rather than arithmetic,
    and the first result of a new formula in a fresh process."""
    arrays = _data(M, N, 3)
    x, y, b = (np.asarray(a) for a in arrays)
    candidates = [Candidate("jaxkeops eager", lambda: _gaussian_keops(*arrays))]
    notes = [f"first result of a new formula in a fresh process, M=N=500: jaxkeops "
             f"{first_result_seconds('jaxkeops') * 1e3:.0f} ms"]
    if _pykeops() is not None:
        LazyTensor = _pykeops()
        candidates.append(Candidate("pykeops (numpy)",
                                    lambda: _gaussian_pykeops(LazyTensor, x, y, b)))
        notes[0] += f", pykeops {first_result_seconds('pykeops'):.1f} s (its C++ compilation)"
    chunked = jax.jit(lambda x, y, b: row_chunked(_gaussian_dense, x, y, b))
    dense = jax.jit(_gaussian_dense)
    candidates += [Candidate("dense jnp (jit)", lambda: dense(*arrays)),
                   Candidate("row-chunked jnp (jit)", lambda: chunked(*arrays))]
    return Case(f"Latency: Gaussian sum, M={M}, N={N}, D=3, float32", M * N,
                candidates, notes, alternate=False, repeats=201)


# ---------------------------------------------------------------- spellings of one formula

def spellings(M, N, budget, D=3):
    """The Gaussian sum written as the KeOps tutorial writes it, `((x_i - y_j) ** 2).sum(-1)`,
    and with `sqdist`: the compiler normalises both to one program (jaxkeops/normalize.py), so
    they should run at the same speed (the last column is the ratio of their times)."""
    arrays = _data(M, N, D)

    def tutorial_form(x, y, b):
        return ((-((Vi(x) - Vj(y)) ** 2).sum(-1)).exp() * Vj(b)).sum(1)

    def scaled_form(x, y, b):  # a division by a constant and a negation written as (-1) *
        return (((-1) * ((Vi(x) - Vj(y)) ** 2).sum(-1) / 1.0).exp() * Vj(b)).sum(1)

    candidates = [Candidate(name, (lambda f: (lambda: f(*arrays)))(jax.jit(f))) for name, f in (
        ("jaxkeops, x_i.sqdist(y_j)", _gaussian_keops),
        ("jaxkeops, ((x_i - y_j) ** 2).sum(-1)", tutorial_form),
        ("jaxkeops, (-1) * ((x_i - y_j) ** 2).sum(-1) / 1.0", scaled_form),
    )]
    return Case(f"Spellings of one Gaussian sum, M={M}, N={N}, D={D}, float32", M * N,
                candidates, ["the last column is each spelling's time over the sqdist form's "
                             "(1.00× = as fast)"])


# ---------------------------------------------------------------- interpreter vs hand-written

def _cpu_seconds(run, repeats=5) -> float:
    """Median process CPU time of a warm call (all threads): robust to a loaded machine."""
    import time
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.process_time()
        jax.block_until_ready(run())
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2]


def _run_native(source: str, args, flags, needs_src: bool = False) -> str | None:
    """Compiles jaxkeops/benchmarks/<source> with g++ (-march=native, the source tree's src/ on
    the include path) and returns what it prints for `args`; None without g++ (or, for a
    program that includes from src/, outside a source checkout: wheels do not ship it)."""
    import pathlib
    import shutil
    import subprocess
    import tempfile
    path = pathlib.Path(__file__).with_name(source)
    include = pathlib.Path(__file__).resolve().parents[2] / "src"
    compiler = shutil.which("g++")
    if compiler is None or not path.exists() or (needs_src
                                                 and not (include / "fast_math.h").exists()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = str(pathlib.Path(tmp) / path.stem)
        subprocess.run([compiler, *flags, "-march=native", "-pthread", f"-I{include}", str(path),
                        "-o", exe], check=True)
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True,
                              check=True).stdout


def fma_peak(tries: int = 3) -> float | None:
    """The float32 FMA rate of all this process's cores together (G FMA/s, the best of a few
    tries: other work on a shared machine only lowers it), or None without g++."""
    import os
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = _run_native("fma_peak.cc", [threads, tries], ["-O2"])
    return None if out is None else float(out)


def interpreter(M, N, budget):
    """The generic program interpreter against a hand-written fused loop of the Gaussian sum
    (jaxkeops/benchmarks/handwritten_gaussian.cc, compiled here with g++), on formulas of other
    families of the same size, and at D = 64 against the row-block dot-product path (the fast
    path of dot-product formulas). Compared in CPU time per pair (G pairs per CPU-second)."""
    notes = []
    wide = 64
    dot = lambda x, y, b: ((Vi(x) | Vj(y)).exp() * Vj(b)).sum(1)  # noqa: E731
    formulas = [  # (name, D, formula, what runs it)
        ("Gaussian exp(-‖x-y‖²) b", 3, _gaussian_keops, "interpreter"),
        ("Cauchy b / (1 + ‖x-y‖²)", 3,
         lambda x, y, b: (Vj(b) / (1 + Vi(x).sqdist(Vj(y)))).sum(1), "interpreter"),
        ("Laplace exp(-‖x-y‖) b", 3,
         lambda x, y, b: ((-(Vi(x) - Vj(y)).norm2()).exp() * Vj(b)).sum(1), "interpreter"),
        ("exp(x·y) b (a dot product)", 3, dot, "interpreter"),
        ("Gaussian exp(-‖x-y‖²) b", wide, _gaussian_keops, "interpreter"),
        ("exp(x·y) b (a dot product)", wide, dot, "row-block dot path"),
    ]
    rows = ["| formula | D | implementation | G pairs per CPU-second |", "|---|---|---|---|"]
    for name, D, f, runner in formulas:
        x, y, b = _data(M, N, D, scale=D ** -0.25)
        fj = jax.jit(f)
        t = _cpu_seconds(lambda: fj(x, y, b))
        rows.append(f"| {name} | {D} | jaxkeops {runner} | {M * N / t / 1e9:.3f} |")
    out = _run_native("handwritten_gaussian.cc", [M, N, 5],
                      ["-O3", "-fno-math-errno", "-fopenmp-simd", "-std=c++17"], needs_src=True)
    if out is not None:
        rows.append(f"| Gaussian exp(-‖x-y‖²) b | 3 | hand-written fused loop, 1 thread | "
                    f"{M * N / float(out.split()[0]) / 1e9:.3f} |")
    else:
        notes.append("hand-written loop skipped: needs g++ and a source checkout (its program "
                     "includes src/fast_math.h)")
    return Case(f"Generic interpreter vs a hand-written loop and the row-block path, M={M}, "
                f"N={N}, float32", M * N, [], ["\n".join(rows)] + notes)


# ---------------------------------------------------------------- GPU

def gpu_static(M, N, budget):
    """Static evidence about the GPU kernels (registers, spills, SASS instructions per pair),
    no GPU needed: jaxkeops/benchmarks/gpu_static.py."""
    from jaxkeops.benchmarks import gpu_static as static
    return Case("GPU kernels: static evidence (no GPU), sm_90", 0, [], [static.report()])


def gpu_compare(M, N, budget):
    """jaxkeops against KeOps 2.3 (pykeops on torch) and dense / chunked jnp on the default
    backend: jaxkeops/benchmarks/gpu_compare.py (sizes for an H200 unless --size is given)."""
    from jaxkeops.benchmarks import gpu_compare as compare_gpu
    scale = None if (M, N) == GPU_COMPARE_SIZE else (M, N)
    return Case("GPU comparison: jaxkeops, KeOps 2.3, jnp", 0, [],
                [compare_gpu.report(scale=scale)])


# ---------------------------------------------------------------- sharded over devices

def sharded(M, N, budget):
    """A Gaussian sum split by rows over 1 and 2 CPU devices: jaxkeops/benchmarks/sharded.py."""
    from jaxkeops.benchmarks import sharded as sharded_runs
    return Case(f"Gaussian sum with x, y, b sharded by rows over CPU devices, M={M}, N={N}, "
                f"D=3, float32", M * N, [], [sharded_runs.report(M, N), sharded_runs.NOTE])


# ---------------------------------------------------------------- block-sparse ranges

def ranges(M, N, budget):
    """A truncated Gaussian on a clustered 3-d cloud with and without ranges, against the
    fraction of pairs kept: jaxkeops/benchmarks/block_sparse.py."""
    from jaxkeops.benchmarks import block_sparse
    return Case(f"Truncated Gaussian sum on a clustered 3-d cloud, block-sparse ranges, M={M}, "
                f"N={N}, float32", M * N, [], [block_sparse.report(M, N), block_sparse.NOTE])


GPU_COMPARE_SIZE = (1_000_000, 1_000_000)

BENCHMARKS = {
    "gaussian": Benchmark((20000, 20000), gaussian),
    "argkmin": Benchmark((20000, 20000), argkmin),
    "sinkhorn": Benchmark((20000, 20000), sinkhorn),
    "attention": Benchmark((4000, 4000), attention),
    "gaussian_d100": Benchmark((10000, 10000), gaussian_d100),
    "gaussian_e64": Benchmark((10000, 10000), gaussian_e64),
    "gaussian_grad": Benchmark((20000, 20000), gaussian_grad),
    "vmap": Benchmark((2000, 2000), vmap_gaussian),
    "latency": Benchmark((100, 100), latency),
    "interpreter": Benchmark((10000, 10000), interpreter),
    "gpu_static": Benchmark((0, 0), gpu_static, in_default=False),
    "gpu_compare": Benchmark(GPU_COMPARE_SIZE, gpu_compare, in_default=False),
    "spellings": Benchmark((20000, 20000), spellings),
    "sharded": Benchmark((40000, 40000), sharded, in_default=False),
    "ranges": Benchmark((200_000, 200_000), ranges, in_default=False),
}
