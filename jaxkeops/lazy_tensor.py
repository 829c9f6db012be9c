"""LazyTensor: the user-facing symbolic M×N matrix, with KeOps' names, shapes and printing.

A LazyTensor holds a formula (jaxkeops/formula.py) and the arrays its variables stand for.
Operators build bigger formulas; a reduction (`.sum(axis)`, ...) binds `keops_reduce_p`.
Variables are numbered in order of first appearance, so equal expressions give equal formulas
(and hit every cache) whatever arrays they are applied to.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops.call_options import CallOptions, check_options
from jaxkeops.formula import CAT_I, CAT_J, CAT_NAMES, CAT_P, Const, Node, Var, substitute
from jaxkeops.keops_names import KeOpsNames
from jaxkeops.symbolic_derivatives import SymbolicDerivatives
from jaxkeops.ops import MAX_DIM, apply_op, tensordot_params
from jaxkeops.primitive import dim_size as _size, keops_reduce
from jaxkeops.ranges import (add_ranges_keyword, check_ranges, inherit_ranges, swap_axes,
                             unsupported_with_ranges)
from jaxkeops.reductions import check_reduction
from jaxkeops.placeholders import (PendingReduction, Placeholder, check_placeholder_spec,
                                   has_placeholders, placeholder_lazy_tensor)
from jaxkeops.solve import SolveInfo, default_maxiter, ridge_solve, warn_unless_converged

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Half-precision inputs are computed (and accumulated) in float32; results come back in the
# input dtype.
_HALF_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))


class _Variable:
    """An array standing for one variable; shared by identity between combined LazyTensors.

    `weak` marks a weakly typed scalar (a Python number given to Pm, a weakly typed jax scalar,
    a NumPy scalar): as in jnp, it takes the dtype of the strongly typed operands."""

    __slots__ = ("array", "cat", "weak")

    def __init__(self, array, cat: int, weak: bool = False):
        self.array = array  # (n, dim) for i/j variables, (dim,) for parameters
        self.cat = cat
        self.weak = weak

    def same_as(self, other: "_Variable") -> bool:
        return self.array is other.array and self.cat == other.cat


def _is_weak_scalar(x) -> bool:
    """A scalar that follows the other operands' dtype: weakly typed, or a NumPy scalar."""
    if isinstance(x, np.generic):
        return True
    try:
        return bool(jax.typeof(x).weak_type) and np.size(x) == 1
    except TypeError:
        return False


def _is_complex(x) -> bool:
    """A Python complex number, a complex array or a ComplexLazyTensor."""
    if isinstance(x, complex):
        return True
    if isinstance(getattr(x, "is_complex", None), bool):  # LazyTensor or ComplexLazyTensor
        return x.is_complex
    return _is_array(x) and jnp.issubdtype(x.dtype, jnp.complexfloating)


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array, np.generic)) or hasattr(x, "__jax_array__")


def _check_float_dtype(x, what: str):
    dtype = np.dtype(x.dtype)
    if dtype not in _FLOAT_DTYPES + _HALF_DTYPES:
        raise TypeError(
            f"{what} has dtype {dtype}; expected float16, bfloat16, float32 or float64"
        )


def _category_of_3d(shape, what: str) -> int:
    m, n, _ = shape
    if n == 1 and m == 1:
        return CAT_P
    if n == 1:
        return CAT_I
    if m == 1:
        return CAT_J
    raise ValueError(
        f"{what} has shape {shape}; a LazyTensor variable must be shaped (M, 1, D) (i variable), "
        "(1, N, D) (j variable) or (1, 1, D) (parameter)"
    )


