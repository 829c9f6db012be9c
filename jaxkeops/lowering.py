"""Lowering of `keops_reduce_p`, per platform.

"cpu" calls the native executor through the XLA FFI; "cuda" calls the fused kernels
(`jaxkeops_fused`, docs/fused-kernels.md) when the family matcher (jaxkeops/families.py) finds
the formula in a family, the interpreter otherwise — as does "cpu" under the test-only
`families.emulate_fused_on_cpu()`. Every other platform gets the pure-JAX chunked implementation
(jaxkeops/reference.py). This is the only place that knows platforms.

Under jit with operands sharded across devices, every platform's rule first hands the call to
jaxkeops/partitioning.py, which splits it into per-device calls of `keops_local_reduce_p`; that
primitive gets the same per-platform rules and is never split again.

Block-sparse calls (`with_ranges`, jaxkeops/ranges.py) are never split across devices nor given
to the fused kernels: the interpreters skip the blocks (the ranges are six trailing operands of
the FFI call), the fallback masks the grid.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.interpreters import mlir

from jaxkeops import _native
from jaxkeops.families import emulating_fused_on_cpu, match_fused
from jaxkeops.partitioning import keops_local_reduce_p, lower_partitioned, partitions
from jaxkeops.primitive import keops_reduce_p, split_ranges
from jaxkeops.program import compile_program
from jaxkeops.ranges import half_for_axis
from jaxkeops.reference import chunked_reduce


def _native_lowering(ctx, *operands, formulas, var_cats, reduction, reduction_params, axis, ni, nj,
                     batch_shape, with_ranges=False):
    program = compile_program(
        formulas,
        var_cats,
        tuple(aval.shape[-1] for aval in ctx.avals_in[: len(var_cats)]),
        reduction,
        reduction_params,
        axis,
    )
    n_inner = nj if axis == 1 else ni
    # A symbolic size (jax.export with polymorphic shapes) is read off the operands at run time.
    n_inner = n_inner if isinstance(n_inner, int) else -1
    # batch_shape needs no attribute: the handlers read the batch dims off the buffer shapes.
    lower = jax.ffi.ffi_lowering(_native.REDUCE_TARGET)
    if with_ranges:  # the executors read the half of the tuple this axis needs (block_ranges.h)
        n_vars = len(var_cats)
        operands = operands[:n_vars] + tuple(half_for_axis(operands[n_vars:], axis))
        ctx = ctx.replace(avals_in=ctx.avals_in[:n_vars]
                          + tuple(half_for_axis(ctx.avals_in[n_vars:], axis)))
    # Typed numpy scalars: a Python int would reach the handler with the wrong width.
    return lower(ctx, *operands, program=program, n_inner=np.int64(n_inner))


@functools.lru_cache(maxsize=4096)
def _cached_match(formulas, var_cats, reduction, reduction_params, axis):
    return match_fused(formulas, var_cats, reduction, reduction_params, axis)


def _fused_or_native_lowering(platform):
    """The fused kernels when the formula matches a family (on "cpu" only while emulating),
    the interpreter otherwise."""

    def lowering(ctx, *operands, formulas, var_cats, reduction, reduction_params, axis, ni, nj,
                 batch_shape, with_ranges=False):
        plan = None
        if (platform == "cuda" or emulating_fused_on_cpu()) and not with_ranges:
            plan = _cached_match(formulas, var_cats, reduction, reduction_params, axis)
        if plan is None:
            return _native_lowering(ctx, *operands, formulas=formulas, var_cats=var_cats,
                                    reduction=reduction, reduction_params=reduction_params,
                                    axis=axis, ni=ni, nj=nj, batch_shape=batch_shape,
                                    with_ranges=with_ranges)
        run = functools.partial(plan.run, ni=ni, nj=nj, batch_shape=batch_shape,
                                out_avals=tuple(ctx.avals_out))
        return mlir.lower_fun(run, multiple_results=True)(ctx, *operands)

    return lowering


def _fallback(*operands, **params):
    formulas, var_cats = params.pop("formulas"), params.pop("var_cats")
    operands, ranges, params = split_ranges(operands, params)
    return chunked_reduce(formulas, var_cats, operands, ranges=ranges, **params)


_fallback_lowering = mlir.lower_fun(_fallback, multiple_results=True)


def _cuda_fallback_lowering(ctx, *operands, **params):
    _native.warn_no_cuda()  # say so, once: the fallback is much slower than the kernels
    return _fallback_lowering(ctx, *operands, **params)


def _partitioned_or(rule):
    """`rule` on one device (and under shard_map or jax.export); a partitioned call across the
    devices of a sharded jit."""

    def lowering(ctx, *operands, **params):
        if partitions(ctx) and not params.get("with_ranges"):  # block-sparse: never split
            return lower_partitioned(ctx, operands, params)
        return rule(ctx, *operands, **params)

    return lowering


_RULES = {
    None: _fallback_lowering,  # any other platform
    "cpu": _fused_or_native_lowering("cpu"),
    "cuda": _fused_or_native_lowering("cuda") if _native.has_cuda() else _cuda_fallback_lowering,
}
for _platform, _rule in _RULES.items():
    mlir.register_lowering(keops_reduce_p, _partitioned_or(_rule), platform=_platform)
    mlir.register_lowering(keops_local_reduce_p, _rule, platform=_platform)
