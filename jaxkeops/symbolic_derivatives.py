"""pykeops' symbolic derivatives of a LazyTensor, as a mixin of LazyTensor: new LazyTensors
whose formulas are built by the autodiff rules (jaxkeops/autodiff.py), the same ones that
differentiate reductions under jax.grad, and the same ones formula strings' Grad / Diff /
GradMatrix use.

- `F.grad(v, gradin)`: the gradient in the variable v of <F, gradin> (KeOps' Grad): the adjoint
  of F's differential in v applied to gradin; gradin has F's dimension, the result v's.
- `F.diff(v, diffin)`: F's differential in v applied to diffin (KeOps' Diff, forward mode);
  diffin has v's dimension, the result F's.
- `F.grad_matrix(v)`: the Jacobian of F in v, F.ndim * v.ndim coordinates (KeOps' GradMatrix).

`v` must be a LazyTensor that is one variable (`Vi(x)`, `Vj(y)`, `Pm(p)` or a placeholder) and
one F was built from: variables are matched by identity, so `Vi(x)` written again is another
variable, and a derivative in it is refused rather than silently zero.
"""

from __future__ import annotations

from jaxkeops.autodiff import diff_formula, grad_formula, grad_matrix_formula
from jaxkeops.formula import Var


class SymbolicDerivatives:
    def _with_variable(self, v, method: str):
        """self and v on common variables: (self, the Var that v is in them)."""
        from jaxkeops.lazy_tensor import LazyTensor

        if not isinstance(v, LazyTensor) or not isinstance(v.formula, Var):
            seen = (f"a LazyTensor with formula {v.formula!r}" if isinstance(v, LazyTensor)
                    else f"a {type(v).__name__}")
            raise TypeError(f"{method}: v is {seen}; expected a LazyTensor that is one variable "
                            "(Vi(x), Vj(y), Pm(p) or a placeholder)")
        if not any(v.variables[0].same_as(mine) for mine in self.variables):
            # Variables are matched by identity: Vi(x) written twice makes two variables, and
            # a derivative in the other one would silently be zero.
            raise ValueError(f"{method}: v is not a variable of this LazyTensor; pass the very "
                             "LazyTensor it was built from (xi = Vi(x); F = f(xi); "
                             "F.grad(xi, e)), not a new Vi(x)")
        v_formula, variables, ni, nj = self._merge(v)
        return LazyTensor._make(self.formula, variables, ni, nj), v_formula

    def _with_operand(self, other, method: str, what: str):
        from jaxkeops.lazy_tensor import LazyTensor, _is_complex

        if _is_complex(other):
            raise TypeError(f"{method}: {what} is complex; symbolic derivatives are real only")
        other_formula, variables, ni, nj = self._merge(LazyTensor._lift(other))
        return LazyTensor._make(self.formula, variables, ni, nj), other_formula

    def grad(self, v, gradin):
        """The LazyTensor of the gradient in v of <self, gradin> (KeOps' Grad)."""
        f, v_formula = self._with_variable(v, "LazyTensor.grad(v, gradin)")
        f, gradin_formula = f._with_operand(gradin, "LazyTensor.grad(v, gradin)", "gradin")
        if gradin_formula.dim != f.formula.dim:
            raise ValueError(f"LazyTensor.grad(v, gradin): gradin has dimension "
                             f"{gradin_formula.dim}; expected {f.formula.dim} (self's)")
        return f._make(grad_formula(f.formula, v_formula, gradin_formula), f.variables, f.ni,
                       f.nj)

    def diff(self, v, diffin):
        """The LazyTensor of self's differential in v applied to diffin (KeOps' Diff)."""
        f, v_formula = self._with_variable(v, "LazyTensor.diff(v, diffin)")
        f, diffin_formula = f._with_operand(diffin, "LazyTensor.diff(v, diffin)", "diffin")
        if diffin_formula.dim != v_formula.dim:
            raise ValueError(f"LazyTensor.diff(v, diffin): diffin has dimension "
                             f"{diffin_formula.dim}; expected {v_formula.dim} (v's)")
        return f._make(diff_formula(f.formula, v_formula, diffin_formula), f.variables, f.ni,
                       f.nj)

    def grad_matrix(self, v):
        """The LazyTensor of self's Jacobian in v, row after row (KeOps' GradMatrix)."""
        f, v_formula = self._with_variable(v, "LazyTensor.grad_matrix(v)")
        return f._make(grad_matrix_formula(f.formula, v_formula), f.variables, f.ni, f.nj)
