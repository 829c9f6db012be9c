"""Complex LazyTensors: a complex formula is a pair of real formulas, its real and imaginary parts.

A complex operand of dimension D reaches the kernels as one real operand of dimension 2D, its
real parts followed by its imaginary parts ([re_1..re_D, im_1..im_D]), and two Extracts read the
halves. Complex arithmetic is spelled out with real ops (z w = (ac - bd) + (ad + bc) i, ...), so
the formula IR, the program compiler and the CPU and CUDA executors run complex formulas
unchanged: the real and imaginary parts live in registers side by side, as in KeOps.

The Sum reduction reduces the real formula Concat(re, im) and reassembles the complex result
with jnp; the complex inputs are split with jnp as well. JAX therefore differentiates through
complex formulas with its own conventions (the same as for any jnp function of complex arrays).

A part known to be zero (the imaginary part of `x.real2complex()`, the real part of `1j`) is
None: it builds no formula and costs nothing.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import lazy_tensor as _lt
from jaxkeops.call_options import check_options
from jaxkeops.formula import Const
from jaxkeops.keops_names import KeOpsNames
from jaxkeops.lazy_tensor import LazyTensor

Part = LazyTensor | None  # None: a part equal to zero

_COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))


def _add(a: Part, b: Part) -> Part:
    if a is None or b is None:
        return b if a is None else a
    return a + b


def _neg(a: Part) -> Part:
    return None if a is None else -a


def _sub(a: Part, b: Part) -> Part:
    if b is None:
        return a
    return -b if a is None else a - b


def _mul(a: Part, b: Part) -> Part:
    return None if a is None or b is None else a * b


def _div(a: Part, b: LazyTensor) -> Part:
    return None if a is None else a / b


def _square(a: Part) -> Part:
    return None if a is None else a.square()


def _zero_like(a: LazyTensor) -> LazyTensor:
    """A zero with a's variables and dimension (so its i and j sizes stay known)."""
    return a * 0


