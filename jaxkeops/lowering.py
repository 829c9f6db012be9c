"""Lowering of `keops_reduce_p`, per platform.

"cpu" calls the native executor through the XLA FFI; every other platform gets the pure-JAX
chunked implementation (jaxkeops/reference.py). This is the only place that knows platforms.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.interpreters import mlir

from jaxkeops import _native
from jaxkeops.primitive import keops_reduce_p
from jaxkeops.program import compile_program
from jaxkeops.reference import chunked_reduce


def _native_lowering(ctx, *operands, formulas, var_cats, reduction, reduction_params, axis, ni, nj,
                     batch_shape):
    program = compile_program(
        formulas,
        var_cats,
        tuple(aval.shape[-1] for aval in ctx.avals_in),
        reduction,
        reduction_params,
        axis,
    )
    n_inner = nj if axis == 1 else ni
    # A symbolic size (jax.export with polymorphic shapes) is read off the operands at run time.
    n_inner = n_inner if isinstance(n_inner, int) else -1
    # batch_shape needs no attribute: the handlers read the batch dims off the buffer shapes.
    lower = jax.ffi.ffi_lowering(_native.REDUCE_TARGET)
    # Typed numpy scalars: a Python int would reach the handler with the wrong width.
    return lower(ctx, *operands, program=program, n_inner=np.int64(n_inner))


def _fallback(*operands, **params):
    formulas, var_cats = params.pop("formulas"), params.pop("var_cats")
    return chunked_reduce(formulas, var_cats, operands, **params)


_fallback_lowering = mlir.lower_fun(_fallback, multiple_results=True)
mlir.register_lowering(keops_reduce_p, _fallback_lowering)
mlir.register_lowering(keops_reduce_p, _native_lowering, platform="cpu")
if _native.has_cuda():
    mlir.register_lowering(keops_reduce_p, _native_lowering, platform="cuda")
else:
    def _cuda_fallback_lowering(ctx, *operands, **params):
        _native.warn_no_cuda()  # say so, once: the fallback is much slower than the kernels
        return _fallback_lowering(ctx, *operands, **params)

    mlir.register_lowering(keops_reduce_p, _cuda_fallback_lowering, platform="cuda")
