"""Solves of a formula linear in one of its variables: KeOps' KernelSolve and
`LazyTensor.solve(b, var=v)`.

The formula F(..., a) is linear in the variable a (checked by transposing it: every op between a
and the output must be linear in it). The kernel product a ↦ Σ F(..., a) over a's own axis is a
Sum reduction of the same formula with the candidate a in a's place; (alpha·I + K) a = b is then
solved by `ridge_solve` (conjugate gradient inside lax.custom_linear_solve, so differentiable by
implicit differentiation, which assumes K symmetric).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.autodiff import transpose_formula
from jaxkeops.formula import CAT_I, CAT_J, Var, variables
from jaxkeops.solve import default_maxiter, ridge_solve, warn_unless_converged


def check_linear_in(formula, index: int, where: str) -> None:
    """Raise unless `formula` is linear in variable `index` (and uses it)."""
    fresh = 1 + max(v.index for v in variables([formula]))
    try:
        transpose_formula(formula, {index}, Var(fresh, formula.dim, CAT_I))
    except NotImplementedError as e:
        raise ValueError(f"{where}: the formula {formula!r} is not linear in its variable "
                         f"{index} (the unknown): {e}") from None


def solve_linear_in(lazy, var_k: int, b, reduce_axis: int, *, alpha=1e-10, eps=1e-6,
                    maxiter=None, return_info=False, where="solve"):
    """Solve alpha·a + Σ_{inner} F(..., a) = b for the variable number `var_k` of the
    LazyTensor `lazy` (F's dimension is a's), reducing over i (reduce_axis 0) or j (1), which
    must be a's axis. b is shaped (n, D) or (n,) for D = 1; returns a shaped like b."""
    from jaxkeops.lazy_tensor import _check_alpha, _check_float_dtype

    var = lazy.variables[var_k]
    inner = CAT_J if reduce_axis == 1 else CAT_I
    if var.cat != inner:
        raise ValueError(f"{where}: the unknown is not a variable of the reduced axis "
                         f"({'j' if inner == CAT_J else 'i'})")
    if lazy.batch_shape:
        raise NotImplementedError(f"{where}: batch dimensions {lazy.batch_shape} are not supported "
                                  "here (use jax.vmap)")
    dim = lazy.formula.dim
    check_linear_in(lazy.formula, var_k, where)
    b = jnp.asarray(b)
    vector = b.ndim == 1
    rhs = b[:, None] if vector else b
    n = lazy.ni if reduce_axis == 1 else lazy.nj
    if lazy.ni is not None and lazy.nj is not None and lazy.ni != lazy.nj:
        raise ValueError(f"{where}: the kernel matrix is {lazy.ni}×{lazy.nj}; expected a square one")
    if rhs.ndim != 2 or rhs.shape[1] != dim or (n is not None and rhs.shape[0] != n):
        raise ValueError(f"{where}: b has shape {tuple(b.shape)}; expected ({n}, {dim})"
                         + (f" or ({n},)" if dim == 1 else ""))
    _check_float_dtype(rhs, f"{where}: b")
    dtype = np.dtype(rhs.dtype)
    if lazy._dtype() is not None and lazy._dtype() != dtype:
        raise TypeError(f"{where}: b has dtype {dtype}; expected {lazy._dtype()} like the formula")
    alpha = _check_alpha(alpha, dtype, where)
    if maxiter is None:
        maxiter = default_maxiter(rhs.shape[0])
    operands = tuple(v.array.astype(dtype) if v.weak else v.array for v in lazy.variables)
    a, info = _jitted_solve(operands, rhs, jnp.asarray(alpha, dtype), formula=lazy.formula,
                            cats=tuple(v.cat for v in lazy.variables), var_k=var_k,
                            reduce_axis=reduce_axis, n=int(rhs.shape[0]), eps=float(eps),
                            maxiter=int(maxiter))
    if vector:
        a, info = a[:, 0], info._replace(residual=info.residual[0], status=info.status[0])
    if not return_info:
        warn_unless_converged(info.status)
    return (a, info) if return_info else a


@functools.partial(jax.jit, static_argnames=("formula", "cats", "var_k", "reduce_axis", "n",
                                             "eps", "maxiter"))
def _jitted_solve(operands, b, alpha, *, formula, cats, var_k, reduce_axis, n, eps, maxiter):
    from jaxkeops.lazy_tensor import LazyTensor, _Variable

    def kernel_product(a):
        arrays = list(operands)
        arrays[var_k] = a
        K = LazyTensor._make(formula, [_Variable(x, c) for x, c in zip(arrays, cats)], n, n)
        return K._reduce("Sum", reduce_axis)[0]

    return ridge_solve(kernel_product, b, alpha, eps=eps, maxiter=maxiter)


def solve_for_variable(lazy, b, var, **kwargs):
    """`lazy.solve(b, var=v)`: lazy is linear in its variable v; b an array indexed by i (as
    pykeops: (M, D) or (M,)) or a LazyTensor Vi(b) / Vj(b) saying which axis b lives on."""
    from jaxkeops.formula import CAT_P
    from jaxkeops.lazy_tensor import LazyTensor

    if not isinstance(var, LazyTensor) or not isinstance(var.formula, Var) or len(var.variables) != 1:
        raise TypeError(f"solve: var is {type(var).__name__}; expected a LazyTensor that is one "
                        "variable of K (Vi(a) or Vj(a))")
    matches = [k for k, v in enumerate(lazy.variables) if v.same_as(var.variables[0])]
    if not matches:
        raise ValueError("solve: var is not a variable of K (it must be the very LazyTensor "
                         "variable K was built from)")
    cat = CAT_I
    if isinstance(b, LazyTensor):
        if not isinstance(b.formula, Var) or b.formula.cat == CAT_P:
            raise ValueError(f"solve: b is a LazyTensor with formula {b.formula!r}; expected a "
                             "single i variable (Vi(b)) or j variable (Vj(b)), or an array")
        cat, b = b.formula.cat, b.variables[0].array
    reduce_axis = 1 if cat == CAT_I else 0
    return solve_linear_in(lazy, matches[0], b, reduce_axis, where="solve", **kwargs)
