"""The dense float64 oracle, applied to a LazyTensor as the tests use it."""

import jax.numpy as jnp
import numpy as np

from jaxkeops.reference import dense_reduce, grid_values


def dense(lazy, reduction, axis, formulas=None, reduction_params=(), dtype=jnp.float64):
    """Materialise the grid in `dtype` (every intermediate rounded to it) and reduce it; returns
    the outputs as numpy arrays."""
    formulas = (lazy.formula,) if formulas is None else formulas
    operands = [jnp.asarray(v.array, dtype=dtype) for v in lazy.variables]
    outs = dense_reduce(
        formulas,
        tuple(v.cat for v in lazy.variables),
        operands,
        reduction=reduction,
        reduction_params=reduction_params,
        axis=axis,
        ni=lazy.ni or 1,
        nj=lazy.nj or 1,
    )
    return tuple(np.asarray(o) for o in outs)


def abs_sum(lazy, axis):
    """Sum over the reduced axis of |F|: the scale that rounding errors of a Sum grow with."""
    n_outer, n_inner = (lazy.ni or 1, lazy.nj or 1)[:: 1 if axis == 1 else -1]
    operands = [jnp.asarray(v.array, dtype=jnp.float64) for v in lazy.variables]
    cats = tuple(v.cat for v in lazy.variables)
    (values,) = grid_values((lazy.formula,), cats, operands, axis, n_outer, n_inner)
    return np.asarray(jnp.abs(values).sum(1))


def assert_close(out, ref, dtype, rtol32=1e-4, rtol64=1e-10, scale=None):
    """Entrywise |out - ref| <= rtol * scale; scale defaults to |ref| + mean |ref| (pass the
    sum of absolute terms for sums that may cancel)."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    rtol = rtol32 if np.dtype(dtype) == np.float32 else rtol64
    if scale is None:
        scale = np.abs(ref) + (np.abs(ref).mean() if ref.size else 0.0)
    # Floor: a term that cancels to ~0 still carries rounding of its O(1) intermediates.
    scale = np.asarray(scale)
    finite_scale = np.abs(scale[np.isfinite(scale)])
    scale = scale + 1e-6 * (finite_scale.mean() if finite_scale.size else 0.0) + 1e-30
    err = np.abs(out - ref) / scale
    assert np.all(np.isfinite(out) == np.isfinite(ref)), "finiteness differs"
    finite = np.isfinite(ref)
    worst = err[finite].max() if finite.any() else 0.0
    assert worst <= rtol, f"relative error {worst:.3g} > {rtol:.1g}"
