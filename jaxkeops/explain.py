"""`jaxkeops.explain`: which kernel runs each jaxkeops reduction of a function.

The function is traced as `jax.jit(fn)` would trace it; every `keops_reduce_p` equation of its
jaxpr, nested ones included (jit, custom_jvp / custom_vjp, while / scan / cond bodies,
custom_linear_solve), becomes one record saying what the lowering would choose on the platform:
a fused kernel family (jaxkeops/families.py) or the interpreter.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxkeops.families import kernel_name
from jaxkeops.primitive import keops_reduce_p

_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}


@dataclasses.dataclass(frozen=True)
class ReductionRecord:
    """One reduction of a traced function and the kernel it lowers to."""

    reduction: str
    kernel: str  # a fused family's name, or "interpreter"
    axis: int  # 1: over j (one output row per i), 0: over i
    n_outer: int
    n_inner: int
    batch: tuple[int, ...]
    dtype: str
    formulas: str  # as written (the kernel choice is made on their normalised form)


class Explanation(list):
    """The records of `explain`, printed as a table."""

    def __str__(self) -> str:
        header = ("reduction", "axis", "outer × inner", "batch", "dtype", "kernel")
        rows = [header] + [
            (r.reduction, str(r.axis), f"{r.n_outer} × {r.n_inner}",
             "×".join(map(str, r.batch)) or "-", r.dtype, r.kernel)
            for r in self
        ]
        widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if not self:
            lines.append("(no jaxkeops reduction)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def _sub_jaxprs(value):
    """The jaxprs held by one equation parameter (a jaxpr, or tuples / lists of them)."""
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from _equations(sub)


def explain(fn, *args, platform: str | None = None) -> Explanation:
    """For each jaxkeops reduction of `jax.jit(fn)` traced on `args`: its reduction, axis,
    sizes, dtype and the kernel it lowers to on `platform` ("cpu" or "cuda"; default: the
    default backend). Reductions made by differentiation appear when fn differentiates (e.g.
    `explain(jax.grad(loss), x)`)."""
    if platform is None:
        platform = jax.default_backend()
    if platform not in _PLATFORMS:
        raise ValueError(f"explain: platform is {platform!r}; expected 'cpu' or 'cuda'")
    platform = _PLATFORMS[platform]
    closed = jax.make_jaxpr(fn)(*args)
    records = Explanation()
    for eqn in _equations(closed.jaxpr):
        if eqn.primitive is not keops_reduce_p:
            continue
        p = eqn.params
        n_outer, n_inner = (p["ni"], p["nj"]) if p["axis"] == 1 else (p["nj"], p["ni"])
        dtype = str(np.dtype(eqn.invars[0].aval.dtype)) if eqn.invars else "float32"
        records.append(ReductionRecord(
            reduction=p["reduction"] + (f"(K={p['reduction_params'][0]})"
                                        if p["reduction_params"] else ""),
            kernel="interpreter (block-sparse ranges)" if p.get("with_ranges") else kernel_name(
                p["formulas"], p["var_cats"], p["reduction"], p["reduction_params"], p["axis"],
                platform),
            axis=p["axis"], n_outer=n_outer, n_inner=n_inner, batch=tuple(p["batch_shape"]),
            dtype=dtype, formulas=", ".join(repr(f) for f in p["formulas"])))
    return records
