"""Placeholders: variables whose arrays are given later, and reductions waiting for them.

`Vi(0, 3)`, `Vj(1, 3)`, `Pm(2, 1)` and `LazyTensor((index, dim, cat))` stand for argument number
`index` of a later call (as in pykeops). A reduction of a LazyTensor that holds placeholders (or
any reduction called with `call=False`) returns a `PendingReduction`: calling it with arrays, in
placeholder-index order, computes the reduction as if those arrays had been there from the
start (same formula, same primitive).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxkeops.formula import CAT_I, CAT_J, CAT_NAMES, CAT_P


class Placeholder:
    """Stands for the array of argument `index` (dimension `dim`, category `cat`). Interned:
    equal placeholders are the same object, so that combined LazyTensors share the variable."""

    __slots__ = ("index", "dim", "cat")
    _interned: dict[tuple[int, int, int], "Placeholder"] = {}

    def __new__(cls, index: int, dim: int, cat: int):
        key = (index, dim, cat)
        if key not in cls._interned:
            self = super().__new__(cls)
            self.index, self.dim, self.cat = key
            cls._interned[key] = self
        return cls._interned[key]

    # Shaped like a variable of no batch dimension, for the LazyTensor bookkeeping.
    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,) if self.cat == CAT_P else (1, self.dim)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Placeholder({self.index}, {self.dim}, {CAT_NAMES[self.cat]})"


def check_placeholder_spec(index, dim, cat, where: str) -> tuple[int, int, int]:
    for name, value in (("index", index), ("dim", dim), ("cat", cat)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{where}: {name} is {value!r}; expected an int")
    if index < 0 or dim < 1 or cat not in (CAT_I, CAT_J, CAT_P):
        raise ValueError(f"{where}: (index, dim, cat) = {(index, dim, cat)}; expected index >= 0, "
                         "dim >= 1 and cat 0 (i), 1 (j) or 2 (parameter)")
    return index, dim, cat


def placeholder_lazy_tensor(index: int, dim: int, cat: int):
    from jaxkeops.formula import Var
    from jaxkeops.lazy_tensor import LazyTensor, _Variable

    out = LazyTensor()
    out.variables = (_Variable(Placeholder(index, dim, cat), cat),)
    out.formula = Var(0, dim, cat)
    return out


def has_placeholders(variables) -> bool:
    return any(isinstance(v.array, Placeholder) for v in variables)


class PendingReduction:
    """A reduction waiting for arrays: `K(x, y, b)` fills the placeholders (argument k is the
    array of placeholder index k) and computes it; keyword arguments are pykeops' call options
    (backend=, device_id=, out=, ...)."""

    def __init__(self, lazy, reduction: str, axis: int, formulas, reduction_params, method: str,
                 options: dict):
        self.lazy, self.reduction, self.axis = lazy, reduction, axis
        self.formulas, self.reduction_params, self.method = formulas, reduction_params, method
        self.options = {k: v for k, v in options.items() if k != "call"}

    @property
    def n_arguments(self) -> int:
        indices = [v.array.index for v in self.lazy.variables if isinstance(v.array, Placeholder)]
        return 1 + max(indices, default=-1)

    def __call__(self, *args, **options):
        from jaxkeops.lazy_tensor import LazyTensor

        filled = fill_placeholders(self.lazy, args, self.method)
        outs = LazyTensor._reduce(filled, self.reduction, self.axis, formulas=self.formulas,
                                  reduction_params=self.reduction_params, method=self.method,
                                  options={**self.options, **options})
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __repr__(self) -> str:
        return (f"jaxkeops pending {self.reduction} reduction (axis={self.axis}) of "
                f"{self.lazy.formula!r}, waiting for {self.n_arguments} array(s)")


def fill_placeholders(lazy, args, method: str):
    """The LazyTensor `lazy` with each placeholder replaced by its argument."""
    from jaxkeops.lazy_tensor import LazyTensor, _Variable, _check_float_dtype, _is_array, _merge_size
    from jaxkeops.primitive import dim_size

    wanted = 1 + max((v.array.index for v in lazy.variables if isinstance(v.array, Placeholder)),
                     default=-1)
    if len(args) != wanted:
        raise TypeError(f"{method}: called with {len(args)} array(s); expected {wanted} (one per "
                        "placeholder index 0.." f"{wanted - 1})")
    ni, nj = lazy.ni, lazy.nj
    variables = []
    for v in lazy.variables:
        ph = v.array
        if not isinstance(ph, Placeholder):
            variables.append(v)
            continue
        x = args[ph.index]
        kind = {CAT_I: "Vi", CAT_J: "Vj", CAT_P: "Pm"}[ph.cat]
        expected = f"({ph.dim},)" if ph.cat == CAT_P else f"(n, {ph.dim})"
        if not _is_array(x):
            raise TypeError(f"{method}: argument {ph.index} is a {type(x).__name__}; expected an "
                            f"array shaped {expected} for {kind}({ph.index}, {ph.dim})")
        x = jnp.asarray(x)
        rank = 1 if ph.cat == CAT_P else 2
        if x.ndim < rank or x.shape[-1] != ph.dim:
            raise ValueError(f"{method}: argument {ph.index} has shape {tuple(x.shape)}; expected "
                             f"{expected} (batch dims in front allowed) for {kind}({ph.index}, {ph.dim})")
        _check_float_dtype(x, f"{method}: argument {ph.index}")
        if ph.cat == CAT_I:
            ni = _merge_size(ni, dim_size(x.shape[-2]), "M (number of i indices)")
        elif ph.cat == CAT_J:
            nj = _merge_size(nj, dim_size(x.shape[-2]), "N (number of j indices)")
        variables.append(_Variable(x, ph.cat))
    return LazyTensor._make(lazy.formula, variables, ni, nj)
