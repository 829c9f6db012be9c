"""pykeops' other names for LazyTensor reductions and properties, as a mixin of LazyTensor.

- `sum_reduction`, `logsumexp_reduction`, ..., `Kmin_argKmin_reduction`: the reduction over i or
  j only (an axis is required: the feature axis is not a reduction).
- `reduction(reduction_op, other=None, opt_arg=None, axis=None, dim=None, **options)`: any
  reduction by its KeOps name (`REDUCTION_NAMES`), `other` the weight, `opt_arg` the K.
- `dim()`, `nbatchdims`, `batchdims`, `dtype` and `ndim` with pykeops' meanings. KeOps' `ndim`
  is the dimension of the formula's vectors (the last axis of `shape`, 1 for a scalar formula),
  not NumPy's number of axes: `dim()` (= `len(shape)` plus 1 for a scalar formula, as pykeops'
  internal shape always has the feature axis) counts axes.

Reductions by KeOps name are shared with `Genred` (jaxkeops/genred.py): `reduce_by_keops_name`.
"""

from __future__ import annotations

import jax.numpy as jnp

# KeOps reduction name → (LazyTensor method, takes a weight (other / formula2), takes K (opt_arg)).
# Min_ArgMin and friends also go by KeOps' older names without the underscore.
REDUCTION_NAMES = {
    "Sum": ("sum", False, False),
    "LogSumExp": ("logsumexp", None, False),  # None: the weight is optional
    "LogSumExpWeight": ("logsumexp", True, False),
    "SumSoftMaxWeight": ("sumsoftmaxweight", True, False),
    "SoftMax": ("sumsoftmaxweight", True, False),
    "Min": ("min", False, False),
    "ArgMin": ("argmin", False, False),
    "Min_ArgMin": ("min_argmin", False, False),
    "MinArgMin": ("min_argmin", False, False),
    "Max": ("max", False, False),
    "ArgMax": ("argmax", False, False),
    "Max_ArgMax": ("max_argmax", False, False),
    "MaxArgMax": ("max_argmax", False, False),
    "KMin": ("Kmin", False, True),
    "ArgKMin": ("argKmin", False, True),
    "KMin_ArgKMin": ("Kmin_argKmin", False, True),
    "KMinArgKMin": ("Kmin_argKmin", False, True),
    "Max_SumShiftExp": (None, False, False),
    "Max_SumShiftExpWeight": (None, True, False),
}


def reduce_by_keops_name(lazy, reduction_op: str, other, opt_arg, axis: int, method: str,
                         options: dict):
    """`lazy` reduced by the KeOps reduction `reduction_op` over the KeOps axis `axis` (number
    of batch dims + 0 for i, + 1 for j), `other` the weight formula, `opt_arg` the K."""
    if reduction_op not in REDUCTION_NAMES:
        raise ValueError(f"{method}: reduction_op={reduction_op!r}; expected one of "
                         f"{', '.join(REDUCTION_NAMES)}")
    name, weight, takes_k = REDUCTION_NAMES[reduction_op]
    if weight is True and other is None:
        raise ValueError(f"{method}: the {reduction_op} reduction needs a weight (other= / "
                         "formula2=)")
    if weight is False and other is not None:
        raise ValueError(f"{method}: the {reduction_op} reduction takes no weight (other= / "
                         "formula2=)")
    if takes_k:
        if opt_arg is None:
            raise ValueError(f"{method}: the {reduction_op} reduction needs K (opt_arg=)")
        return getattr(lazy, name)(opt_arg, axis, **options)
    if opt_arg is not None:
        raise ValueError(f"{method}: opt_arg={opt_arg!r}, but {reduction_op} takes no K")
    if name is None:
        return max_sumshiftexp(lazy, other, axis, method, options)
    if name == "sumsoftmaxweight":
        return lazy.sumsoftmaxweight(other, axis, **options)
    if name == "logsumexp":
        return lazy.logsumexp(axis, weight=other, **options)
    if name in ("min", "max", "argmin", "argmax", "sum"):
        feature = len(lazy.batch_shape) + 2
        if axis in (-1, feature):  # these names mean the feature axis there: not a reduction
            raise ValueError(f"{method}: axis={axis}; expected {feature - 2} (over i) or "
                             f"{feature - 1} (over j)")
    return getattr(lazy, name)(axis, **options)


