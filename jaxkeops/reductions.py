"""THE reduction table: one entry per reduction, shared by the primitive, the oracle and the
kernels (its code is the one in src/reductions.h; a test checks the two tables agree).

A reduction takes the values of one or more formulas on the grid and reduces them over the inner
axis. Its entry says how many formulas it takes, the shapes and dtypes of its outputs, and gives
a dense jnp reference that reduces arrays shaped (n_outer, n_inner, dim) over axis 1.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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


REDUCTIONS: dict[str, ReductionSpec] = {}


def _register(spec: ReductionSpec) -> None:
    assert spec.name not in REDUCTIONS
    REDUCTIONS[spec.name] = spec


_register(
    ReductionSpec(
        name="Sum",
        code=0,
        n_formulas=1,
        outputs=lambda dims, params, dtype: [((dims[0],), dtype)],
        dense=lambda values, params: (jnp.sum(values[0], axis=1),),
    )
)


def reduction_table() -> dict[str, int]:
    return {name: spec.code for name, spec in REDUCTIONS.items()}
