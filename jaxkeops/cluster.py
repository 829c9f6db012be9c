"""Cluster tools for block-sparse reductions (KeOps's pykeops.torch.cluster, in jnp).

The usual recipe (docs/ranges.md): label points by cluster (`grid_cluster`), sort them so that
each cluster is a contiguous run of indices (`sort_clusters`), get each cluster's run and
centroid (`cluster_ranges_centroids`), decide which pairs of clusters interact (a boolean
matrix, e.g. centroid distances below a cutoff) and turn it into KeOps's ranges 6-tuple
(`from_matrix`), to be passed as `ranges=` to a reduction or set as `K.ranges`.

Labels are integers in [0, n_clusters). Functions whose output size depends on the data
(`grid_cluster`, `from_matrix`, and the others when `n_clusters` is not given) need concrete
arrays: call them outside jit (as KeOps computes its clusterings once, outside autograd).
`cluster_ranges`, `cluster_centroids`, `cluster_ranges_centroids` with `n_clusters=`,
`sort_clusters` and `swap_axes` are jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.ranges import swap_axes

__all__ = ["grid_cluster", "cluster_ranges", "cluster_centroids", "cluster_ranges_centroids",
           "sort_clusters", "from_matrix", "swap_axes"]


def _points(x, where: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{where}: x has shape {x.shape}; expected points shaped (N, D)")
    return x


def _labels(lab, where: str) -> jax.Array:
    lab = jnp.asarray(lab)
    if lab.ndim != 1 or not jnp.issubdtype(lab.dtype, jnp.integer):
        raise ValueError(f"{where}: lab is {lab.dtype}{lab.shape}; expected integer labels (N,)")
    return lab


def _cluster_count(lab, n_clusters, where: str) -> int:
    if n_clusters is not None:
        return int(n_clusters)
    try:
        return int(np.max(np.asarray(lab), initial=-1)) + 1
    except jax.errors.ConcretizationTypeError:
        raise ValueError(f"{where}: labels are traced (under jit): pass n_clusters=") from None


def grid_cluster(x, size) -> jax.Array:
    """Labels of the points x (N, D) by the cell of a grid of cell side `size` (a number, or one
    per dimension) that holds them; cells are numbered in lexicographic order of their
    coordinates, keeping only non-empty ones. Not jit-able (the number of cells is data)."""
    x = _points(x, "grid_cluster")
    size = jnp.asarray(size, x.dtype)
    if size.ndim > 1 or (size.ndim == 1 and size.shape[0] != x.shape[1]):
        raise ValueError(f"grid_cluster: size has shape {size.shape}; expected a number or "
                         f"({x.shape[1]},)")
    cells = np.floor(np.asarray(x / size)).astype(np.int64)
    _, lab = np.unique(cells, axis=0, return_inverse=True)
    return jnp.asarray(lab.reshape(-1).astype(np.int32))


def _counts(lab, n_clusters, weights=None):
    return jnp.bincount(lab, weights=weights, length=n_clusters)


def cluster_ranges(lab, Nlab=None, *, n_clusters: int | None = None) -> jax.Array:
    """(C, 2) int32: the run [start, end) of each cluster in sorted labels `lab` (see
    `sort_clusters`). `Nlab`: the points per cluster, if already counted."""
    lab = _labels(lab, "cluster_ranges")
    if Nlab is None:
        Nlab = _counts(lab, _cluster_count(lab, n_clusters, "cluster_ranges"))
    ends = jnp.cumsum(jnp.asarray(Nlab).astype(jnp.int32))
    return jnp.stack([ends - jnp.asarray(Nlab).astype(jnp.int32), ends], axis=1)


def cluster_centroids(x, lab, Nlab=None, weights=None, weights_c=None, *,
                      n_clusters: int | None = None) -> jax.Array:
    """(C, D): the mean of each cluster's points (weighted by `weights` (N,), normalised by the
    cluster weights `weights_c` when given). An empty cluster gives NaN (0 / 0)."""
    x = _points(x, "cluster_centroids")
    lab = _labels(lab, "cluster_centroids")
    if Nlab is not None:
        n = jnp.asarray(Nlab).shape[0]
    elif weights_c is not None:
        n = jnp.asarray(weights_c).reshape(-1).shape[0]
    else:
        n = _cluster_count(lab, n_clusters, "cluster_centroids")
    if weights is None:
        total = _counts(lab, n) if Nlab is None else jnp.asarray(Nlab)
        weighted = x
    else:
        weights = jnp.asarray(weights, x.dtype).reshape(-1)
        total = _counts(lab, n, weights) if weights_c is None else jnp.asarray(weights_c)
        weighted = x * weights[:, None]
    sums = jnp.zeros((n, x.shape[1]), x.dtype).at[lab].add(weighted)
    return sums / total.reshape(-1, 1).astype(x.dtype)


def cluster_ranges_centroids(x, lab, weights=None, min_weight: float = 1e-9, *,
                             n_clusters: int | None = None):
    """(ranges (C, 2), centroids (C, D), cluster weights (C,)) of sorted labels `lab`: the
    weights are the point counts, or the sums of `weights`; centroids divide by the weights
    clamped to at least `min_weight`."""
    x = _points(x, "cluster_ranges_centroids")
    lab = _labels(lab, "cluster_ranges_centroids")
    n = _cluster_count(lab, n_clusters, "cluster_ranges_centroids")
    Nlab = _counts(lab, n)
    w_c = Nlab.astype(x.dtype) if weights is None else _counts(
        lab, n, jnp.asarray(weights, x.dtype).reshape(-1))
    centroids = cluster_centroids(x, lab, Nlab, weights=weights,
                                  weights_c=jnp.maximum(w_c, min_weight))
    return cluster_ranges(lab, Nlab), centroids, w_c


def sort_clusters(x, lab):
    """(x sorted by label, sorted labels): each cluster becomes a run of indices. `x` is an
    array (N, ...) or a tuple of them, permuted alike; equal labels keep their order."""
    lab = _labels(lab, "sort_clusters")
    perm = jnp.argsort(lab, stable=True)
    if isinstance(x, tuple):
        return tuple(jnp.asarray(a)[perm] for a in x), lab[perm]
    return jnp.asarray(x)[perm], lab[perm]


def from_matrix(ranges_i, ranges_j, keep):
    """KeOps's ranges 6-tuple from the runs of the i clusters (Mc, 2), of the j clusters (Nc, 2)
    and a boolean (Mc, Nc) matrix saying which cluster pairs interact. Not jit-able (the
    number of kept pairs is data)."""
    ranges_i = np.asarray(ranges_i, np.int32)
    ranges_j = np.asarray(ranges_j, np.int32)
    keep = np.asarray(keep)
    for name, r in (("ranges_i", ranges_i), ("ranges_j", ranges_j)):
        if r.ndim != 2 or r.shape[1] != 2:
            raise ValueError(f"from_matrix: {name} has shape {r.shape}; expected (n_clusters, 2)")
    if keep.shape != (ranges_i.shape[0], ranges_j.shape[0]) or keep.dtype != np.bool_:
        raise ValueError(
            f"from_matrix: keep is {keep.dtype}{keep.shape}; expected bool "
            f"({ranges_i.shape[0]}, {ranges_j.shape[0]}) (i clusters × j clusters)")
    _, cols = np.nonzero(keep)    # row-major: each i cluster's j clusters, in order
    _, rows_t = np.nonzero(keep.T)  # each j cluster's i clusters, in order
    out = (ranges_i, np.cumsum(keep.sum(1)), ranges_j[cols],
           ranges_j, np.cumsum(keep.sum(0)), ranges_i[rows_t])
    return tuple(jnp.asarray(np.asarray(a, np.int32).reshape(a.shape)) for a in out)