class LazyTensor(KeOpsNames, SymbolicDerivatives):
    """A symbolic matrix F(x_i, y_j, p) over an M×N grid that is never stored.

    `LazyTensor(x)` with x shaped (M, 1, D) is an i variable, (1, N, D) a j variable, (1, 1, D),
    0-d or 1-d a parameter; a 2-d x needs `axis=0` (i) or `axis=1` (j). A Python number is an
    integer constant of the formula (2, -1.0, inf), or else a weakly typed parameter (0.5: data,
    so that other values reuse the compiled code). A tuple (index, dim, cat) is a placeholder
    for argument `index` of a later call (jaxkeops/placeholders.py). See also `Vi`, `Vj`, `Pm`.
    """

    __array_priority__ = 1000  # numpy arrays on the left defer to our operators
    is_complex = False  # as KeOps; ComplexLazyTensor's is True

    def __new__(cls, x=None, axis: int | None = None):
        if x is not None and _is_complex(x):  # jaxkeops/complex_lazy.py
            from jaxkeops.complex_lazy import complex_operand
            return complex_operand(x, axis)
        return super().__new__(cls)

    def __init__(self, x=None, axis: int | None = None):
        self.variables: tuple[_Variable, ...] = ()
        self.ni: int | None = None
        self.nj: int | None = None
        self.batch_shape: tuple[int, ...] = ()  # KeOps batch dimensions, broadcast NumPy-style
        self.ranges = None  # KeOps's block-sparse 6-tuple, honoured by reductions (ranges.py)
        if x is None:  # internal: filled in by _make
            return
        if isinstance(x, tuple):  # (index, dim, cat): a placeholder, as pykeops
            if axis is not None:
                raise ValueError("LazyTensor((index, dim, cat)): axis is meaningless here")
            if len(x) != 3:
                raise ValueError(f"LazyTensor(x): x is the tuple {x!r}; expected (index, dim, cat)")
            placeholder = placeholder_lazy_tensor(*check_placeholder_spec(*x, "LazyTensor(x)"))
            self.formula, self.variables = placeholder.formula, placeholder.variables
            return
        if isinstance(x, numbers.Number) and not _is_array(x):
            if axis is not None:
                raise ValueError("axis is meaningless for a Python number")
            value = float(x)
            if value.is_integer() or not math.isfinite(value):
                self.formula: Node = Const([value])
                return
            # Other numbers travel as data (a weakly typed parameter): calls with other values
            # reuse the compiled executable instead of compiling one per value.
            self.variables = (_Variable(jnp.asarray(value).reshape(1), CAT_P, weak=True),)
            self.formula = Var(0, 1, CAT_P)
            return
        if not _is_array(x):
            raise TypeError(
                f"LazyTensor(x): x is a {type(x).__name__}; expected a jax or NumPy array "
                "or a Python number"
            )
        weak = _is_weak_scalar(x)
        x = jnp.asarray(x)
        what = f"LazyTensor argument of shape {tuple(x.shape)}"
        _check_float_dtype(x, what)
        if axis is not None:
            if x.ndim != 2 or axis not in (0, 1):
                raise ValueError(
                    f"{what} with axis={axis}: expected a 2-d array (n, D) and axis 0 (i) or 1 (j)"
                )
            cat, array = (CAT_I if axis == 0 else CAT_J), x
        elif x.ndim <= 1:
            cat, array = CAT_P, x.reshape(-1)
            if array.shape[0] == 0:
                raise ValueError(f"{what}: a parameter needs at least one value")
        elif x.ndim >= 3:
            # (*batch, M, 1, D), (*batch, 1, N, D) or (*batch, 1, 1, D), as KeOps.
            batch, grid = tuple(x.shape[:-3]), tuple(x.shape[-3:])
            cat = _category_of_3d(grid, what)
            keep = (grid[2],) if cat == CAT_P else (grid[0] if cat == CAT_I else grid[1], grid[2])
            array = x.reshape(batch + keep)
        else:
            raise ValueError(
                f"{what} is ambiguous: reshape it to (M, 1, D) or (1, N, D), "
                "or use Vi(x) / Vj(x) (or pass axis=0 / axis=1)"
            )
        if array.shape[-1] == 0:
            raise ValueError(f"{what}: the feature dimension D must be at least 1")
        if array.shape[-1] > MAX_DIM:
            raise ValueError(
                f"{what}: the feature dimension D = {array.shape[-1]} exceeds the limit of "
                f"{MAX_DIM} of the kernels"
            )
        self.variables = (_Variable(array, cat, weak and cat == CAT_P),)
        if cat == CAT_I:
            self.ni = _size(array.shape[-2])
        elif cat == CAT_J:
            self.nj = _size(array.shape[-2])
        self.batch_shape = _variable_batch_shape(array, cat)
        self.formula = Var(0, int(array.shape[-1]), cat)

    # --- construction ------------------------------------------------------------------------

    @staticmethod
    def _make(formula: Node, variables, ni, nj) -> "LazyTensor":
        out = LazyTensor()
        out.formula, out.variables, out.ni, out.nj = formula, tuple(variables), ni, nj
        out.batch_shape = _broadcast_batch_shapes(variables)
        return out

    @staticmethod
    def _lift(x) -> "LazyTensor":
        if _is_complex(x):  # + - * / reach jaxkeops/complex_lazy.py through _binary, not here
            raise TypeError(
                f"a complex operand where a real LazyTensor is expected (got a "
                f"{type(x).__name__}): complex formulas support + - * /, real, imag, conj, "
                "angle, abs, exp, exp1j and sum"
            )
        return x if isinstance(x, LazyTensor) else LazyTensor(x)

    def _merge(self, other: "LazyTensor"):
        """Variables of self then other's new ones; other's formula renumbered accordingly."""
        variables = list(self.variables)
        renumber = {}
        for index, var in enumerate(other.variables):
            for k, mine in enumerate(variables):
                if mine.same_as(var):
                    renumber[index] = k
                    break
            else:
                renumber[index] = len(variables)
                variables.append(var)
        other_formula = other.formula
        if any(k != v for k, v in renumber.items()):
            other_formula = substitute(
                other.formula,
                lambda leaf: Var(renumber[leaf.index], leaf.dim, leaf.cat)
                if isinstance(leaf, Var) else None,
            )
        ni = _merge_size(self.ni, other.ni, "M (number of i indices)")
        nj = _merge_size(self.nj, other.nj, "N (number of j indices)")
        return other_formula, variables, ni, nj

    def _unary(self, name: str, params: tuple = ()) -> "LazyTensor":
        out = LazyTensor._make(apply_op(name, (self.formula,), params), self.variables, self.ni,
                               self.nj)
        return inherit_ranges(out, self)

    def _binary(self, other, name: str, params: tuple = (), reverse: bool = False) -> "LazyTensor":
        if _is_complex(other):
            from jaxkeops.complex_lazy import mixed_binary
            return mixed_binary(self, other, name, reverse)
        other = LazyTensor._lift(other)
        other_formula, variables, ni, nj = self._merge(other)
        args = (other_formula, self.formula) if reverse else (self.formula, other_formula)
        return inherit_ranges(LazyTensor._make(apply_op(name, args, params), variables, ni, nj),
                              self, other)

    # --- arithmetic ----------------------------------------------------------------------------

    def __add__(self, other):
        return self._binary(other, "Add")

    def __radd__(self, other):
        return self._binary(other, "Add", reverse=True)

    def __sub__(self, other):
        return self._binary(other, "Subtract")

    def __rsub__(self, other):
        return self._binary(other, "Subtract", reverse=True)

    def __mul__(self, other):
        return self._binary(other, "Mult")

    def __rmul__(self, other):
        return self._binary(other, "Mult", reverse=True)

    def __truediv__(self, other):
        return self._binary(other, "Divide")

    def __rtruediv__(self, other):
        return self._binary(other, "Divide", reverse=True)

    def __neg__(self):
        return self._unary("Minus")

    def __pow__(self, other):
        """`x ** n`: 2 → Square, other ints → Pow, 0.5 → Sqrt, -0.5 → Rsqrt, other floats and
        LazyTensors (of dimension 1 or x's) → Powf, as KeOps."""
        if isinstance(other, numbers.Integral) and not isinstance(other, bool):
            return self._unary("Square") if other == 2 else self._unary("Pow", (int(other),))
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            if float(other) == 0.5:
                return self._unary("Sqrt")
            if float(other) == -0.5:
                return self._unary("Rsqrt")
        other = LazyTensor._lift(other)
        if other.formula.dim not in (1, self.formula.dim):
            raise ValueError(
                f"x ** y: exponent dimension {other.formula.dim} does not match base dimension "
                f"{self.formula.dim}; expected {sorted({1, self.formula.dim})}"
            )
        return self._binary(other, "Powf")

    def __rpow__(self, other):
        return self._binary(other, "Powf", reverse=True)

    def power(self, other):
        return self**other

    def __or__(self, other):
        """`x | y`: the dot product along the feature axis (KeOps' Scalprod)."""
        return self._binary(other, "Scalprod")

    def __ror__(self, other):
        return self._binary(other, "Scalprod", reverse=True)

    def _ternary(self, b, c, name: str, params: tuple = ()) -> "LazyTensor":
        b_formula, variables, ni, nj = self._merge(LazyTensor._lift(b))
        with_b = LazyTensor._make(self.formula, variables, ni, nj)
        c_formula, variables, ni, nj = with_b._merge(LazyTensor._lift(c))
        formula = apply_op(name, (self.formula, b_formula, c_formula), params)
        return LazyTensor._make(formula, variables, ni, nj)

    # --- elementwise functions (KeOps names) ----------------------------------------------------

    def __abs__(self):
        return self._unary("Abs")

    def abs(self):
        return self._unary("Abs")

    def exp(self):
        return self._unary("Exp")

    def log(self):
        return self._unary("Log")

    def xlogx(self):
        """x log x, 0 at 0."""
        return self._unary("XLogX")

    def sqrt(self):
        return self._unary("Sqrt")

    def rsqrt(self):
        """1 / sqrt(x), and 0 at 0 (as KeOps)."""
        return self._unary("Rsqrt")

    def square(self):
        return self._unary("Square")

    def sin(self):
        return self._unary("Sin")

    def cos(self):
        return self._unary("Cos")

    # Complex LazyTensors (jaxkeops/complex_lazy.py) from a real x.
    def real2complex(self):
        """x + 0j, a complex LazyTensor."""
        from jaxkeops.complex_lazy import ComplexLazyTensor
        return ComplexLazyTensor(self, None)

    def imag2complex(self):
        """1j * x, a complex LazyTensor."""
        from jaxkeops.complex_lazy import ComplexLazyTensor
        return ComplexLazyTensor(None, self)

    def exp1j(self):
        """exp(1j * x) = cos(x) + 1j * sin(x), a complex LazyTensor."""
        from jaxkeops.complex_lazy import ComplexLazyTensor
        return ComplexLazyTensor(self.cos(), self.sin())

    def sinxdivx(self):
        """sin(x) / x, 1 at 0."""
        return self._unary("SinXDivX")

    def sinc(self):
        """sin(pi x) / (pi x), as KeOps: SinXDivX(pi * x)."""
        return (math.pi * self).sinxdivx()

    def asin(self):
        return self._unary("Asin")

    def acos(self):
        return self._unary("Acos")

    def atan(self):
        return self._unary("Atan")

    def atan2(self, other):
        """`y.atan2(x)`: atan2(y, x), elementwise."""
        return self._binary(other, "Atan2")

    def sign(self):
        """-1, 0 or 1."""
        return self._unary("Sign")

    def step(self):
        """0 where x < 0, 1 elsewhere."""
        return self._unary("Step")

    def relu(self):
        return self._unary("ReLU")

    def floor(self):
        return self._unary("Floor")

    def round(self, d: int = 0):
        """Round to `d` decimals, halves away from zero (C's round, as KeOps)."""
        if not isinstance(d, numbers.Integral) or isinstance(d, bool):
            raise TypeError(f"round(d): d is {d!r}; expected an int number of decimals")
        return self._unary("Round", (int(d),))

    # Comparisons give 0 or 1 (KeOps' Equal, NotEqual, LessThan, LessOrEqual; > and >= swap).
    # `K == L` is a symbolic matrix, so a LazyTensor has no truth value and no hash (as jax
    # arrays): no cache (jit's static arguments) or `if` can mistake a formula for True. It is
    # a pytree instead: pass it to jit as an ordinary argument.
    __hash__ = None

    def __bool__(self):
        raise TypeError(
            "the truth value of a LazyTensor is ambiguous: it is a symbolic (M, N) matrix "
            "(`K == L` builds the 0/1 matrix Equal(K, L)); reduce it first, e.g. "
            "`(K == L).sum(axis=1)`"
        )

    def __eq__(self, other):
        return self._binary(other, "Equal")

    def __ne__(self, other):
        return self._binary(other, "NotEqual")

    def __lt__(self, other):
        return self._binary(other, "LessThan")

    def __gt__(self, other):
        return self._binary(other, "LessThan", reverse=True)

    def __le__(self, other):
        return self._binary(other, "LessOrEqual")

    def __ge__(self, other):
        return self._binary(other, "LessOrEqual", reverse=True)

    def clamp(self, a, b):
        """a where x < a, b where x > b, x elsewhere (a, b: numbers or LazyTensors)."""
        return self._ternary(a, b, "Clamp")

    def ifelse(self, a, b):
        """a where x >= 0, b elsewhere."""
        return self._ternary(a, b, "IfElse")

    def mod(self, modulus, offset=0):
        """x - modulus * floor((x - offset) / modulus)."""
        return self._ternary(modulus, offset, "Mod")

    # --- vector operations ------------------------------------------------------------------------

    def sqnorm2(self):
        return self._unary("SqNorm2")

    def norm2(self):
        return self.sqnorm2().sqrt()

    def norm(self, dim: int = -1):
        if dim not in (-1, 2):
            raise ValueError(f"norm(dim): dim={dim}; only the feature axis (-1 or 2) is supported")
        return self.norm2()

    def normalize(self):
        """x / |x| (0 where x = 0), as KeOps: Rsqrt(SqNorm2(x)) * x."""
        return self.sqnorm2().rsqrt() * self

    def sqdist(self, other):
        return self._binary(other, "SqDist")

    def weightedsqnorm(self, s):
        """Σ s x², Σ_k s_k x_k² or xᵀ S x, for weights s of dimension 1, D or D² (S row-major)."""
        s = LazyTensor._lift(s)
        D, ds = self.formula.dim, s.formula.dim
        if ds == 1:
            return s * self.sqnorm2()
        if ds == D:
            return (s * self.square()).sum(-1)
        if ds == D * D:
            return (self * s.matvecmult(self)).sum(-1)
        raise ValueError(
            f"weightedsqnorm: weights of dimension {ds} for a vector of dimension {D}; "
            f"expected 1, {D} or {D * D}"
        )

    def weightedsqdist(self, g, s):
        """(x - g).weightedsqnorm(s)."""
        return (self - g).weightedsqnorm(s)

    def _feature_axis(self, axis, dim, method: str) -> bool:
        """Whether a min/max/argmin/argmax call is over the feature axis (a new LazyTensor)."""
        _check_axis_type(method, axis=axis, dim=dim)
        axis = axis if dim is None else dim
        return axis in (-1, len(self.batch_shape) + 2)

    def one_hot(self, D: int):
        """A vector of dimension D with 1 at index round(x) (KeOps: (int)(x + 0.5))."""
        if not isinstance(D, numbers.Integral) or isinstance(D, bool):
            raise TypeError(f"one_hot(D): D is {D!r}; expected an int")
        return self._unary("OneHot", (int(D),))

    # --- indexing ---------------------------------------------------------------------------------

    def elem(self, i: int):
        """The coordinate x[i] (dimension 1)."""
        D = self.formula.dim
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise TypeError(f"elem(i): i is {i!r}; expected an int")
        if not 0 <= i < D:
            raise ValueError(f"elem(i): index {i} is out of bounds [0, {D})")
        return self._unary("Extract", (int(i), 1))

    def extract(self, i: int, d: int):
        """The coordinates x[i:i+d] (dimension d)."""
        D = self.formula.dim
        for name, v in (("i", i), ("d", d)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise TypeError(f"extract(i, d): {name} is {v!r}; expected an int")
        if not 0 <= i < D or d < 1 or i + d > D:
            raise ValueError(f"extract(i, d): range [{i}, {i + d}) is not inside [0, {D})")
        return self._unary("Extract", (int(i), int(d)))

    def __getitem__(self, key):
        """`x[k]` → elem(k) (negative k counts from the end), `x[k:l]` → extract(k, l - k);
        leading `...` or `:` entries are allowed, only the feature axis can be indexed."""
        if isinstance(key, tuple):
            head, key = key[:-1], key[-1] if key else None
            if len(head) > 2 or any(k is not Ellipsis and k != slice(None) for k in head):
                raise ValueError(
                    "LazyTensor indexing: only the last (feature) axis can be indexed, "
                    "as x[k], x[k:l] or x[..., k:l]"
                )
        D = self.formula.dim
        if isinstance(key, slice):
            start, stop, step = key.indices(D)
            if step != 1:
                raise ValueError(f"LazyTensor indexing: slice step {key.step}; expected 1")
            if stop <= start:
                raise ValueError(f"LazyTensor indexing: empty slice {key} of a dimension {D}")
            return self.extract(start, stop - start)
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            return self.elem(key + D if key < 0 else key)
        raise TypeError(f"LazyTensor indexing: key {key!r}; expected an int or a slice")

    def concat(self, other):
        """x's coordinates followed by other's (dimension x.dim + other.dim)."""
        return self._binary(other, "Concat")

    @staticmethod
    def concatenate(lazy_tensors, axis: int = -1):
        """Concatenation of a tuple of LazyTensors along the feature axis."""
        if not isinstance(lazy_tensors, (tuple, list)) or not lazy_tensors:
            raise ValueError("LazyTensor.concatenate: expected a non-empty tuple of LazyTensors")
        if axis not in (-1, 2):
            raise ValueError(
                f"LazyTensor.concatenate: axis={axis}; only the feature axis (-1 or 2) is supported"
            )
        out = LazyTensor._lift(lazy_tensors[0])
        for x in lazy_tensors[1:]:
            out = out.concat(x)
        return out

    @staticmethod
    def cat(lazy_tensors, dim: int):
        """Alias of `LazyTensor.concatenate(lazy_tensors, dim)`."""
        return LazyTensor.concatenate(lazy_tensors, dim)

    # --- tensor algebra (all TensorDot) -----------------------------------------------------------

    def matvecmult(self, v):
        """A (dimension n·p, row-major n×p) times v (dimension p): dimension n."""
        v = LazyTensor._lift(v)
        da, dv = self.formula.dim, v.formula.dim
        if da % dv:
            raise ValueError(
                f"matvecmult: matrix dimension {da} is not a multiple of vector dimension {dv}"
            )
        return self._binary(v, "TensorDot", tensordot_params([da // dv, dv], [dv], [1], [0]))

    def vecmatmult(self, A):
        """v (dimension n) times A (dimension n·p, row-major n×p): dimension p."""
        A = LazyTensor._lift(A)
        dv, da = self.formula.dim, A.formula.dim
        if da % dv:
            raise ValueError(
                f"vecmatmult: matrix dimension {da} is not a multiple of vector dimension {dv}"
            )
        return self._binary(A, "TensorDot", tensordot_params([dv], [dv, da // dv], [0], [0]))

    def tensorprod(self, other):
        """Outer product, row-major: out[k * dim(other) + l] = x[k] other[l]."""
        other = LazyTensor._lift(other)
        return self._binary(
            other, "TensorDot", tensordot_params([self.formula.dim], [other.formula.dim], [], [])
        )

    def keops_tensordot(self, other, dimfa, dimfb, contfa, contfb, *args):
        """KeOps' TensorDot: x and other seen as tensors of shapes dimfa and dimfb, contracted
        over the axes contfa[k] ↔ contfb[k]; the kept axes (x's then other's) are transposed by
        argsort(perm) when a permutation `perm` is given as last argument."""
        as_tuple = lambda v: (v,) if isinstance(v, numbers.Integral) else tuple(v)  # noqa: E731
        perm = as_tuple(args[0]) if args else None
        params = tensordot_params(as_tuple(dimfa), as_tuple(dimfb), as_tuple(contfa),
                                  as_tuple(contfb), perm)
        return self._binary(other, "TensorDot", params)

    def keops_kron(self, other, dimfself, dimfother):
        """Kronecker product of x (shape dimfself) and other (shape dimfother), flattened."""
        if len(dimfself) != len(dimfother):
            raise ValueError(
                f"keops_kron: shapes {list(dimfself)} and {list(dimfother)} have different ranks"
            )
        n = len(dimfself)
        perm = list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2))
        return self.keops_tensordot(other, dimfself, dimfother, (), (), perm)

    # --- shape and printing --------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        grid = self.batch_shape + (self.ni or 1, self.nj or 1)
        return grid if self.formula.dim == 1 else grid + (self.formula.dim,)

    def __repr__(self) -> str:
        return f"jaxkeops LazyTensor\nformula: {self.formula!r}\nshape: {self.shape}"

    # --- reductions ----------------------------------------------------------------------------

    def _reduction_axis(self, axis, dim, method: str) -> int:
        """0 (over i) or 1 (over j), from KeOps' axis: with k batch dims, k means i, k+1 j."""
        _check_axis_type(method, axis=axis, dim=dim)
        if dim is not None:
            if axis is not None and axis != dim:
                raise ValueError(f"{method}: axis={axis} and dim={dim} disagree")
            axis = dim
        k = len(self.batch_shape)
        if axis not in (k, k + 1):
            raise ValueError(
                f"{method}: axis={axis}; expected {k} (reduce over i) or {k + 1} (reduce over j)"
                + (f" for a LazyTensor with {k} batch dimension(s)" if k else "")
            )
        return axis - k

    def _batched_operands(self):
        """The variables' arrays with batch dims of the full rank (leading 1s added: free)."""
        k = len(self.batch_shape)
        out = []
        for v in self.variables:
            base_rank = 1 if v.cat == CAT_P else 2
            missing = k - (v.array.ndim - base_rank)
            out.append(v.array.reshape((1,) * missing + tuple(v.array.shape)) if missing else v.array)
        return out

    def _reduce(self, reduction: str, axis: int, formulas=None, reduction_params=(),
                method: str | None = None, options: dict | None = None):
        """The outputs of the reduction; `options` are pykeops' keywords (call_options.py).
        With placeholders or call=False: a 1-tuple holding the PendingReduction."""
        formulas = (self.formula,) if formulas is None else formulas
        method = method or reduction
        options = options or {}
        settings = check_options(method, reduction, options)
        if not settings.call or has_placeholders(self.variables):
            return (PendingReduction(self, reduction, axis, formulas, reduction_params, method,
                                     options),)
        operands = self._batched_operands()
        if not operands:
            raise ValueError(
                f"{method}: this LazyTensor has no variable: reductions need at least one "
                "array operand"
            )
        dtype = self._dtype()
        if dtype is None:  # only weakly typed scalars: jnp's promotion among them
            dtype = np.dtype(jnp.result_type(*operands))
        operands = [x.astype(dtype) if v.weak else x for v, x in zip(self.variables, operands)]
        if dtype in _HALF_DTYPES:  # computed and accumulated in float32
            operands = [x.astype(jnp.float32) for x in operands]
        # An axis without a variable has size 1; an empty one (0) stays empty.
        ni = 1 if self.ni is None else self.ni
        nj = 1 if self.nj is None else self.nj
        try:
            check_reduction(reduction, tuple(f.dim for f in formulas), reduction_params,
                            nj if axis == 1 else ni)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
        var_cats = [v.cat for v in self.variables]
        formulas, operands, var_cats = _pack_weak_scalars(
            formulas, operands, var_cats, [v.weak for v in self.variables])
        outs = keops_reduce(
            operands,
            ranges=check_ranges(self.ranges, method),
            formulas=formulas,
            var_cats=var_cats,
            reduction=reduction,
            reduction_params=reduction_params,
            axis=axis,
            ni=ni,
            nj=nj,
            batch_shape=self.batch_shape,
        )
        if dtype in _HALF_DTYPES:
            outs = tuple(o.astype(dtype) if o.dtype == jnp.float32 else o for o in outs)
        settings.deliver(method, outs[0] if len(outs) == 1 else tuple(outs))
        return outs

    def _reduce_weighted(self, reduction: str, weight, axis: int, method: str, options=None):
        """A reduction of two formulas: the scores (self) and a weight LazyTensor."""
        if not isinstance(weight, LazyTensor):
            what = f"an array of shape {tuple(weight.shape)}" if _is_array(weight) else (
                f"a {type(weight).__name__}")
            raise TypeError(
                f"{method}: weight is {what}; expected a LazyTensor (e.g. Vj(w) for weights "
                "w_j shaped (N, E), or a formula of the same i and j variables)"
            )
        try:
            weight_formula, variables, ni, nj = self._merge(weight)
        except ValueError as e:
            raise ValueError(
                f"{method}: the weight (shape {weight.shape}) does not fit the scores "
                f"(shape {self.shape}): {e}"
            ) from None
        both = inherit_ranges(LazyTensor._make(self.formula, variables, ni, nj), self, weight)
        return both._reduce(reduction, axis, formulas=(self.formula, weight_formula),
                            method=method, options=options)

    def sum(self, axis: int | None = -1, dim: int | None = None, keepdim: bool | None = None,
            **options):
        """`sum(-1)`: sum over the feature axis (a new LazyTensor of dimension 1, which keeps
        that axis: `keepdim` is accepted and changes nothing, as pykeops); `sum(0)` / `sum(1)`:
        Sum reduction over i / over j, an array shaped (N, D) / (M, D). Accumulated in float64.
        `options`: pykeops' keywords (backend=, call=, out=, ...; jaxkeops/call_options.py)."""
        if dim is not None:
            axis = dim
        if axis in (-1, len(self.batch_shape) + 2):
            if options:
                raise TypeError(f"sum(-1): {', '.join(options)} apply to reductions, not to the "
                                "sum over the feature axis")
            return self._unary("Sum")
        if keepdim is not None:
            raise TypeError("sum: keepdim applies to the feature axis (sum(-1)) only")
        axis = self._reduction_axis(axis, None, "sum")
        return self._reduce("Sum", axis, options=options)[0]

    # Below, shapes are given for axis=1 (reduce over j, one row per i); axis=0 swaps M and N.
    # On an empty reduced axis: logsumexp -inf, min +inf, max -inf, every arg index -1,
    # sumsoftmaxweight NaN. Index outputs are int32 (int64 under jax_enable_x64); ties go to the
    # lowest index.

    def logsumexp(self, axis: int | None = None, dim: int | None = None, weight=None,
                  other=None, **options):
        """log Σ_j exp(S_ij) for a scalar formula S: (M, 1). With `weight` w (a LazyTensor of
        dimension E; `other` is pykeops' name for it): log Σ_j exp(S_ij) w_ij, (M, E) (NaN where
        that sum is negative). Computed with a running maximum: any magnitude of S is safe, -inf
        entries are masked pairs."""
        if other is not None:
            if weight is not None:
                raise ValueError("logsumexp: give the weight once, as weight= or other=")
            weight = other
        axis = self._reduction_axis(axis, dim, "logsumexp")
        if weight is None:
            return self._reduce("LogSumExp", axis, method="logsumexp", options=options)[0]
        return self._reduce_weighted("LogSumExpWeight", weight, axis, "logsumexp", options)[0]

    def sumsoftmaxweight(self, weight, axis: int | None = None, dim: int | None = None,
                         **options):
        """Σ_j exp(S_ij) w_ij / Σ_j exp(S_ij) for a scalar formula S and a weight LazyTensor w of
        dimension E: (M, E). Running maximum, as logsumexp; a row with no unmasked pair is NaN."""
        axis = self._reduction_axis(axis, dim, "sumsoftmaxweight")
        if _is_complex(weight):  # linear in the weight: jaxkeops/complex_lazy.py
            from jaxkeops.complex_lazy import ComplexLazyTensor, sumsoftmaxweight
            if isinstance(weight, ComplexLazyTensor):
                return sumsoftmaxweight(self, weight, axis, "sumsoftmaxweight", options)
        return self._reduce_weighted("SumSoftMaxWeight", weight, axis, "sumsoftmaxweight",
                                     options)[0]

    def _pick(self, reduction: str, method: str, axis, dim, options=None):
        if dim is not None and axis == -1:  # the default axis: dim= decides
            axis = None
        if self._feature_axis(axis, dim, method):  # over the feature axis: a new LazyTensor
            if options:
                raise TypeError(f"{method}(-1): {', '.join(options)} apply to reductions, not "
                                "to the feature axis")
            return self._unary(reduction)
        axis = self._reduction_axis(axis, dim, method)
        return self._reduce(reduction, axis, method=method, options=options)[0]

    def min(self, axis: int = -1, dim: int | None = None, **options):
        """`min(0)` / `min(1)`: minimum over i / over j, per component: (M, D); +inf on an empty
        axis. `min(-1)`: the smallest coordinate (a LazyTensor of dimension 1)."""
        return self._pick("Min", "min", axis, dim, options)

    def max(self, axis: int = -1, dim: int | None = None, **options):
        """`max(0)` / `max(1)`: maximum over i / over j, per component: (M, D); -inf on an empty
        axis. `max(-1)`: the largest coordinate (a LazyTensor of dimension 1)."""
        return self._pick("Max", "max", axis, dim, options)

    def argmin(self, axis: int = -1, dim: int | None = None, **options):
        """`argmin(0)` / `argmin(1)`: index of the minimum, per component (the lowest on ties):
        (M, D) integers; -1 on an empty reduced axis. `argmin(-1)`: index of the first smallest
        coordinate, as a float value (a LazyTensor of dimension 1)."""
        return self._pick("ArgMin", "argmin", axis, dim, options)

    def argmax(self, axis: int = -1, dim: int | None = None, **options):
        """`argmax(0)` / `argmax(1)`: index of the maximum, per component (the lowest on ties):
        (M, D) integers; -1 on an empty reduced axis. `argmax(-1)`: index of the first largest
        coordinate, as a float value (a LazyTensor of dimension 1)."""
        return self._pick("ArgMax", "argmax", axis, dim, options)

    def min_argmin(self, axis: int | None = None, dim: int | None = None, **options):
        """(min, argmin) in one pass; (+inf, -1) on an empty reduced axis."""
        axis = self._reduction_axis(axis, dim, "min_argmin")
        return _pair(self._reduce("Min_ArgMin", axis, method="min_argmin", options=options))

    def max_argmax(self, axis: int | None = None, dim: int | None = None, **options):
        """(max, argmax) in one pass; (-inf, -1) on an empty reduced axis."""
        axis = self._reduction_axis(axis, dim, "max_argmax")
        return _pair(self._reduce("Max_ArgMax", axis, method="max_argmax", options=options))

    def _kmin(self, reduction: str, method: str, K, axis, dim, options=None):
        if not isinstance(K, numbers.Integral) or isinstance(K, bool):
            raise TypeError(f"{method}: K is {K!r}; expected a Python int")
        axis = self._reduction_axis(axis, dim, method)
        return self._reduce(reduction, axis, reduction_params=(int(K),), method=method,
                            options=options)

    def Kmin(self, K: int, axis: int | None = None, dim: int | None = None, **options):
        """The K smallest values, ascending, per component: (M, K) for a scalar formula,
        (M, K, D) otherwise. Needs 1 <= K <= the size of the reduced axis."""
        return self._kmin("KMin", "Kmin", K, axis, dim, options)[0]

    def argKmin(self, K: int, axis: int | None = None, dim: int | None = None, **options):
        """Indices of the K smallest values (as Kmin; equal values in ascending index order)."""
        return self._kmin("ArgKMin", "argKmin", K, axis, dim, options)[0]

    def Kmin_argKmin(self, K: int, axis: int | None = None, dim: int | None = None, **options):
        """(Kmin, argKmin) in one pass."""
        return _pair(self._kmin("KMin_ArgKMin", "Kmin_argKmin", K, axis, dim, options))

    # --- linear algebra: K @ v, transposition, solve ------------------------------------------

    def _dtype(self):
        """The dtype shared by the strongly typed variables (weak scalars follow it); None when
        every variable is weak. Raises when the strong ones disagree."""
        dtypes = {np.dtype(v.array.dtype) for v in self.variables
                  if not v.weak and not isinstance(v.array, Placeholder)}
        if len(dtypes) > 1:
            seen = ", ".join(
                f"Var({k}) {CAT_NAMES[v.cat]} {np.dtype(v.array.dtype)}"
                + (" (weak)" if v.weak else "")
                for k, v in enumerate(self.variables)
            )
            raise TypeError(
                f"the variables of one formula must share a dtype (cast them explicitly); "
                f"got {seen}"
            )
        return dtypes.pop() if dtypes else None

    def __matmul__(self, v, **options):
        """`K @ v` for a scalar K (M, N) and v shaped (N,) or (N, E): the Sum reduction over j of
        K_ij v_j, shaped (M,) or (M, E). With batch dims B (K shaped (*B, M, N)), v is shaped
        (*B, N) or (*B, N, E), each batch dim equal to K's or 1, and so is the result.
        `K.__matmul__(v, **options)` takes pykeops' keywords of the Sum (backend=, out=, ...)."""
        if options.get("call") is False:
            raise TypeError("K @ v: call=False is not available for @; write "
                            "(K * Vj(v)).sum(axis=1, call=False)")
        out_array = options.pop("out", None)
        if self.formula.dim != 1:
            raise ValueError(
                f"K @ v: K has shape {self.shape}; the product needs a scalar LazyTensor (M, N) "
                "(its formula dimension must be 1)"
            )
        if isinstance(v, LazyTensor) or not _is_array(v):
            raise TypeError(
                f"K @ v: v is a {type(v).__name__}; expected a jax or NumPy array shaped (N,) "
                "or (N, E)"
            )
        if _is_complex(v):
            return self.real2complex() @ v
        v = jnp.asarray(v)
        batch, n = self.batch_shape, self.nj
        k = len(batch)
        b = "".join(f"{d}, " for d in batch)
        N = "N" if n is None else str(n)
        expected = f"({b}{N},) or ({b}{N}, E)"
        vector = v.ndim == k + 1
        if (
            v.ndim not in (k + 1, k + 2)
            or (n is not None and v.shape[k] != n)
            or any(d not in (1, full) for d, full in zip(v.shape[:k], batch))
            or v.size == 0
        ):
            raise ValueError(
                f"K @ v: v has shape {tuple(v.shape)}; expected {expected} for K of shape "
                f"{self.shape} (batch dims equal to K's or 1)"
            )
        _check_float_dtype(v, f"K @ v: v of shape {tuple(v.shape)}")
        if self._dtype() is not None and np.dtype(v.dtype) != self._dtype():
            raise TypeError(f"K @ v: v has dtype {v.dtype}; expected {self._dtype()} like K")
        columns = v[..., None] if vector else v  # (*B, N, E)
        out = (self * LazyTensor(columns[..., None, :, :])).sum(axis=k + 1, **options)  # keeps self.ranges
        out = out[..., 0] if vector else out
        return CallOptions(out=out_array).deliver("K @ v", out)

    def t(self) -> "LazyTensor":
        """The transposed symbolic matrix: i variables become j variables and vice versa."""
        swap = {CAT_I: CAT_J, CAT_J: CAT_I, CAT_P: CAT_P}
        variables = [_Variable(v.array, swap[v.cat], v.weak) for v in self.variables]
        formula = substitute(
            self.formula,
            lambda leaf: Var(leaf.index, leaf.dim, swap[leaf.cat])
            if isinstance(leaf, Var) else None,
        )
        out = LazyTensor._make(formula, variables, self.nj, self.ni)
        out.ranges = None if self.ranges is None else swap_axes(self.ranges)
        return out

    @property
    def T(self) -> "LazyTensor":
        return self.t()

    def solve(self, b, var=None, *, alpha=1e-10, eps=1e-6, maxiter: int | None = None,
              return_info: bool = False, **options):
        """Solve (alpha·I + K) a = b by conjugate gradient, for K symmetric and alpha·I + K
        positive definite (not checked beforehand; a failure is reported in the info).

        b is an array shaped (M,) or (M, E) (indexed by i, as in KeOps), or a LazyTensor that is
        one i variable (`Vi(b)`: sum over j of K_ij a_j) or one j variable (`Vj(b)`: sum over i of
        K_ij a_i). The E columns are separate systems solved together, one kernel product per
        iteration. Each column stops when ‖r‖ ≤ eps·‖b‖, after `maxiter` iterations (default
        `jaxkeops.solve.default_maxiter(n)` = 10·n), on non-positive curvature or on a
        non-finite value. Works under jit and vmap, and is differentiable to any order (with
        respect to b, alpha and everything K depends on) by implicit differentiation: every
        derivative is another solve. Returns a shaped like b, and with `return_info=True` the
        pair (a, jaxkeops.SolveInfo) (iterations done, relative residual and status per column).
        Without return_info, a solve that did not converge warns (RuntimeWarning, from a host
        callback that runs only then under jit).

        With batch dims B (K shaped (*B, M, M)), b is shaped (*B, M) or (*B, M, E), each batch
        dim equal to K's or 1; the systems are solved together (one kernel call per iteration)
        and the info fields get the batch dims in front.

        With `var` (pykeops): K is a formula linear in its variable `var` (e.g. `K_xy * Vj(a)`,
        var = that `Vj(a)`), and the system is alpha·a + Σ K(..., a) = b, summed over var's
        axis, b living on the other one (an array: i, as pykeops). `options`: pykeops' keywords
        (backend=, device_id=, ...: jaxkeops/call_options.py).
        """
        unsupported_with_ranges(self.ranges, "solve")
        if not check_options("solve", "Sum", options).call:
            raise NotImplementedError("solve: call=False is not supported (call it with arrays)")
        if var is not None:
            from jaxkeops.kernel_solve import solve_for_variable

            return solve_for_variable(self, b, var, alpha=alpha, eps=eps, maxiter=maxiter,
                                      return_info=return_info)
        operator, rhs = self, b
        if isinstance(b, LazyTensor):
            if not isinstance(b.formula, Var) or b.formula.cat == CAT_P:
                raise ValueError(
                    f"solve: b is a LazyTensor with formula {b.formula!r}; expected a single i "
                    "variable (Vi(b)) or j variable (Vj(b)), or an array"
                )
            if b.formula.cat == CAT_J:  # sum over i of K_ij a_i = b_j: the transposed system
                operator = self.t()
            rhs = b.variables[0].array
        elif not _is_array(b):
            raise TypeError(f"solve: b is a {type(b).__name__}; expected an array (M,) or (M, E)")
        rhs = jnp.asarray(rhs)
        if operator.formula.dim != 1:
            raise ValueError(
                f"solve: K has shape {self.shape}; expected a scalar LazyTensor (M, M)"
            )
        if operator.ni is not None and operator.nj is not None and operator.ni != operator.nj:
            raise ValueError(f"solve: K has shape {self.shape}; expected a square matrix (M, M)")
        # A K with no i (or j) variable is constant along that axis: its size comes from b.
        n = operator.ni if operator.ni is not None else operator.nj
        k = len(operator.batch_shape)
        vector = rhs.ndim == k + 1
        if (
            rhs.ndim not in (k + 1, k + 2)
            or (n is not None and rhs.shape[k] != n)
            or rhs.size == 0
            or any(d not in (1, full) for d, full in zip(rhs.shape[:k], operator.batch_shape))
        ):
            size = "M" if n is None else str(n)
            batch = "".join(f"{d}, " for d in operator.batch_shape)
            raise ValueError(
                f"solve: b has shape {tuple(rhs.shape)}; expected ({batch}{size},) or "
                f"({batch}{size}, E) for K of shape {self.shape}"
                + (" (batch dims equal to K's or 1)" if k else "")
            )
        _check_float_dtype(rhs, f"solve: b of shape {tuple(rhs.shape)}")
        dtype = np.dtype(rhs.dtype)
        if operator._dtype() is not None and dtype != operator._dtype():
            raise TypeError(f"solve: b has dtype {dtype}; expected {operator._dtype()} like K")
        alpha = _check_alpha(alpha, dtype)
        if not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"solve: eps={eps!r}; expected a real number >= 0")
        if maxiter is None:
            maxiter = default_maxiter(rhs.shape[k])
        if not isinstance(maxiter, numbers.Integral) or isinstance(maxiter, bool) or maxiter < 0:
            raise ValueError(f"solve: maxiter={maxiter!r}; expected an integer >= 0 or None")

        arrays = operator._batched_operands()
        a, info = _jitted_ridge_solve(
            tuple(x.astype(dtype) if v.weak else x for v, x in zip(operator.variables, arrays)),
            rhs[..., None] if vector else rhs,
            jnp.asarray(alpha, dtype),
            formula=operator.formula,
            cats=tuple(v.cat for v in operator.variables),
            n=int(rhs.shape[k]),
            batch_shape=tuple(np.broadcast_shapes(operator.batch_shape, rhs.shape[:k])),
            eps=float(eps),
            maxiter=int(maxiter),
        )
        if vector:
            a, info = a[..., 0], info._replace(residual=info.residual[..., 0],
                                               status=info.status[..., 0])
        if not return_info:
            warn_unless_converged(info.status)
        return (a, info) if return_info else a


@functools.partial(jax.jit,
                   static_argnames=("formula", "cats", "n", "batch_shape", "eps", "maxiter"))
def _jitted_ridge_solve(arrays, b, alpha, *, formula, cats, n, batch_shape, eps, maxiter):
    """`ridge_solve` for the (*batch_shape, n, n) LazyTensor (formula, arrays) and b shaped
    (*batch, n, E), batch dims equal to batch_shape or 1: jitted, so that eager calls with the
    same formula and shapes reuse one compiled CG loop instead of tracing a new one each time.
    Batched systems are vmapped: one kernel call per CG iteration for the whole batch."""

    def solve_one(arrays, b):
        K = LazyTensor._make(formula, [_Variable(x, c) for x, c in zip(arrays, cats)], n, n)
        return ridge_solve(K.__matmul__, b, alpha, eps=eps, maxiter=maxiter)

    if not batch_shape:
        return solve_one(arrays, b)
    k, size = len(batch_shape), math.prod(batch_shape)

    def flatten_batch(x):
        """(size, ...) and vmap axis 0, or (...) and None where x is broadcast (all 1s)."""
        if all(d == 1 for d in x.shape[:k]):
            return x.reshape(x.shape[k:]), None
        x = jnp.broadcast_to(x, batch_shape + x.shape[k:])
        return x.reshape((size,) + x.shape[k:]), 0

    flat_arrays, array_axes = zip(*map(flatten_batch, arrays)) if arrays else ((), ())
    flat_b, _ = flatten_batch(jnp.broadcast_to(b, batch_shape + b.shape[k:]))
    a, info = jax.vmap(solve_one, in_axes=(tuple(array_axes), 0))(tuple(flat_arrays), flat_b)
    unflatten = lambda x: x.reshape(batch_shape + x.shape[1:])  # noqa: E731
    return unflatten(a), SolveInfo(*(unflatten(x) for x in info))


def _check_alpha(alpha, dtype: np.dtype, where: str = "solve"):
    """alpha: a real number, or a 0-d/size-1 float array (traced values stay differentiable) of
    the system's dtype."""
    if isinstance(alpha, numbers.Real) and not _is_array(alpha):
        return float(alpha)
    if not _is_array(alpha):
        raise TypeError(f"{where}: alpha is a {type(alpha).__name__}; expected a real number or "
                        "a 0-d array")
    alpha = jnp.asarray(alpha)
    if alpha.size != 1:
        raise ValueError(f"{where}: alpha has shape {alpha.shape}; expected a scalar")
    if not getattr(alpha, "weak_type", False) and np.dtype(alpha.dtype) != dtype:
        raise TypeError(f"{where}: alpha has dtype {alpha.dtype}; expected {dtype} like K")
    return alpha.reshape(()).astype(dtype)


# --- LazyTensor as a pytree: the arrays are the leaves, the formula and categories static -------


def _flatten_lazy_tensor(lt: LazyTensor):
    ranges = () if lt.ranges is None else tuple(lt.ranges)  # arrays: leaves too
    aux = (lt.formula, tuple(v.cat for v in lt.variables), tuple(v.weak for v in lt.variables),
           len(ranges))
    return tuple(v.array for v in lt.variables) + ranges, aux


def _unflatten_lazy_tensor(aux, leaves) -> LazyTensor:
    formula, cats, weak, n_ranges = aux
    out = LazyTensor()
    if n_ranges:
        leaves, out.ranges = leaves[: len(leaves) - n_ranges], tuple(leaves[len(leaves) - n_ranges:])
    out.formula = formula
    out.variables = tuple(_Variable(x, c, w) for x, c, w in zip(leaves, cats, weak))
    # Sizes are read off the leaves (under vmap a leaf has lost its mapped axis); JAX may also
    # unflatten placeholders that are not arrays, which get no sizes.
    if all(hasattr(v.array, "shape") and len(v.array.shape) >= (1 if v.cat == CAT_P else 2)
           for v in out.variables):
        for v in out.variables:
            if v.cat == CAT_I:
                out.ni = _size(v.array.shape[-2])
            elif v.cat == CAT_J:
                out.nj = _size(v.array.shape[-2])
        out.batch_shape = _broadcast_batch_shapes(out.variables)
    return out


jax.tree_util.register_pytree_node(LazyTensor, _flatten_lazy_tensor, _unflatten_lazy_tensor)
add_ranges_keyword(LazyTensor)  # `ranges=` on every reduction method


def _pack_weak_scalars(formulas, operands, var_cats, weak):
    """Weakly typed scalars (non-integer Python constants, Pm(0.5)) as one parameter vector:
    a formula with many constants stays within the kernels' operand limits (64 on CUDA), and
    each constant is read by an Extract of that vector (param role: computed once per call)."""
    packed = [k for k, w in enumerate(weak) if w and var_cats[k] == CAT_P]
    if len(packed) < 2:
        return formulas, operands, var_cats
    kept = [k for k in range(len(operands)) if k not in packed]
    renumber = {old: new for new, old in enumerate(kept)}
    vector = Var(len(kept), len(packed), CAT_P)
    slot = {k: apply_op("Extract", (vector,), (pos, 1)) for pos, k in enumerate(packed)}

    def leaf_map(leaf):
        if not isinstance(leaf, Var):
            return None
        return slot[leaf.index] if leaf.index in slot else Var(renumber[leaf.index], leaf.dim,
                                                                  leaf.cat)

    formulas = tuple(substitute(f, leaf_map) for f in formulas)
    values = jnp.concatenate([operands[k] for k in packed], axis=-1)
    return (formulas, [operands[k] for k in kept] + [values],
            [var_cats[k] for k in kept] + [CAT_P])


def _check_axis_type(method: str, **axes) -> None:
    """axis= / dim= must be ints (or None): 1.0 or True are not axes."""
    for name, value in axes.items():
        if value is not None and (not isinstance(value, numbers.Integral)
                                  or isinstance(value, bool)):
            raise TypeError(f"{method}: {name} is {value!r}; expected an int")


def _variable_batch_shape(array, cat: int) -> tuple[int, ...]:
    return tuple(array.shape[: array.ndim - (1 if cat == CAT_P else 2)])


def _broadcast_batch_shapes(variables) -> tuple[int, ...]:
    shapes = [_variable_batch_shape(v.array, v.cat) for v in variables]
    try:
        return tuple(np.broadcast_shapes(*shapes)) if shapes else ()
    except ValueError:
        raise ValueError(
            f"incompatible batch dimensions {', '.join(map(str, shapes))}: "
            "expected shapes that broadcast against each other (NumPy rules)"
        ) from None


def _merge_size(a: int | None, b: int | None, what: str) -> int | None:
    if a is not None and b is not None and a != b:
        raise ValueError(f"incompatible sizes for {what}: {a} and {b}")
    return a if a is not None else b


def Vi(x, dim: int | None = None) -> LazyTensor:
    """An i variable from an array shaped (M, D); `Vi(index, dim)`: a placeholder for argument
    `index` of a later call (an array (M, dim))."""
    if dim is not None:
        return placeholder_lazy_tensor(*check_placeholder_spec(x, dim, CAT_I, "Vi(index, dim)"))
    return _from_2d(x, 0, "Vi")


def Vj(x, dim: int | None = None) -> LazyTensor:
    """A j variable from an array shaped (N, D); `Vj(index, dim)`: a placeholder for argument
    `index` of a later call (an array (N, dim))."""
    if dim is not None:
        return placeholder_lazy_tensor(*check_placeholder_spec(x, dim, CAT_J, "Vj(index, dim)"))
    return _from_2d(x, 1, "Vj")


def _pair(outs):
    """The outputs of a two-output reduction as a tuple, or the one pending reduction."""
    return outs[0] if isinstance(outs[0], PendingReduction) else tuple(outs)


def _from_2d(x, axis: int, name: str) -> LazyTensor:
    x = jnp.asarray(x) if _is_array(x) else x
    if not _is_array(x) or x.ndim != 2:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{name}(x): x has shape {shape}; expected a 2-d array (n, D)")
    return LazyTensor(x, axis=axis)


def Pm(p, dim: int | None = None) -> LazyTensor:
    """A parameter (an operand, not a constant: traced values stay differentiable) from a
    number, a 0-d or a 1-d array; `Pm(index, dim)`: a placeholder for argument `index` of a
    later call (an array (dim,))."""
    if dim is not None:
        return placeholder_lazy_tensor(*check_placeholder_spec(p, dim, CAT_P, "Pm(index, dim)"))
    if _is_complex(p):
        from jaxkeops.complex_lazy import complex_parameter
        return complex_parameter(p)
    python_number = isinstance(p, numbers.Number) and not _is_array(p)
    weak = python_number or _is_weak_scalar(p)  # takes the dtype of the other operands
    p = jnp.asarray(float(p) if python_number else p)
    if p.ndim > 1:
        raise ValueError(f"Pm(p): p has shape {p.shape}; expected a number, 0-d or 1-d array")
    out = LazyTensor(p.reshape(-1))
    out.variables = (_Variable(out.variables[0].array, CAT_P, weak),)
    return out
