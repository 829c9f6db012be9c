"""pykeops' string interface: `Genred`, `KernelSolve` and `generic_sum` / `generic_logsumexp` /
`generic_argmin` / `generic_argkmin`.

The formula and alias strings are parsed (jaxkeops/formula_string.py) into the formula IR, the
arrays become the variables of a LazyTensor, and the reduction is the LazyTensor's: one parser,
one IR, one primitive, so a Genred call and the same LazyTensor expression run the same kernel
and give the same bits. Everything works under jit, vmap and grad.

Conventions, as pykeops: `axis=0` reduces over i (one output row per j), `axis=1` over j (one
row per i); arguments are passed positionally in alias order, i variables shaped (M, D), j
variables (N, D), parameters (D,), with optional batch dims in front (broadcast). Outputs as
pykeops' Genred: (n, D) for Sum, (n, 1) / (n, E) for LogSumExp, (n, K) or (n, K, D) for the
K-min reductions, pairs for Min_ArgMin and friends. Differences kept on purpose: indices are
int32 (int64 with jax_enable_x64), not int64; `dtype=` / `cuda_type=` are ignored with a warning
(as pykeops: the arrays give the dtype).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxkeops.call_options import CALL_OPTIONS, check_options, warn_once
from jaxkeops.formula import CAT_I, CAT_J, CAT_P, Var, substitute, variables
from jaxkeops.formula_string import (alias_category, parse_alias, parse_aliases, parse_formula,
                                      signature)
from jaxkeops.keops_names import REDUCTION_NAMES, reduce_by_keops_name
from jaxkeops.ranges import check_ranges


def _internal_reduction(reduction_op: str, has_weight: bool) -> str:
    """The reduction-table name the accumulation options are checked against."""
    if reduction_op == "LogSumExp" and has_weight:
        return "LogSumExpWeight"
    return {"SoftMax": "SumSoftMaxWeight", "MinArgMin": "Min_ArgMin", "MaxArgMax": "Max_ArgMax",
            "KMinArgKMin": "KMin_ArgKMin"}.get(reduction_op, reduction_op)


def _check_axis(axis, where: str) -> int:
    if axis not in (0, 1) or isinstance(axis, bool):
        raise ValueError(f"{where}: axis={axis!r}; expected 0 (reduce over i) or 1 (reduce over j)")
    return int(axis)


class _StringFormula:
    """Formulas and aliases parsed once; `lazy_tensor(args)` binds arrays to them."""

    def __init__(self, where: str, formula: str, aliases, formula2: str | None = None):
        self.where = where
        if isinstance(aliases, str):
            aliases = [aliases]
        names = parse_aliases(list(aliases))
        written: list[Var] = []
        self.formula = parse_formula(formula, names, written)
        self.formula2 = None if formula2 is None else parse_formula(formula2, names, written)
        self.signature = signature([self.formula, self.formula2], names, written)
        self.labels = {v.index: name for name, v in self.signature.names.items()}

    def describe(self, var: Var) -> str:
        kind = {CAT_I: "Vi", CAT_J: "Vj", CAT_P: "Pm"}[var.cat]
        name = self.labels.get(var.index)
        spec = f"{kind}({var.index}, {var.dim})"
        return f"argument {var.index} ({name} = {spec})" if name else f"argument {var.index} ({spec})"

    def lazy_tensors(self, args):
        """(LazyTensor of formula, LazyTensor of formula2 or None) over the arrays `args`."""
        from jaxkeops.lazy_tensor import LazyTensor, _Variable, _check_float_dtype, _is_array
        from jaxkeops.primitive import dim_size

        spec = self.signature.variables
        if len(args) != len(spec):
            raise TypeError(f"{self.where}: called with {len(args)} array(s); expected "
                            f"{len(spec)}, one per alias in order")
        arrays, sizes = [], {CAT_I: None, CAT_J: None}
        for var, x in zip(spec, args):
            what = self.describe(var)
            rank = 1 if var.cat == CAT_P else 2
            expected = f"({var.dim},)" if var.cat == CAT_P else (
                f"({'M' if var.cat == CAT_I else 'N'}, {var.dim})")
            if not _is_array(x):
                raise TypeError(f"{self.where}: {what} is a {type(x).__name__}; expected an "
                                f"array shaped {expected}")
            x = jnp.asarray(x)
            if x.ndim < rank or x.shape[-1] != var.dim:
                raise ValueError(f"{self.where}: {what} has shape {tuple(x.shape)}; expected "
                                 f"{expected} (batch dims in front allowed)")
            _check_float_dtype(x, f"{self.where}: {what}")
            if var.cat != CAT_P:
                n = dim_size(x.shape[-2])
                if sizes[var.cat] is not None and sizes[var.cat] != n:
                    axis = "M (i variables)" if var.cat == CAT_I else "N (j variables)"
                    raise ValueError(f"{self.where}: {what} has {n} rows; expected "
                                     f"{sizes[var.cat]} like the other {axis}")
                sizes[var.cat] = n
            arrays.append(x)
        # Only the variables the formulas use become operands (an unused alias still sets M or N).
        # A formula of constants only (e.g. a Grad that vanishes) keeps every array, for the dtype.
        used = [v.index for v in variables([f for f in (self.formula, self.formula2) if f])]
        used = used or list(range(len(spec)))
        renumber = {old: new for new, old in enumerate(used)}
        operands = [_Variable(arrays[k], spec[k].cat) for k in used]

        def bind(formula):
            if formula is None:
                return None
            f = substitute(formula, lambda leaf: Var(renumber[leaf.index], leaf.dim, leaf.cat)
                           if isinstance(leaf, Var) else None)
            return LazyTensor._make(f, operands, sizes[CAT_I], sizes[CAT_J])

        return bind(self.formula), bind(self.formula2)


class Genred:
    """A reduction of a KeOps formula string (pykeops.numpy.Genred / pykeops.torch.Genred).

    `Genred(formula, aliases, reduction_op="Sum", axis=0, opt_arg=None, formula2=None, ...)`:
    `aliases` like ["x = Vi(3)", "y = Vj(1, 3)", "p = Pm(1)"], `reduction_op` a KeOps name
    (keops_names.REDUCTION_NAMES: Sum, LogSumExp, SumSoftMaxWeight, Min, ArgMin, Min_ArgMin, Max,
    ArgMax, Max_ArgMax, KMin, ArgKMin, KMin_ArgKMin, Max_SumShiftExp, ... and their Weight
    forms), `opt_arg` the K of the K-min ones, `formula2` the weight of LogSumExp /
    SumSoftMaxWeight / Max_SumShiftExpWeight. `axis=0` reduces over i, `axis=1` over j.
    The accumulation and code-generation options are those of jaxkeops/call_options.py.

    Calling it with the arrays (in alias order) returns the result; `backend=` and `device_id=`
    are accepted (jaxkeops runs where JAX places the arrays: other values warn once), `out=`
    fills a NumPy array, `ranges=` raises NotImplementedError (block-sparse reductions are not
    available yet).
    """

    def __init__(self, formula: str, aliases, reduction_op: str = "Sum", axis: int = 0,
                 dtype=None, opt_arg: int | None = None, formula2: str | None = None,
                 cuda_type=None, dtype_acc="auto", use_double_acc=False, sum_scheme="auto",
                 enable_chunks=True, rec_multVar_highdim=False, use_fast_math=True):
        where = "Genred"
        for option, value in (("dtype", dtype), ("cuda_type", cuda_type)):
            if value is not None:
                warn_once(option, value, "deprecated in pykeops and ignored: the arrays give the "
                          "dtype")
        if reduction_op not in REDUCTION_NAMES:
            raise ValueError(f"{where}: reduction_op={reduction_op!r}; expected one of "
                             f"{', '.join(REDUCTION_NAMES)}")
        self.axis = _check_axis(axis, where)
        self.reduction_op, self.opt_arg = reduction_op, opt_arg
        self.parsed = _StringFormula(where, formula, aliases, formula2)
        self.init_options = dict(dtype_acc=dtype_acc, use_double_acc=use_double_acc,
                                 sum_scheme=sum_scheme, enable_chunks=enable_chunks,
                                 rec_multVar_highdim=rec_multVar_highdim,
                                 use_fast_math=use_fast_math)
        check_options(where, _internal_reduction(reduction_op, formula2 is not None),
                      self.init_options)

    @property
    def formula(self):
        """The parsed formula (the IR node the LazyTensor algebra would build)."""
        return self.parsed.formula

    def __call__(self, *args, backend="auto", device_id=-1, ranges=None, out=None):
        lazy, weight = self.parsed.lazy_tensors(args)
        if ranges is not None:  # block-sparse: every reduction of `lazy` honours its ranges
            lazy.ranges = check_ranges(ranges, "Genred")
        options = dict(self.init_options, backend=backend, device_id=device_id, out=out)
        options = {k: v for k, v in options.items() if k in CALL_OPTIONS or v is not None}
        k = len(lazy.batch_shape)
        return reduce_by_keops_name(lazy, self.reduction_op, weight, self.opt_arg, k + self.axis,
                                    "Genred", options)

    def __repr__(self) -> str:
        return (f"jaxkeops Genred {self.reduction_op} reduction (axis={self.axis}) of "
                f"{self.parsed.formula!r}")


def _generic(reduction_op: str, formula: str, output: str, aliases, kwargs, opt_arg=None):
    cat = alias_category(output)
    if cat == CAT_P:
        raise ValueError(f"output {output!r}: expected an i (Vi) or j (Vj) output variable")
    axis = 1 if cat == CAT_I else 0  # an i-indexed output reduces over j
    if opt_arg is not None:
        kwargs = dict(kwargs, opt_arg=opt_arg)
    return Genred(formula, list(aliases), reduction_op=reduction_op, axis=axis, **kwargs)


def generic_sum(formula: str, output: str, *aliases, **kwargs) -> Genred:
    """Genred with a Sum reduction; `output` ("a = Vi(D)" or "a = Vj(D)") gives the axis."""
    return _generic("Sum", formula, output, aliases, kwargs)


def generic_logsumexp(formula: str, output: str, *aliases, **kwargs) -> Genred:
    """Genred with a LogSumExp reduction; `output` ("a = Vi(1)" or "a = Vj(1)") gives the axis."""
    return _generic("LogSumExp", formula, output, aliases, kwargs)


def generic_argmin(formula: str, output: str, *aliases, **kwargs) -> Genred:
    """Genred with an ArgMin reduction; `output` gives the axis."""
    return _generic("ArgMin", formula, output, aliases, kwargs)


def generic_argkmin(formula: str, output: str, *aliases, **kwargs) -> Genred:
    """Genred with an ArgKMin reduction; `output` ("a = Vi(K)" or "a = Vj(K)") gives the axis
    and, by its dimension, K (as pykeops)."""
    return _generic("ArgKMin", formula, output, aliases, kwargs,
                    opt_arg=parse_alias(output, 0)[1].dim)


class KernelSolve:
    """Solve (alpha·I + K) a = b for a formula string linear in the alias `varinvalias`
    (pykeops' KernelSolve): K a is the Sum reduction of the formula with `a` in place of that
    variable, over i (`axis=0`) or j (`axis=1`), which must be the variable's own axis.

    Called with the arrays in alias order, b in the place of `varinvalias`, and `alpha=1e-10`,
    `eps=1e-6`, `maxiter=None`, `return_info=False` as LazyTensor.solve (conjugate gradient,
    per-column stopping rule ‖r‖ ≤ eps·‖b‖, differentiable by implicit differentiation: K must
    be symmetric). Returns a, shaped like b (and the SolveInfo with return_info=True).
    """

    def __init__(self, formula: str, aliases, varinvalias: str, axis: int = 0, dtype=None,
                 opt_arg=None, cuda_type=None, dtype_acc="auto", use_double_acc=False,
                 sum_scheme="auto", enable_chunks=True, rec_multVar_highdim=None,
                 use_fast_math=True):
        where = "KernelSolve"
        for option, value in (("dtype", dtype), ("cuda_type", cuda_type)):
            if value is not None:
                warn_once(option, value, "deprecated in pykeops and ignored: the arrays give the "
                          "dtype")
        if opt_arg is not None:
            raise ValueError(f"{where}: opt_arg={opt_arg!r}; the Sum reduction takes none")
        self.axis = _check_axis(axis, where)
        self.parsed = _StringFormula(where, formula, aliases)
        varinvalias = varinvalias.strip() if isinstance(varinvalias, str) else varinvalias
        if isinstance(varinvalias, str) and varinvalias.startswith("Var("):
            self.var_position = parse_formula(varinvalias).index
        else:
            self.var_position = self.parsed.signature.position_of(varinvalias)
        var = self.parsed.signature.variables[self.var_position]
        inner = CAT_J if self.axis == 1 else CAT_I
        if var.cat != inner:
            raise ValueError(
                f"{where}: the unknown {varinvalias!r} is {self.parsed.describe(var)}; expected a "
                f"{'j' if inner == CAT_J else 'i'} variable for axis={self.axis} (the reduced axis)")
        if var not in variables([self.parsed.formula]):
            raise ValueError(f"{where}: the formula does not use the unknown {varinvalias!r}")
        if self.parsed.formula.dim != var.dim:
            raise ValueError(f"{where}: the formula has dimension {self.parsed.formula.dim}; "
                             f"expected {var.dim}, the dimension of the unknown {varinvalias!r}")
        self.init_options = dict(dtype_acc=dtype_acc, use_double_acc=use_double_acc,
                                 sum_scheme=sum_scheme, enable_chunks=enable_chunks,
                                 rec_multVar_highdim=bool(rec_multVar_highdim),
                                 use_fast_math=use_fast_math)
        check_options(where, "Sum", self.init_options)

    def __call__(self, *args, backend="auto", device_id=-1, alpha=1e-10, eps=1e-6, ranges=None,
                 maxiter=None, return_info=False):
        from jaxkeops.kernel_solve import solve_linear_in

        check_options("KernelSolve", "Sum", dict(self.init_options, backend=backend,
                                                 device_id=device_id, ranges=ranges))
        lazy, _ = self.parsed.lazy_tensors(args)
        b = jnp.asarray(args[self.var_position])
        used = [v.index for v in variables([self.parsed.formula])]
        return solve_linear_in(lazy, used.index(self.var_position), b, self.axis, alpha=alpha,
                               eps=eps, maxiter=maxiter, return_info=return_info,
                               where="KernelSolve")


__all__ = ["Genred", "KernelSolve", "generic_sum", "generic_logsumexp", "generic_argmin",
           "generic_argkmin"]