class ComplexLazyTensor(KeOpsNames):
    """A symbolic complex M×N matrix: `re + 1j * im`, each part a real LazyTensor (or None for
    zero) over the same variables. Built from complex arrays by `LazyTensor`, `Vi`, `Vj`, `Pm`,
    from Python complex numbers (`1j`), and by `x.real2complex()`, `x.imag2complex()`,
    `x.exp1j()` on a real LazyTensor x."""

    __array_priority__ = 1001  # numpy arrays and real LazyTensors on the left defer to us
    is_complex = True  # as KeOps
    __hash__ = None  # a symbolic matrix, as LazyTensor

    @property
    def ranges(self):
        """Block-sparse ranges are not supported on complex formulas: None."""
        return None

    @ranges.setter
    def ranges(self, value):
        if value is not None:  # never silently ignored
            raise NotImplementedError("ComplexLazyTensor.ranges = ...: block-sparse ranges are "
                                      "not supported on complex formulas (docs/ranges.md)")

    def __init__(self, re: Part, im: Part):
        for name, part in (("re", re), ("im", im)):
            if part is not None and not isinstance(part, LazyTensor):
                raise TypeError(f"ComplexLazyTensor(re, im): {name} is a {type(part).__name__}; "
                                "expected a real LazyTensor or None (for zero)")
        if re is None and im is None:
            raise ValueError("a ComplexLazyTensor needs a real or an imaginary part")
        if re is not None and im is not None:
            # One variable list for both parts (a variable read by both is passed once).
            im_formula, variables, ni, nj = re._merge(im)
            re = LazyTensor._make(re.formula, variables, ni, nj)
            im = LazyTensor._make(im_formula, variables, ni, nj)
        d_re, d_im = (p.formula.dim if p is not None else 1 for p in (re, im))
        if d_re != d_im and 1 not in (d_re, d_im):
            raise ValueError(
                f"complex LazyTensor: real part dimension {d_re} and imaginary part dimension "
                f"{d_im} do not match; expected equal dimensions or one of them equal to 1"
            )
        self.re, self.im = re, im

    # --- construction -------------------------------------------------------------------------

    @staticmethod
    def _lift(x) -> "ComplexLazyTensor":
        """A ComplexLazyTensor from a complex or real LazyTensor, number or array."""
        if isinstance(x, ComplexLazyTensor):
            return x
        if isinstance(x, LazyTensor):
            return ComplexLazyTensor(x, None)
        if _lt._is_complex(x):
            return complex_operand(x)
        return ComplexLazyTensor(LazyTensor(x), None)

    def _any_part(self) -> LazyTensor:
        return self.re if self.re is not None else self.im

    def _full_parts(self) -> tuple[LazyTensor, LazyTensor]:
        """(re, im) of the complex dimension, with explicit zeros for missing parts."""
        re = self.re if self.re is not None else _zero_like(self.im)
        im = self.im if self.im is not None else _zero_like(self.re)
        D = self.ndim
        # A dimension-1 part of a dimension-D complex (1 + 1j * x) stands for D equal values.
        ones = LazyTensor._make(Const([1.0] * D), (), None, None)
        return tuple(p * ones if p.formula.dim != D else p for p in (re, im))

    # --- shape ----------------------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        """pykeops' ndim: the complex dimension D of the formula's vectors (the kernels see 2D
        real numbers). Not NumPy's number of axes (that is `len(shape)`)."""
        return max(p.formula.dim for p in (self.re, self.im) if p is not None)

    @property
    def ni(self):
        return self._any_part().ni

    @property
    def nj(self):
        return self._any_part().nj

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self._any_part().batch_shape

    @property
    def shape(self) -> tuple[int, ...]:
        grid = self.batch_shape + (self.ni or 1, self.nj or 1)
        return grid if self.ndim == 1 else grid + (self.ndim,)

    @property
    def dtype(self):
        """complex64 or complex128 from the strongly typed variables; None if there are none."""
        real = self._any_part()._dtype()
        return None if real is None else np.dtype(jnp.result_type(real, jnp.complex64))

    def __repr__(self) -> str:
        show = lambda p: "0" if p is None else repr(p.formula)  # noqa: E731
        return (f"jaxkeops ComplexLazyTensor\nreal part: {show(self.re)}\n"
                f"imaginary part: {show(self.im)}\nshape: {self.shape}")

    def __bool__(self):
        raise TypeError("the truth value of a ComplexLazyTensor is ambiguous: it is a symbolic "
                        "(M, N) matrix; reduce it first, e.g. `z.sum(axis=1)`")

    # --- arithmetic -------------------------------------------------------------------------------

    def _check_dims(self, other: "ComplexLazyTensor", symbol: str) -> None:
        a, b = self.ndim, other.ndim
        if a != b and 1 not in (a, b):
            raise ValueError(
                f"complex x {symbol} y: operand dimensions {a} and {b} do not match; expected "
                "equal dimensions or one of them equal to 1"
            )

    def _operand(self, other, symbol: str) -> "ComplexLazyTensor":
        other = ComplexLazyTensor._lift(other)
        self._check_dims(other, symbol)
        return other

    def __add__(self, other):
        w = self._operand(other, "+")
        return ComplexLazyTensor(_add(self.re, w.re), _add(self.im, w.im))

    def __radd__(self, other):
        return ComplexLazyTensor._lift(other) + self

    def __sub__(self, other):
        w = self._operand(other, "-")
        return ComplexLazyTensor(_sub(self.re, w.re), _sub(self.im, w.im))

    def __rsub__(self, other):
        return ComplexLazyTensor._lift(other) - self

    def __neg__(self):
        return ComplexLazyTensor(_neg(self.re), _neg(self.im))

    def __mul__(self, other):
        w = self._operand(other, "*")
        (a, b), (c, d) = (self.re, self.im), (w.re, w.im)
        # (a + bi)(c + di) = (ac - bd) + (ad + bc)i; at least one part survives (a or b, c or d).
        return ComplexLazyTensor(_sub(_mul(a, c), _mul(b, d)), _add(_mul(a, d), _mul(b, c)))

    def __rmul__(self, other):
        return ComplexLazyTensor._lift(other) * self

    def __truediv__(self, other):
        w = self._operand(other, "/")
        if w.im is None:  # division by a real formula: part by part
            return ComplexLazyTensor(_div(self.re, w.re), _div(self.im, w.re))
        # z / w = z conj(w) / |w|^2
        numerator = self * w.conj()
        denominator = _add(_square(w.re), _square(w.im))
        return ComplexLazyTensor(_div(numerator.re, denominator),
                                 _div(numerator.im, denominator))

    def __rtruediv__(self, other):
        return ComplexLazyTensor._lift(other) / self

    def square(self):
        return self * self

    def __pow__(self, n):
        """z ** n for an integer n (repeated products; 1 / z ** -n for n < 0)."""
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n == 0:
            raise TypeError(f"complex z ** n: n is {n!r}; expected a nonzero Python int")
        if n < 0:
            return 1 / self ** (-n)
        result, base = None, self
        while n:  # binary exponentiation: O(log n) products in the formula
            if n & 1:
                result = base if result is None else result * base
            n >>= 1
            if n:
                base = base * base
        return result

    def t(self) -> "ComplexLazyTensor":
        """The transposed symbolic matrix (not conjugated): i and j variables swap."""
        return ComplexLazyTensor(*(None if p is None else p.t() for p in (self.re, self.im)))

    @property
    def T(self) -> "ComplexLazyTensor":
        return self.t()

    # --- complex features (KeOps names) -----------------------------------------------------------

    # Properties, as pykeops' (and NumPy's) `z.real` / `z.imag`.
    @property
    def real(self) -> LazyTensor:
        """The real part, a real LazyTensor."""
        return self._full_parts()[0]

    @property
    def imag(self) -> LazyTensor:
        """The imaginary part, a real LazyTensor."""
        return self._full_parts()[1]

    def conj(self) -> "ComplexLazyTensor":
        return ComplexLazyTensor(self.re, _neg(self.im))

    def abs(self) -> LazyTensor:
        """|z| = sqrt(re² + im²), a real LazyTensor."""
        if self.re is None or self.im is None:
            return self._any_part().abs()
        return (self.re.square() + self.im.square()).sqrt()

    __abs__ = abs

    def angle(self) -> LazyTensor:
        """The argument atan2(im, re) in (-pi, pi], a real LazyTensor."""
        re, im = self._full_parts()
        return im.atan2(re)

    def exp(self) -> "ComplexLazyTensor":
        """exp(re) (cos(im) + i sin(im))."""
        if self.im is None:
            return ComplexLazyTensor(self.re.exp(), None)
        cos, sin = self.im.cos(), self.im.sin()
        if self.re is None:
            return ComplexLazyTensor(cos, sin)
        scale = self.re.exp()
        return ComplexLazyTensor(scale * cos, scale * sin)

    def exp1j(self) -> "ComplexLazyTensor":
        """exp(1j z) = exp(-im) (cos(re) + i sin(re))."""
        return ComplexLazyTensor(_neg(self.im), self.re).exp()

    def real2complex(self):
        raise TypeError("real2complex: this LazyTensor is already complex; real2complex turns a "
                        "real LazyTensor x into x + 0j")

    def imag2complex(self):
        raise TypeError("imag2complex: this LazyTensor is already complex; imag2complex turns a "
                        "real LazyTensor x into 1j * x")

    # --- reductions -------------------------------------------------------------------------------

    def sum(self, axis: int | None = -1, dim: int | None = None, keepdim: bool | None = None,
            **options):
        """`sum(-1)`: the sum of the D coordinates (a complex LazyTensor of dimension 1);
        `sum(0)` / `sum(1)`: the Sum reduction over i / over j, a complex array (N, D) / (M, D).
        Accumulated in float64, as the real Sum. `keepdim` and `options` as LazyTensor.sum,
        except `out=` and `call=False`."""
        if dim is not None:
            axis = dim
        if axis in (-1, len(self.batch_shape) + 2):
            return ComplexLazyTensor(*(None if p is None else p.sum(-1, keepdim=keepdim, **options)
                                       for p in (self.re, self.im)))
        if keepdim is not None:
            raise TypeError("sum: keepdim applies to the feature axis (sum(-1)) only")
        check_complex_options("sum", "Sum", options)
        return self._reduce_packed(lambda packed: packed.sum(axis, **options))

    def _reduce_packed(self, reduce_real):
        """`reduce_real` (a reduction linear in its formula) applied to the real formula
        Concat(re, im), its output reassembled into a complex array."""
        parts = [p for p in (self.re, self.im) if p is not None]
        packed = parts[0] if len(parts) == 1 else parts[0].concat(parts[1])
        try:
            packed._dtype()  # the operands' shared dtype, which the reduction checks too
        except TypeError as e:
            raise TypeError(f"{e} (a complex64 operand counts as float32, a complex128 one as "
                            "float64)") from None
        out = reduce_real(packed)
        split = parts[0].formula.dim
        halves = [out[..., :split], out[..., split:]] if len(parts) == 2 else [out]
        full = out.shape[:-1] + (self.ndim,)
        values = iter(jnp.broadcast_to(h, full) for h in halves)
        re = next(values) if self.re is not None else None
        im = next(values) if self.im is not None else None
        zeros = jnp.zeros(full, out.dtype)
        return jax.lax.complex(zeros if re is None else re, zeros if im is None else im)

    def __matmul__(self, v):
        """`K @ v` for a complex scalar K (M, N) and v (real or complex) shaped (N,) or (N, E),
        with K's batch dims in front: the Sum over j of K_ij v_j, a complex array."""
        if self.ndim != 1:
            raise ValueError(
                f"K @ v: K has shape {self.shape}; the product needs a scalar LazyTensor (M, N) "
                "(its formula dimension must be 1)"
            )
        if isinstance(v, (LazyTensor, ComplexLazyTensor)) or not _lt._is_array(v):
            raise TypeError(f"K @ v: v is a {type(v).__name__}; expected a jax or NumPy array "
                            "shaped (N,) or (N, E)")
        v = jnp.asarray(v)
        k, n = len(self.batch_shape), self.nj
        if (v.ndim not in (k + 1, k + 2) or (n is not None and v.shape[k] != n)
                or any(d not in (1, full) for d, full in zip(v.shape[:k], self.batch_shape))
                or v.size == 0):
            batch = "".join(f"{d}, " for d in self.batch_shape)
            size = "N" if n is None else str(n)
            raise ValueError(
                f"K @ v: v has shape {tuple(v.shape)}; expected ({batch}{size},) or "
                f"({batch}{size}, E) for K of shape {self.shape} (batch dims equal to K's or 1)"
            )
        vector = v.ndim == k + 1
        columns = v[..., None] if vector else v  # (*B, N, E)
        out = (self * ComplexLazyTensor._lift(columns[..., None, :, :])).sum(axis=k + 1)
        return out[..., 0] if vector else out

    def _unsupported(self, name: str):
        def refuse(*args, **kwargs):
            raise TypeError(
                f"{name}: not defined for a complex LazyTensor (complex formulas have no order); "
                "the reductions of complex formulas are sum(axis) and K @ v; reduce a real "
                "formula such as z.real, z.imag, z.abs() or z.angle() instead"
            )
        return refuse

    def __getattr__(self, name: str):
        # The real LazyTensor's order-based reductions and solve, refused with their name.
        if name in _UNSUPPORTED:
            return self._unsupported(name)
        raise AttributeError(f"'ComplexLazyTensor' object has no attribute {name!r}")


