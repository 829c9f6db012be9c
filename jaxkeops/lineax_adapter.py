"""Use a LazyTensor as a lineax linear operator (optional: `pip install lineax`).

lineax is the JAX ecosystem's library of linear solvers (CG, GMRES, BiCGStab, ...). Its solvers
only need the matrix-vector product, which for a symbolic matrix is one Sum reduction, so the
adapter is a `lineax.FunctionLinearOperator` around `v ↦ αv + K @ v`. lineax closure-converts
that function, so the arrays K depends on stay differentiable, and its transpose (for reverse
mode) is derived by JAX from the transpose rule of the reduction.

lineax is imported when the adapter is first called, never by `import jaxkeops`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _import_lineax():
    try:
        import lineax
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jaxkeops.lineax_operator needs lineax: pip install lineax"
        ) from error
    return lineax


def lineax_operator(K, *, alpha=0.0, symmetric: bool = False,
                    positive_semidefinite: bool = False):
    """The lineax operator v ↦ alpha·v + K @ v on vectors shaped (N,), for K a scalar
    LazyTensor (M, N).

    `symmetric` / `positive_semidefinite` add lineax's tags (they are promises, not checked):
    lineax.CG needs a positive semidefinite operator, lineax.Cholesky a symmetric one, etc.
    Columns of several right-hand sides are solved by `jax.vmap` over lineax.linear_solve (which
    needs the batching rule of the reduction) or, with one kernel call per iteration, by
    `K.solve`.
    """
    from jaxkeops.lazy_tensor import LazyTensor, _check_alpha

    lx = _import_lineax()
    if not isinstance(K, LazyTensor):
        raise TypeError(f"lineax_operator: K is a {type(K).__name__}; expected a LazyTensor")
    if K.formula.dim != 1:
        raise ValueError(
            f"lineax_operator: K has shape {K.shape}; expected a scalar LazyTensor (M, N)"
        )
    if K.nj is None or not K.variables:
        raise ValueError(
            f"lineax_operator: K has shape {K.shape} and no j variable; the input size N "
            "must be known from a j variable"
        )
    n_out = K.ni if K.ni is not None else 1
    has_ridge = not (isinstance(alpha, (int, float)) and alpha == 0)  # skip the no-op term
    if has_ridge and n_out != K.nj:
        raise ValueError(
            f"lineax_operator: alpha·I + K needs a square K; K has shape {K.shape}"
        )
    dtype = K._dtype() or np.dtype(jnp.result_type(*(v.array for v in K.variables)))
    alpha = _check_alpha(alpha, dtype, "lineax_operator")
    tags = []
    if symmetric:
        tags.append(lx.symmetric_tag)
    if positive_semidefinite:
        tags.append(lx.positive_semidefinite_tag)

    def matvec(v):
        return alpha * v + K @ v if has_ridge else K @ v

    return lx.FunctionLinearOperator(
        matvec, jax.ShapeDtypeStruct((K.nj,), dtype), tags=tuple(tags)
    )
