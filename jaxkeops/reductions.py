"""THE reduction table: one entry per reduction, shared by the primitive, the oracle and the
kernels (its code is the one in src/reductions.h; a test checks the two tables agree).

A reduction takes the values of one or more formulas on the grid and reduces them over the inner
axis. Its entry says how many formulas it takes, checks their dims and its static parameters
(at trace time), gives the shapes and dtypes of its outputs, and a dense jnp reference that
reduces arrays shaped (n_outer, n_inner, dim) over axis 1.

Values on an empty inner axis (n_inner = 0): Sum 0, LogSumExp(Weight) -inf, Min +inf, Max -inf,
every arg index -1 (as KeOps' "no index"), SumSoftMaxWeight NaN (an empty average). K-min
reductions need 1 <= K <= n_inner, so they never see an empty axis.

Index outputs are int32, or int64 when jax_enable_x64 is on (decided at trace time). Ties go to
the lowest inner index; K-min lists equal values in ascending index order. NaN values: the native
min/max/K-min kernels skip them (as KeOps' comparisons do), the jnp references propagate them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ReductionSpec:
    name: str
    code: int
    n_formulas: int
    # (formula dims, params, value dtype) -> per output (trailing shape, dtype)
    outputs: Callable[[tuple[int, ...], tuple, np.dtype], list[tuple[tuple[int, ...], np.dtype]]]
    # (values shaped (n_outer, n_inner, dim) per formula, params) -> tuple of outputs
    dense: Callable
    # (formula dims, params, n_inner) -> None; raises ValueError saying what is wrong
    check: Callable[[tuple[int, ...], tuple, int], None]


REDUCTIONS: dict[str, ReductionSpec] = {}


def _register(spec: ReductionSpec) -> None:
    assert spec.name not in REDUCTIONS
    REDUCTIONS[spec.name] = spec


def index_dtype() -> np.dtype:
    """The dtype of arg outputs: int64 when jax_enable_x64 is on, else int32."""
    return np.dtype(np.int64 if jax.config.jax_enable_x64 else np.int32)


def check_reduction(reduction: str, dims: tuple[int, ...], params: tuple, n_inner: int) -> None:
    """Trace-time validation of a reduction call (formula count and dims, parameters); the
    ValueError's message does not name the reduction (callers add what the user called)."""
    spec = REDUCTIONS[reduction]
    if len(dims) != spec.n_formulas:
        raise ValueError(f"takes {spec.n_formulas} formula(s), got {len(dims)}")
    spec.check(tuple(dims), tuple(params), n_inner)


# --- Sum ------------------------------------------------------------------------------------------


def _no_params(dims, params, n_inner):
    if params:
        raise ValueError(f"takes no reduction parameters, got {params}")


_register(
    ReductionSpec(
        name="Sum",
        code=0,
        n_formulas=1,
        outputs=lambda dims, params, dtype: [((dims[0],), dtype)],
        dense=lambda values, params: (jnp.sum(values[0], axis=1),),
        check=_no_params,
    )
)

# --- LogSumExp family (running maximum) -----------------------------------------------------------


def _shifted_exp(scores):
    """exp(S - m) and m, with m the row maximum made finite (rows of -inf give exp = 0)."""
    m = jnp.max(scores, axis=1, keepdims=True, initial=-jnp.inf)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return jnp.exp(scores - m), m[:, 0, :]


def _dense_logsumexp(values, params):
    e, m = _shifted_exp(values[0])
    return (m + jnp.log(jnp.sum(e, axis=1)),)


def _dense_logsumexp_weight(values, params):
    """log Σ_j exp(S_ij) w_ij: NaN where the weighted sum is negative."""
    e, m = _shifted_exp(values[0])
    return (m + jnp.log(jnp.sum(e * values[1], axis=1)),)


def _dense_sumsoftmaxweight(values, params):
    e, _ = _shifted_exp(values[0])
    return (jnp.sum(e * values[1], axis=1) / jnp.sum(e, axis=1),)


def _scalar_score(dims, params, n_inner):
    _no_params(dims, params, n_inner)
    if dims[0] != 1:
        raise ValueError(
            f"the scores S_ij have dimension {dims[0]}, expected a scalar formula (dimension 1)"
        )


