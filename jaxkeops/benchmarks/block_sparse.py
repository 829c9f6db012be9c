"""The `ranges` benchmark: a truncated Gaussian sum on a clustered 3-d cloud.

Points are drawn around 64 random centres in the unit cube, clustered by a grid
(`grid_cluster`), sorted (`sort_clusters`), summarised by `cluster_ranges_centroids`; cluster
pairs whose centroids are closer than a cutoff interact (`from_matrix`). For each cutoff: the
fraction of pairs kept, the time with ranges, the dense time (no ranges, same formula), the
speed-up and its ratio to 1 / fraction (the ideal), and pykeops 2.3 with the same ranges when it
is installed (its max difference to jaxkeops says both compute the same truncated sum).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from jaxkeops import Vi, Vj, cluster

SIGMA = 0.02      # Gaussian width
VOXEL = 0.08      # grid cell side of the clustering
CUTOFFS = (0.12, 0.2, 0.3)  # centroid distance below which two clusters interact

NOTE = ("Kernel exp(-|x-y|^2 / (2 sigma^2)) b_j, sigma = 0.02, on 64 Gaussian blobs (std 0.05) "
        f"in the unit cube; clusters: grid cells of side {VOXEL}; clusters interact when their "
        "centroids are closer than the cutoff. 'ideal' = 1 / fraction of pairs kept; "
        "'of ideal' = speed-up / ideal (acceptance: >= 70 %). Times: median of 3 warm calls, "
        "one when a call takes over 5 s (jit, ranges as arguments); pykeops: its numpy "
        "LazyTensor with the same ranges (its max abs difference to jaxkeops in the last column).")


def clustered_cloud(n, centres, rng):
    pick = rng.integers(0, len(centres), size=n)
    return (centres[pick] + 0.05 * rng.normal(size=(n, 3))).astype(np.float32)


def _median_seconds(run, repeats=3) -> tuple[float, float, object]:
    """Median wall and process CPU seconds (all threads) of warm calls, and the last output.
    On a shared machine the CPU time is the robust figure: others' load does not inflate it."""
    start = time.perf_counter()
    out = jax.block_until_ready(run())  # warm-up (compilation)
    if time.perf_counter() - start > 5:  # long calls: one timed call is precise enough
        repeats = 1
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(run())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), out


def _kernel(x, y, b):
    return (-Vi(x).sqdist(Vj(y)) / (2 * SIGMA**2)).exp() * Vj(b)


def report(M: int, N: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    centres = rng.random((64, 3))
    x, y = clustered_cloud(M, centres, rng), clustered_cloud(N, centres, rng)
    b = rng.normal(size=(N, 1)).astype(np.float32)

    x_lab, y_lab = cluster.grid_cluster(x, VOXEL), cluster.grid_cluster(y, VOXEL)
    x, x_lab = cluster.sort_clusters(x, x_lab)
    (y, b), y_lab = cluster.sort_clusters((y, b), y_lab)
    x_ranges, x_centroids, _ = cluster.cluster_ranges_centroids(x, x_lab)
    y_ranges, y_centroids, _ = cluster.cluster_ranges_centroids(y, y_lab)
    x_sizes = np.diff(np.asarray(x_ranges), axis=1)[:, 0]
    y_sizes = np.diff(np.asarray(y_ranges), axis=1)[:, 0]
    distances = np.sqrt(((np.asarray(x_centroids)[:, None] - np.asarray(y_centroids)[None]) ** 2
                         ).sum(-1))

    dense = jax.jit(lambda x, y, b: _kernel(x, y, b).sum(1))
    sparse = jax.jit(lambda x, y, b, r: _kernel(x, y, b).sum(1, ranges=r))
    t_dense, c_dense, _ = _median_seconds(lambda: dense(x, y, b))
    pykeops = _pykeops_sum()

    lines = [f"{len(x_sizes)} x {len(y_sizes)} clusters (mean {M / len(x_sizes):.0f} x "
             f"{N / len(y_sizes):.0f} points); dense (no ranges): {t_dense * 1e3:.0f} ms wall, "
             f"{c_dense * 1e3:.0f} ms CPU",
             "",
             "| cutoff | pairs kept | with ranges (wall / CPU) | speed-up (wall / CPU) | ideal "
             "| of ideal (wall / CPU) | pykeops ranges (wall / CPU) | max abs diff to pykeops |",
             "|---|---|---|---|---|---|---|---|"]
    for cutoff in CUTOFFS:
        keep = distances < cutoff
        fraction = float(x_sizes @ keep.astype(np.float64) @ y_sizes) / (M * N)
        r = cluster.from_matrix(x_ranges, y_ranges, keep)
        t_sparse, c_sparse, out = _median_seconds(lambda: sparse(x, y, b, r))
        speedup, cpu_speedup, ideal = t_dense / t_sparse, c_dense / c_sparse, 1 / fraction
        pk = "not installed"
        diff = "-"
        if pykeops is not None:
            host = [np.asarray(a) for a in (x, y, b)]
            host_r = tuple(np.asarray(a, np.int32) for a in r)
            t_pk, c_pk, pk_out = _median_seconds(lambda: pykeops(*host, host_r))
            pk = f"{t_pk * 1e3:.0f} / {c_pk * 1e3:.0f} ms"
            diff = f"{np.abs(np.asarray(out) - pk_out).max():.1e}"
        lines.append(f"| {cutoff} | {fraction:.2%} | {t_sparse * 1e3:.0f} / {c_sparse * 1e3:.0f} ms"
                     f" | {speedup:.1f}x / {cpu_speedup:.1f}x | {ideal:.1f}x | "
                     f"{speedup / ideal:.0%} / {cpu_speedup / ideal:.0%} | {pk} | {diff} |")
    return "\n".join(lines)


def _pykeops_sum():
    try:
        import pykeops
        from pykeops.numpy import LazyTensor
    except Exception:  # noqa: BLE001 - any import failure means "no pykeops baseline"
        return None
    pykeops.set_verbose(False)

    def run(x, y, b, r):
        X, Y = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
        K = (-((X - Y) ** 2).sum(-1) / (2 * SIGMA**2)).exp() * LazyTensor(b[None, :, :])
        return K.sum(1, ranges=r)

    return run
