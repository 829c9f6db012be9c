"""pykeops' keyword arguments of reductions and Genred, and what jaxkeops does with each.

Ported code passes them; none is a bare TypeError here. Each has a meaning in jaxkeops, or warns
once (per process and option value) saying what jaxkeops does instead:

- `backend` ("auto", "CPU", "GPU", "GPU_1D", "GPU_2D", with "_host" / "_device" variants):
  jaxkeops runs where JAX runs the computation (the device of the arrays, jit's placement);
  "auto" is that, any other value warns.
- `device_id` (-1: the default device): other values warn; place the arrays with
  `jax.device_put(x, jax.devices()[k])` instead.
- `dtype_acc` ("auto", "float16", "float32", "float64") and `use_double_acc` (bool): jaxkeops
  accumulates Sum-type reductions (Sum, LogSumExp, SumSoftMaxWeight and their weighted forms) in
  float64 across tiles, whatever the input dtype: "auto", "float64" and use_double_acc=True are
  what it does; "float32" / "float16" warn (the accumulation stays float64). KeOps' rules are
  kept: not both options, and not on min/max-type reductions.
- `sum_scheme` ("auto", "block_sum", "direct_sum", "kahan_scheme"): "auto" and "block_sum" are
  jaxkeops' scheme (per-tile sums added in float64); the other two warn. Only for Sum-type
  reductions, as KeOps.
- `enable_chunks`, `use_fast_math`, `rec_multVar_highdim`: switches of KeOps' code generator
  (jaxkeops compiles no code at run time): their KeOps defaults (True, True, False) are accepted
  silently, other values warn.
- `out`: a writable NumPy array of the result's shape and dtype is filled with the result (outside
  jit; the result is also returned); anything else raises, JAX arrays being immutable.
- `call` (default True): False returns the reduction as a callable (as pykeops), computed when
  called with arrays.
- `ranges`: block-sparse reductions (jaxkeops/ranges.py) take it on the LazyTensor reduction
  methods, `K @ v` and Genred, before these checks; anywhere else it raises
  NotImplementedError, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

BACKENDS = ("auto", "CPU", "GPU", "GPU_1D", "GPU_1D_device", "GPU_1D_host", "GPU_2D",
            "GPU_2D_device", "GPU_2D_host")
DTYPE_ACCS = ("auto", "float16", "float32", "float64")
SUM_SCHEMES = ("auto", "block_sum", "direct_sum", "kahan_scheme")
# Reductions that sum (KeOps' Sum and Max_SumShiftExp families): the accumulation options apply.
SUM_REDUCTIONS = ("Sum", "LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight", "Max_SumShiftExp",
                  "Max_SumShiftExpWeight")
_CODEGEN_DEFAULTS = {"enable_chunks": True, "use_fast_math": True, "rec_multVar_highdim": False}
# Genred/KernelSolve construction arguments (the rest are call arguments).
INIT_OPTIONS = ("dtype_acc", "use_double_acc", "sum_scheme", *_CODEGEN_DEFAULTS)
CALL_OPTIONS = ("backend", "device_id", "out", "ranges")
ALL_OPTIONS = INIT_OPTIONS + CALL_OPTIONS + ("call",)

RANGES_MESSAGE = (
    "ranges= (block-sparse reductions) is not supported by this call; the real LazyTensor's "
    "reduction methods, `K @ v` and Genred take it (docs/ranges.md)."
)

_warned: set[tuple[str, str]] = set()


def warn_once(option: str, value, message: str) -> None:
    key = (option, repr(value))
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"jaxkeops: {option}={value!r}: {message}", UserWarning, stacklevel=4)


@dataclasses.dataclass(frozen=True)
class CallOptions:
    call: bool = True
    out: object = None

    def deliver(self, method: str, result):
        """Fill `out` (a writable NumPy array) with the result, and return the result."""
        if self.out is None:
            return result
        if isinstance(result, tuple):
            raise TypeError(f"{method}: out= takes one array, but this reduction returns "
                            f"{len(result)}")
        if not isinstance(self.out, np.ndarray) or not self.out.flags.writeable:
            raise TypeError(
                f"{method}: out is a {type(self.out).__name__}; expected a writable NumPy array "
                "(JAX arrays are immutable: use the returned array instead of out=)")
        try:
            value = np.asarray(result)
        except Exception:  # a tracer: no value to write
            raise TypeError(f"{method}: out= cannot be filled inside jax.jit/vmap/grad (the "
                            "result is traced); use the returned array") from None
        if self.out.shape != value.shape or self.out.dtype != value.dtype:
            raise ValueError(f"{method}: out has shape {self.out.shape} and dtype "
                             f"{self.out.dtype}; expected {value.shape} and {value.dtype}")
        np.copyto(self.out, value)
        return result


def check_options(method: str, reduction: str, options: dict) -> CallOptions:
    """Validate pykeops' keywords for the reduction `reduction` called through `method`; warn
    once where jaxkeops does something else; return what jaxkeops acts on (call, out)."""
    unknown = sorted(set(options) - set(ALL_OPTIONS))
    if unknown:
        raise TypeError(f"{method}: unexpected keyword argument(s) {', '.join(map(repr, unknown))};"
                        f" expected pykeops' options {', '.join(ALL_OPTIONS)}")
    if options.get("ranges") is not None:
        raise NotImplementedError(f"{method}: {RANGES_MESSAGE}")
    backend = options.get("backend", "auto")
    if backend is None:
        backend = "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{method}: backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        warn_once("backend", backend, "jaxkeops runs on the device JAX places the computation on "
                  "(the arrays' device, jit's placement); the backend option has no effect")
    device_id = options.get("device_id", -1)
    if device_id is not None and device_id != -1:
        warn_once("device_id", device_id, "jaxkeops runs on the device of the arrays; place them "
                  "with jax.device_put(x, jax.devices()[k]) (device_id has no effect)")
    _check_accumulation(method, reduction, options)
    for option, default in _CODEGEN_DEFAULTS.items():
        value = options.get(option, default)
        if value is not None and bool(value) != default:
            warn_once(option, value, "a switch of KeOps' code generator; jaxkeops compiles no "
                      "code at run time and this option has no effect")
    call = options.get("call", True)
    if not isinstance(call, bool):
        raise TypeError(f"{method}: call={call!r}; expected True or False")
    return CallOptions(call=call, out=options.get("out"))


def _check_accumulation(method: str, reduction: str, options: dict) -> None:
    dtype_acc = options.get("dtype_acc", "auto")
    use_double_acc = bool(options.get("use_double_acc", False))
    sum_scheme = options.get("sum_scheme", "auto")
    if dtype_acc not in DTYPE_ACCS:
        raise ValueError(f"{method}: dtype_acc={dtype_acc!r}; expected one of {', '.join(DTYPE_ACCS)}")
    if sum_scheme not in SUM_SCHEMES:
        raise ValueError(f"{method}: sum_scheme={sum_scheme!r}; expected one of "
                         f"{', '.join(SUM_SCHEMES)}")
    if dtype_acc != "auto" and use_double_acc:
        raise ValueError(f"{method}: dtype_acc={dtype_acc!r} and use_double_acc=True; expected at "
                         "most one of the two (as KeOps)")
    is_sum = reduction in SUM_REDUCTIONS
    if not is_sum and (dtype_acc != "auto" or use_double_acc):
        raise ValueError(f"{method}: the accumulation dtype applies to sum-type reductions only; "
                         f"expected dtype_acc='auto' for {reduction} (as KeOps)")
    if not is_sum and sum_scheme not in ("auto", "direct_sum"):
        raise ValueError(f"{method}: sum_scheme={sum_scheme!r} applies to sum-type reductions "
                         f"only; expected 'auto' or 'direct_sum' for {reduction} (as KeOps)")
    if dtype_acc in ("float16", "float32"):
        warn_once("dtype_acc", dtype_acc, "jaxkeops accumulates sum-type reductions in float64 "
                  "across tiles; the accumulation stays float64")
    if is_sum and sum_scheme in ("direct_sum", "kahan_scheme"):
        warn_once("sum_scheme", sum_scheme, "jaxkeops adds per-tile sums in float64 (a block "
                  "sum); that is the scheme used")