def max_sumshiftexp(lazy, weight, axis: int, method: str, options: dict):
    """KeOps' Max_SumShiftExp(Weight) reductions: [m, Σ exp(F - m) (w)] with m the maximum of
    the scalar formula F over the reduced axis, shaped (..., n, 1 + E). Computed as a Max
    reduction, then a Sum reduction of exp(F - m) w with m as a variable of the kept axis."""
    from jaxkeops.lazy_tensor import LazyTensor
    from jaxkeops.placeholders import has_placeholders

    if lazy.formula.dim != 1:
        raise ValueError(f"{method}: Max_SumShiftExp needs a scalar formula; got dimension "
                         f"{lazy.formula.dim}")
    if options.get("call") is False or options.get("out") is not None:
        raise NotImplementedError(f"{method}: call=False and out= are not supported for "
                                  "Max_SumShiftExp (a composite of two reductions)")
    if has_placeholders(lazy.variables):
        raise NotImplementedError(f"{method}: Max_SumShiftExp needs arrays, not placeholders")
    over_j = axis - len(lazy.batch_shape) == 1
    # The accumulation options concern the sum; the max takes the others.
    max_options = {k: v for k, v in options.items()
                   if k not in ("dtype_acc", "use_double_acc", "sum_scheme")}
    m = lazy.max(axis, **max_options)  # (*batch, n_outer, 1)
    shift = LazyTensor(m[..., :, None, :] if over_j else m[..., None, :, :])
    terms = (lazy - shift).exp()
    if weight is not None:
        terms = terms * weight
    return jnp.concatenate([m, terms.sum(axis, **options)], axis=-1)


def _reduction_axis_required(lazy, axis, dim, method: str) -> int:
    if axis is None:
        axis = dim
    if axis is None:
        k = len(lazy.batch_shape)
        raise ValueError(f"{method}: axis (or dim) is required: {k} reduces over i, {k + 1} over j")
    return axis


class KeOpsNames:
    """pykeops' `*_reduction` aliases, `reduction(...)` and shape properties (see the module)."""

    def reduction(self, reduction_op: str, other=None, opt_arg=None, axis=None, dim=None,
                  **options):
        """Any reduction by its KeOps name (REDUCTION_NAMES): `other` is the weight of the
        weighted ones (LogSumExp, SumSoftMaxWeight), `opt_arg` the K of the K-min ones."""
        axis = _reduction_axis_required(self, axis, dim, "reduction")
        options.pop("is_complex", None)  # pykeops internal; complex formulas are not supported
        return reduce_by_keops_name(self, reduction_op, other, opt_arg, axis, "reduction", options)

    def sum_reduction(self, axis=None, dim=None, **options):
        return self.reduction("Sum", axis=axis, dim=dim, **options)

    def logsumexp_reduction(self, axis=None, dim=None, weight=None, other=None, **options):
        return self.reduction("LogSumExp", other=_weight(weight, other), axis=axis, dim=dim,
                              **options)

    def sumsoftmaxweight_reduction(self, weight=None, axis=None, dim=None, other=None, **options):
        return self.reduction("SumSoftMaxWeight", other=_weight(weight, other), axis=axis,
                              dim=dim, **options)

    def min_reduction(self, axis=None, dim=None, **options):
        return self.reduction("Min", axis=axis, dim=dim, **options)

    def argmin_reduction(self, axis=None, dim=None, **options):
        return self.reduction("ArgMin", axis=axis, dim=dim, **options)

    def min_argmin_reduction(self, axis=None, dim=None, **options):
        return self.reduction("Min_ArgMin", axis=axis, dim=dim, **options)

    def max_reduction(self, axis=None, dim=None, **options):
        return self.reduction("Max", axis=axis, dim=dim, **options)

    def argmax_reduction(self, axis=None, dim=None, **options):
        return self.reduction("ArgMax", axis=axis, dim=dim, **options)

    def max_argmax_reduction(self, axis=None, dim=None, **options):
        return self.reduction("Max_ArgMax", axis=axis, dim=dim, **options)

    def Kmin_reduction(self, K=None, axis=None, dim=None, **options):
        return self.reduction("KMin", opt_arg=K, axis=axis, dim=dim, **options)

    def argKmin_reduction(self, K=None, axis=None, dim=None, **options):
        return self.reduction("ArgKMin", opt_arg=K, axis=axis, dim=dim, **options)

    def Kmin_argKmin_reduction(self, K=None, axis=None, dim=None, **options):
        return self.reduction("KMin_ArgKMin", opt_arg=K, axis=axis, dim=dim, **options)

    # --- shape properties, with pykeops' meanings ----------------------------------------------

    def dim(self) -> int:
        """pykeops' number of axes: batch dims + 3 (i, j and the feature axis, even of size 1)."""
        return len(self.batch_shape) + 3

    @property
    def ndim(self) -> int:
        """pykeops' ndim: the dimension D of the formula's vectors (1 for a scalar formula).
        Not NumPy's number of axes (that is `len(shape)`)."""
        return self.formula.dim

    @property
    def nbatchdims(self) -> int:
        return len(self.batch_shape)

    @property
    def batchdims(self):
        """The batch dimensions, or None without any (as pykeops)."""
        return tuple(self.batch_shape) or None

    @property
    def dtype(self):
        """The dtype of the arrays (a NumPy dtype; equal to pykeops' "float32"-style names), or
        None when it is not known yet (only placeholders or Python numbers)."""
        return self._dtype()


def _weight(weight, other):
    if weight is not None and other is not None:
        raise ValueError("give the weight once: weight= or other=")
    return weight if weight is not None else other

