"""jax.export of functions that call jaxkeops reductions.

`jax.export.export` refuses custom calls it does not know to be stable unless told otherwise:
pass `disabled_checks=jaxkeops.export_disabled_checks()`. Shapes may be symbolic
(`jax.export.symbolic_shape`): M, N and batch dims travel as runtime sizes, feature dims D must
be concrete. The process that deserializes and calls the function must `import jaxkeops` first
(it registers the native FFI targets); without it XLA fails with "No registered implementation
for FFI custom call to jaxkeops_reduce" (or `jaxkeops_fused`).
"""

from __future__ import annotations

from jax import export as _jax_export

# Every FFI target a jaxkeops lowering may emit (CPU and CUDA).
FFI_TARGETS = ("jaxkeops_reduce", "jaxkeops_fused")


def export_disabled_checks() -> list:
    """The `disabled_checks` to pass to `jax.export.export` for functions using jaxkeops."""
    return [_jax_export.DisabledSafetyCheck.custom_call(name) for name in FFI_TARGETS]
