"""Load the compiled extensions and register their FFI targets with XLA.

The CPU module is always built; the CUDA module is optional. A module built against XLA FFI
headers newer than the running jaxlib would take the backend down when called, so the API
versions are compared here, at import, and a mismatch is a clear ImportError.
"""

from __future__ import annotations

import importlib
import warnings

import jax
import jaxlib

REDUCE_TARGET = "jaxkeops_reduce"


def _jaxlib_ffi_api_version(version: str) -> tuple[int, int]:
    """The XLA FFI API version a jaxlib release ships (checked facts, see shared/DESIGN.md)."""
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    if parts <= (0, 8, 0):
        return (0, 1)
    if parts <= (0, 9, 0):
        return (0, 2)
    return (0, 3)


def _check_api(module, running: tuple[int, int]) -> None:
    built = tuple(module.ffi_api_version())
    if built[0] != running[0] or built[1] > running[1]:
        raise ImportError(
            f"jaxkeops' extension {module.__name__} was built against XLA FFI API "
            f"{built[0]}.{built[1]} (jaxlib {module.jaxlib_build_version}), but the running "
            f"jaxlib {jaxlib.__version__} provides FFI API {running[0]}.{running[1]}. "
            "Rebuild jaxkeops against this jaxlib (pip install --force-reinstall --no-deps . "
            "in its source checkout)."
        )


def _load(name: str):
    try:
        return importlib.import_module(f"jaxkeops.{name}")
    except ImportError:
        return None


cpu = _load("_jaxkeops_cpu")
if cpu is None:
    raise ImportError(
        "jaxkeops' compiled CPU extension (jaxkeops._jaxkeops_cpu) is missing from "
        f"{__file__.rsplit('/', 1)[0]}. Install the package with pip so that it gets built "
        "(pip install .); if it is installed, you are importing an unbuilt source checkout "
        "instead (e.g. `python -m pytest` run from the repository root puts it first on "
        "sys.path): run `pytest` instead, or install in editable mode (pip install -e .)."
    )
_running_api = _jaxlib_ffi_api_version(jaxlib.__version__)
_check_api(cpu, _running_api)
for _name, _capsule in cpu.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")

# The CUDA module is optional: absent when no nvcc was found at build time. A module that exists
# but fails to load is reported, not silently ignored.
try:
    cuda = importlib.import_module("jaxkeops._jaxkeops_cuda")
    CUDA_STATUS = "built"
except ModuleNotFoundError:
    cuda = None
    CUDA_STATUS = ("not built (no nvcc when jaxkeops was installed, or JAXKEOPS_CUDA=OFF); "
                   "GPU reductions use the pure-JAX chunked fallback")
except ImportError as _error:
    cuda = None
    CUDA_STATUS = f"built but failed to load ({_error}); GPU reductions use the pure-JAX fallback"
    warnings.warn(f"jaxkeops: the CUDA executor {CUDA_STATUS}", RuntimeWarning, stacklevel=2)
if cuda is not None:
    _check_api(cuda, _running_api)
    for _name, _capsule in cuda.registrations().items():
        jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")


def has_cuda() -> bool:
    """Whether jaxkeops' CUDA module was built and loaded (the machine may still have no GPU);
    `jaxkeops._native.CUDA_STATUS` says why not, `python -m jaxkeops.selftest` what runs where."""
    return cuda is not None


_warned_no_cuda = False


def warn_no_cuda() -> None:
    """Once per process: a reduction is lowered for a GPU without the CUDA executor."""
    global _warned_no_cuda
    if not _warned_no_cuda:
        _warned_no_cuda = True
        warnings.warn(f"jaxkeops: lowering for a CUDA GPU, but the CUDA executor is {CUDA_STATUS}. "
                      "`python -m jaxkeops.selftest` shows what runs on each device; the README's "
                      "Installation section says how to build the CUDA module (nvcc at install "
                      "time).", RuntimeWarning, stacklevel=2)