_UNSUPPORTED = ("logsumexp", "sumsoftmaxweight", "min", "max", "argmin", "argmax", "min_argmin",
                "max_argmax", "Kmin", "argKmin", "Kmin_argKmin", "solve")


def complex_operand(x, axis: int | None = None) -> ComplexLazyTensor:
    """A complex variable (or a constant, for a Python complex number), with LazyTensor's shape
    rules: the complex array is split into real and imaginary halves of one real operand."""
    if isinstance(x, (complex, np.complexfloating)) and not hasattr(x, "__jax_array__"):
        # Python or NumPy complex scalar: weakly typed parts, as real Python numbers.
        z = complex(x)
        if axis is not None:
            raise ValueError("axis is meaningless for a Python number")
        re = None if z.real == 0 and z.imag != 0 else LazyTensor(z.real)
        im = None if z.imag == 0 else LazyTensor(z.imag)
        return ComplexLazyTensor(re, im)
    if not _lt._is_array(x):
        raise TypeError(f"complex LazyTensor argument is a {type(x).__name__}; expected a "
                        "complex array or number")
    x = jnp.asarray(x)
    if np.dtype(x.dtype) not in _COMPLEX_DTYPES:
        raise TypeError(f"complex LazyTensor argument has dtype {x.dtype}; expected complex64 "
                        "or complex128")
    if x.ndim <= 1:
        x = x.reshape(-1)
    if x.shape[-1] == 0:
        raise ValueError(f"complex LazyTensor argument of shape {tuple(x.shape)}: the feature "
                         "dimension D must be at least 1")
    D = int(x.shape[-1])
    packed = jnp.concatenate([jnp.real(x), jnp.imag(x)], axis=-1)
    try:
        base = LazyTensor(packed, axis=axis)
    except ValueError as e:
        raise ValueError(f"complex LazyTensor argument of shape {tuple(x.shape)} (seen as a real "
                         f"array of shape {tuple(packed.shape)}): {e}") from None
    return ComplexLazyTensor(base.extract(0, D), base.extract(D, D))


