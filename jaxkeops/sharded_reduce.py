"""`sharded_reduce`: a LazyTensor reduction over an inner axis that `jax.shard_map` split.

Inside shard_map each device holds a block of the points. A reduction over an axis whose points
are split across the mesh axis `axis_name` is the combine of the blocks' reductions: this helper
runs the block's reduction and combines it across `axis_name` in one call, with the combines the
automatic partitioning uses (jaxkeops/shard_combine.py). Differentiable, and the result is typed
invariant over `axis_name` (check_vma=True accepts it with out_specs that do not split it).
"""

from __future__ import annotations

from jaxkeops import shard_combine
from jaxkeops.lazy_tensor import LazyTensor
from jaxkeops.ranges import unsupported_with_ranges

_PICKS = {"min": (False, (0,)), "argmin": (False, (1,)), "min_argmin": (False, (0, 1)),
          "max": (True, (0,)), "argmax": (True, (1,)), "max_argmax": (True, (0, 1))}
_KMINS = {"Kmin": (0,), "argKmin": (1,), "Kmin_argKmin": (0, 1)}
METHODS = ("sum", "logsumexp", "sumsoftmaxweight", *_PICKS, *_KMINS)


def _select(pair, select):
    return pair[select[0]] if len(select) == 1 else tuple(pair[k] for k in select)


def sharded_reduce(lazy: LazyTensor, method: str, *, axis: int, axis_name, K: int | None = None,
                   weight=None):
    """`lazy.<method>(...)` over the whole reduced axis, inside `jax.shard_map`, where each
    device holds one block of the reduced axis' points, split over the mesh axis (or tuple of
    axes) `axis_name` in shard order.

    method: "sum", "logsumexp" (with an optional `weight`), "sumsoftmaxweight" (`weight`
    needed), "min", "max", "argmin", "argmax", "min_argmin", "max_argmax", "Kmin", "argKmin",
    "Kmin_argKmin" (`K` needed). axis: the reduced axis as in the LazyTensor methods (with k
    batch dims, k reduces over i and k + 1 over j). Indices are global (block offset added), ties
    go to the lowest index, as on one device. Every block must have the same size, and for the
    K-min reductions at least K points. A K @ v product is `sharded_reduce(K * Vj(v), "sum",
    axis=1, ...)`.
    """
    if not isinstance(lazy, LazyTensor):
        raise TypeError(f"sharded_reduce: lazy is a {type(lazy).__name__}; expected a LazyTensor")
    # A block's indices are local; ranges index the whole axis: not combined yet.
    unsupported_with_ranges(lazy.ranges, "sharded_reduce")
    if method not in METHODS:
        raise ValueError(f"sharded_reduce: method={method!r}; expected one of {METHODS}")
    if axis_name is None or axis_name == ():
        raise ValueError("sharded_reduce: axis_name is empty; expected the mesh axis name (or "
                         "tuple of names) that splits the reduced axis")
    axes = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)
    grid_axis = lazy._reduction_axis(axis, None, f"sharded_reduce({method!r})")
    n_inner = (lazy.nj if grid_axis == 1 else lazy.ni) or 1
    if method in _KMINS and K is None:
        raise ValueError(f"sharded_reduce: method={method!r} needs K, got K=None")
    if weight is not None and method not in ("logsumexp", "sumsoftmaxweight"):
        raise ValueError(f"sharded_reduce: weight is only for 'logsumexp' and "
                         f"'sumsoftmaxweight', got method={method!r}")
    if method == "sumsoftmaxweight" and weight is None:
        raise ValueError("sharded_reduce: method='sumsoftmaxweight' needs a weight, got None")

    if method == "sum":
        return shard_combine.combine_sum(lazy.sum(axis), axes)
    if method == "logsumexp" and weight is None:
        return shard_combine.combine_logsumexp(lazy.logsumexp(axis), axes)
    if method in ("logsumexp", "sumsoftmaxweight"):
        average, L = lazy.sumsoftmaxweight(weight, axis), lazy.logsumexp(axis)
        combine = (shard_combine.combine_logsumexp_weight if method == "logsumexp"
                   else shard_combine.combine_sumsoftmaxweight)
        return combine(average, L, axes)
    offset = shard_combine.shard_offset(axes, n_inner)
    if method in _PICKS:
        is_max, select = _PICKS[method]
        values, indices = lazy.max_argmax(axis) if is_max else lazy.min_argmin(axis)
        return _select(shard_combine.combine_pick(values, indices, offset, axes, is_max=is_max),
                       select)
    values, indices = lazy.Kmin_argKmin(K, axis)
    pair = shard_combine.combine_kmin(values, indices, offset, axes, K=K,
                                      k_axis=len(lazy.batch_shape) + 1,
                                      gather=shard_combine.gather_by_psum)
    return _select(pair, _KMINS[method])
