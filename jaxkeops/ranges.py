"""Block-sparse reductions: KeOps's `ranges` 6-tuple, checked and turned into a dense mask.

A ranges value says which blocks of the M×N grid interact (the others are skipped):

  ranges_i    (Mc, 2)  clusters of i: rows [start, end), disjoint (sorted, as cluster tools make)
  slices_i    (Mc,)    cluster k of i interacts with redranges_j[slices_i[k-1]:slices_i[k]]
                       (slices_i[-1] read as 0): cumulative end positions
  redranges_j (Pj, 2)  ranges [start, end) of j
  ranges_j, slices_j, redranges_i   the same seen from j (clusters of j, ranges of i)

A reduction over j (axis=1) reads the first three, a reduction over i (axis=0) the last three,
so the transposed reduction of a gradient takes the same tuple. Rows outside every cluster
interact with nothing and get the reduction's empty value (Sum 0, LogSumExp -inf, Min +inf with
index -1, ...). The arrays are operands of `keops_reduce_p` (data, not static): new ranges reuse
the compiled code. The executors skip the blocks; `masked_reduce` is the pure-JAX meaning.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.reductions import REDUCTIONS, index_dtype

RANGES_NAMES = ("ranges_i", "slices_i", "redranges_j", "ranges_j", "slices_j", "redranges_i")
N_RANGES = len(RANGES_NAMES)
_INT_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))

# Reductions whose empty slots are "no pair" (index -1) rather than a neutral value.
_PICKS = {"Min": False, "ArgMin": False, "Min_ArgMin": False,
          "Max": True, "ArgMax": True, "Max_ArgMax": True}
_KMINS = ("KMin", "ArgKMin", "KMin_ArgKMin")


def check_ranges(ranges, method: str) -> tuple[jax.Array, ...] | None:
    """The ranges of a reduction call as six int32 arrays (None stays None); a clear error for
    anything else. Values (bounds, order) are data: the executors check them at run time."""
    if ranges is None:
        return None
    if not isinstance(ranges, (tuple, list)) or len(ranges) != N_RANGES:
        what = (f"a {type(ranges).__name__} of length {len(ranges)}"
                if isinstance(ranges, (tuple, list)) else f"a {type(ranges).__name__}")
        raise TypeError(
            f"{method}: ranges is {what}; expected KeOps's 6-tuple of integer arrays "
            f"({', '.join(RANGES_NAMES)}), e.g. from jaxkeops.cluster.from_matrix"
        )
    out = []
    for name, r in zip(RANGES_NAMES, ranges):
        if not hasattr(r, "shape") or not hasattr(r, "dtype"):
            raise TypeError(f"{method}: ranges {name} is a {type(r).__name__}; expected an "
                            "int32 or int64 array")
        if np.dtype(r.dtype) not in _INT_DTYPES:
            raise TypeError(f"{method}: ranges {name} has dtype {r.dtype}; expected int32 or int64")
        expected = (None,) if name.startswith("slices") else (None, 2)
        if len(r.shape) != len(expected) or (len(expected) == 2 and r.shape[1] != 2):
            form = "(n,)" if len(expected) == 1 else "(n, 2)"
            raise ValueError(f"{method}: ranges {name} has shape {tuple(r.shape)}; expected {form}")
        out.append(jnp.asarray(r).astype(jnp.int32))
    for (a, b) in ((0, 1), (3, 4)):
        if out[a].shape[0] != out[b].shape[0]:
            raise ValueError(
                f"{method}: ranges {RANGES_NAMES[a]} has {out[a].shape[0]} clusters but "
                f"{RANGES_NAMES[b]} has {out[b].shape[0]}; expected one slice end per cluster"
            )
    return tuple(out)


def check_ranges_avals(avals, primitive: str) -> None:
    """Trace-time check of the six ranges operands of the primitive (unbatched int32)."""
    if len(avals) != N_RANGES:
        raise TypeError(f"{primitive}: {len(avals)} ranges operands, expected {N_RANGES}")
    for name, aval in zip(RANGES_NAMES, avals):
        rank = 1 if name.startswith("slices") else 2
        if aval.dtype != np.int32 or aval.ndim != rank or (rank == 2 and aval.shape[1] != 2):
            raise TypeError(f"{primitive}: ranges operand {name} is {aval.dtype}{aval.shape}; "
                            f"expected int32 {'(n,)' if rank == 1 else '(n, 2)'}")


def half_for_axis(ranges, axis: int):
    """(clusters of the outer axis, their slice ends, the inner ranges) for a reduction over j
    (axis=1) or over i (axis=0)."""
    return tuple(ranges[:3]) if axis == 1 else tuple(ranges[3:])


def block_mask(ranges, axis: int, outer_rows: jax.Array, n_inner: int) -> jax.Array:
    """Boolean (len(outer_rows), n_inner): which pairs of the given outer rows interact.
    Built densely (clusters × rows and clusters × inner): for references and the fallback."""
    clusters, slice_ends, inner_ranges = half_for_axis(ranges, axis)
    n_red = inner_ranges.shape[0]
    j = jnp.arange(n_inner)
    in_range = (inner_ranges[:, :1] <= j) & (j < inner_ranges[:, 1:])       # (n_red, n_inner)
    # The cluster owning inner range t: the first k with t < slice_ends[k].
    owner = jnp.searchsorted(slice_ends, jnp.arange(n_red), side="right")   # (n_red,)
    n_clusters = clusters.shape[0]
    cluster_inner = jnp.zeros((n_clusters + 1, n_inner), jnp.int32).at[owner].max(
        in_range.astype(jnp.int32))[:n_clusters]                           # (n_clusters, n_inner)
    r = outer_rows[:, None]
    row_in = (clusters[:, 0] <= r) & (r < clusters[:, 1])                   # (rows, n_clusters)
    return (row_in.astype(jnp.int32) @ cluster_inner) > 0


def masked_reduce(reduction: str, values: tuple[jax.Array, ...], mask: jax.Array, params):
    """The reduction of `values` (each (n_outer, n_inner, dim)) over the pairs where `mask`
    (n_outer, n_inner) is true; masked-out pairs do not exist (empty rows: the empty value)."""
    m = mask[:, :, None]
    if reduction == "Sum":
        return (jnp.sum(jnp.where(m, values[0], 0), axis=1),)
    if reduction in ("LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight"):
        scores = jnp.where(m, values[0], -jnp.inf)
        rest = tuple(jnp.where(m, v, 0) for v in values[1:])
        return REDUCTIONS[reduction].dense((scores,) + rest, params)
    if reduction in _PICKS:
        is_max = _PICKS[reduction]
        v = jnp.where(m, values[0], -jnp.inf if is_max else jnp.inf)
        best = jnp.max(v, axis=1) if is_max else jnp.min(v, axis=1)
        index = jnp.argmax(v, axis=1) if is_max else jnp.argmin(v, axis=1)
        index = jnp.where(mask.any(axis=1)[:, None], index, -1).astype(index_dtype())
        both = (best, index)
        select = {"Min": (0,), "Max": (0,), "ArgMin": (1,), "ArgMax": (1,)}.get(reduction, (0, 1))
        return tuple(both[k] for k in select)
    if reduction in _KMINS:
        (K,) = params
        v = values[0]
        n_outer, _, dim = v.shape
        m = jnp.broadcast_to(m, v.shape)
        # Valid pairs first in index order, then a stable sort by value (masked read as +inf):
        # equal values stay in ascending index order, valid before masked.
        order = jnp.argsort(~m, axis=1, stable=True)
        key = jnp.where(jnp.take_along_axis(m, order, axis=1),
                        jnp.take_along_axis(v, order, axis=1), jnp.inf)
        order = jnp.take_along_axis(order, jnp.argsort(key, axis=1, stable=True), axis=1)
        order = order[:, :K, :]
        count = mask.sum(axis=1)[:, None, None]
        slot_ok = jnp.arange(order.shape[1])[None, :, None] < count
        best = jnp.where(slot_ok, jnp.take_along_axis(v, order, axis=1), jnp.inf)
        index = jnp.where(slot_ok, order, -1).astype(index_dtype())
        shape = (n_outer, K) if dim == 1 else (n_outer, K, dim)
        both = (best.reshape(shape), index.reshape(shape))
        select = {"KMin": (0,), "ArgKMin": (1,)}.get(reduction, (0, 1))
        return tuple(both[k] for k in select)
    raise NotImplementedError(f"ranges with the {reduction} reduction")


# --- LazyTensor integration: `ranges=` keywords and the `K.ranges` attribute ------------------

# The LazyTensor methods that reduce (KeOps's names); each takes `ranges=`.
REDUCTION_METHODS = ("sum", "logsumexp", "sumsoftmaxweight", "min", "max", "argmin", "argmax",
                     "min_argmin", "max_argmax", "Kmin", "argKmin", "Kmin_argKmin")


def swap_axes(ranges):
    """The ranges of the transposed matrix: the i and j halves exchanged (KeOps's swap_axes)."""
    ranges = tuple(ranges)
    return ranges[3:] + ranges[:3]


def inherit_ranges(out, *sources):
    """`out` with the ranges of the first source that has some: a formula built from a
    block-sparse K stays block-sparse (K.ranges = r; (K * v).sum(1))."""
    for source in sources:
        ranges = getattr(source, "ranges", None)
        if ranges is not None:
            out.ranges = ranges
            break
    return out


def unsupported_with_ranges(ranges, method: str) -> None:
    if ranges is not None:
        raise NotImplementedError(
            f"{method}: block-sparse ranges are not supported here yet; set K.ranges = None")


def add_ranges_keyword(cls) -> None:
    """Give each reduction method of `cls` a `ranges=` keyword: the call runs on a copy of the
    LazyTensor whose `ranges` attribute is the given tuple (None keeps the attribute's)."""
    for name in REDUCTION_METHODS:
        setattr(cls, name, _with_ranges_keyword(getattr(cls, name)))


def _with_ranges_keyword(method):
    @functools.wraps(method)
    def reduce(self, *args, ranges=None, **kwargs):
        if ranges is not None:
            # A shallow copy (not copy.copy, which caches __slotnames__ on the class).
            clone = object.__new__(type(self))
            clone.__dict__.update(vars(self))
            self = clone
            self.ranges = tuple(ranges) if isinstance(ranges, (tuple, list)) else ranges
        return method(self, *args, **kwargs)

    return reduce