_register(
    ReductionSpec(
        name="LogSumExp",
        code=1,
        n_formulas=1,
        outputs=lambda dims, params, dtype: [((1,), dtype)],
        dense=_dense_logsumexp,
        check=_scalar_score,
    )
)
_register(
    ReductionSpec(
        name="LogSumExpWeight",
        code=2,
        n_formulas=2,
        outputs=lambda dims, params, dtype: [((dims[1],), dtype)],
        dense=_dense_logsumexp_weight,
        check=_scalar_score,
    )
)
_register(
    ReductionSpec(
        name="SumSoftMaxWeight",
        code=3,
        n_formulas=2,
        outputs=lambda dims, params, dtype: [((dims[1],), dtype)],
        dense=_dense_sumsoftmaxweight,
        check=_scalar_score,
    )
)

# --- Min / Max and their arg versions -------------------------------------------------------------


def _dense_pick(values, is_max):
    """Best value and the lowest index reaching it, per component; +-inf and -1 if empty."""
    v = values[0]
    n_outer, n_inner, dim = v.shape
    if n_inner == 0:
        fill = -jnp.inf if is_max else jnp.inf
        return (jnp.full((n_outer, dim), fill, v.dtype),
                jnp.full((n_outer, dim), -1, index_dtype()))
    best = jnp.max(v, axis=1) if is_max else jnp.min(v, axis=1)
    index = jnp.argmax(v, axis=1) if is_max else jnp.argmin(v, axis=1)  # first occurrence
    return best, index.astype(index_dtype())


def _register_pick(name, code, is_max, select):
    def outputs(dims, params, dtype):
        return [((dims[0],), index_dtype() if k == 1 else dtype) for k in select]

    _register(
        ReductionSpec(
            name=name,
            code=code,
            n_formulas=1,
            outputs=outputs,
            dense=lambda values, params: tuple(_dense_pick(values, is_max)[k] for k in select),
            check=_no_params,
        )
    )


_register_pick("Min", 4, False, (0,))
_register_pick("ArgMin", 5, False, (1,))
_register_pick("Min_ArgMin", 6, False, (0, 1))
_register_pick("Max", 7, True, (0,))
_register_pick("ArgMax", 8, True, (1,))
_register_pick("Max_ArgMax", 9, True, (0, 1))

# --- K-min ----------------------------------------------------------------------------------------


def _kmin_shape(dim, K):
    """KeOps' layout: (K,) for a scalar formula, (K, D) for a vector one."""
    return (K,) if dim == 1 else (K, dim)


def _dense_kmin(values, K):
    v = values[0]
    n_outer = v.shape[0]
    order = jnp.argsort(v, axis=1, stable=True)[:, :K, :]  # equal values: ascending index
    best = jnp.take_along_axis(v, order, axis=1)
    shape = (n_outer,) + _kmin_shape(v.shape[2], K)
    return best.reshape(shape), order.astype(index_dtype()).reshape(shape)


KMIN_MAX_SLOTS = 1 << 24  # bound on K × dimension of the K-min reductions


def _kmin_check(dims, params, n_inner):
    if len(params) != 1:
        raise ValueError(f"takes one reduction parameter K, got {params}")
    (K,) = params
    # A symbolic size (jax.export) cannot be compared here: then only K >= 1 is checked.
    if K < 1 or (isinstance(n_inner, int) and K > n_inner):
        raise ValueError(f"K={K}, expected 1 <= K <= {n_inner} (the size of the reduced axis)")
    if K * dims[0] > KMIN_MAX_SLOTS:
        raise ValueError(
            f"K={K} for a formula of dimension {dims[0]}: K * dimension = {K * dims[0]} exceeds "
            f"the limit of {KMIN_MAX_SLOTS} (KMinReducer::kMaxSlots in src/reductions.h)"
        )


def _register_kmin(name, code, select):
    def outputs(dims, params, dtype):
        shape = _kmin_shape(dims[0], params[0])
        return [(shape, index_dtype() if k == 1 else dtype) for k in select]

    _register(
        ReductionSpec(
            name=name,
            code=code,
            n_formulas=1,
            outputs=outputs,
            dense=lambda values, params: tuple(_dense_kmin(values, params[0])[k] for k in select),
            check=_kmin_check,
        )
    )


_register_kmin("KMin", 10, (0,))
_register_kmin("ArgKMin", 11, (1,))
_register_kmin("KMin_ArgKMin", 12, (0, 1))


def reduction_table() -> dict[str, int]:
    return {name: spec.code for name, spec in REDUCTIONS.items()}