def complex_parameter(p) -> ComplexLazyTensor:
    """`Pm(p)` for a complex number or a complex 0-d / 1-d array."""
    if isinstance(p, (complex, np.complexfloating)) and not _lt._is_array(p):
        return complex_operand(p)
    p = jnp.asarray(p)
    if p.ndim > 1:
        raise ValueError(f"Pm(p): p has shape {p.shape}; expected a number, 0-d or 1-d array")
    return complex_operand(p.reshape(-1))


def check_complex_options(method: str, reduction: str, options: dict) -> None:
    """pykeops' keywords as for real reductions (jaxkeops/call_options.py), but for `out=` and
    `call=False`, which would see the real formula Concat(re, im) and not the complex result."""
    check_options(method, reduction, options)
    if options.get("out") is not None or options.get("call", True) is not True:
        raise TypeError(f"{method}: out= and call=False are not supported for complex formulas "
                        "(use the returned complex array; call the reduction with arrays)")


def sumsoftmaxweight(scores: LazyTensor, weight: ComplexLazyTensor, axis: int, method: str,
                     options: dict):
    """Σ_j exp(S_ij) w_ij / Σ_j exp(S_ij) for real scores S and a complex weight w: linear in w,
    so one real pass over the weight Concat(re, im) gives both parts."""
    check_complex_options(method, "SumSoftMaxWeight", options)
    return weight._reduce_packed(
        lambda packed: scores._reduce_weighted("SumSoftMaxWeight", packed, axis, method,
                                               options)[0])


def mixed_binary(x: LazyTensor, other, name: str, reverse: bool):
    """A real LazyTensor x combined with a complex operand by the real op `name`."""
    z, w = ComplexLazyTensor(x, None), ComplexLazyTensor._lift(other)
    a, b = (w, z) if reverse else (z, w)
    if name == "Add":
        return a + b
    if name == "Subtract":
        return a - b
    if name == "Mult":
        return a * b
    if name == "Divide":
        return a / b
    raise TypeError(f"{name}: not defined between a real and a complex LazyTensor; complex "
                    "formulas support + - * / and the complex features (real, imag, conj, "
                    "angle, abs, exp, exp1j, sum)")


# --- ComplexLazyTensor as a pytree: the shared variables' arrays are the leaves ------------------


def _flatten(z: ComplexLazyTensor):
    part = z._any_part()
    formulas = tuple(None if p is None else p.formula for p in (z.re, z.im))
    leaves, (_, cats, weak, n_ranges) = _lt._flatten_lazy_tensor(part)
    assert n_ranges == 0, "the parts of a complex LazyTensor carry no ranges"
    return leaves, (formulas, cats, weak)


def _unflatten(aux, leaves) -> ComplexLazyTensor:
    formulas, cats, weak = aux
    parts = []
    shared = None
    for formula in formulas:
        if formula is None:
            parts.append(None)
            continue
        if shared is None:
            shared = _lt._unflatten_lazy_tensor((formula, cats, weak, 0), leaves)
            parts.append(shared)
        else:
            part = LazyTensor()
            part.__dict__.update(shared.__dict__)  # same variables, other formula
            part.formula = formula
            parts.append(part)
    out = object.__new__(ComplexLazyTensor)
    out.re, out.im = parts
    return out


jax.tree_util.register_pytree_node(ComplexLazyTensor, _flatten, _unflatten)
