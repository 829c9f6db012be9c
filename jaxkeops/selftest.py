"""`python -m jaxkeops.selftest`: is this installation working, and on which devices?

Prints which compiled modules loaded, which devices jax sees, and for each device runs a few small
reductions (a Gaussian kernel sum, a logsumexp of a less common formula, K nearest neighbours),
each checked against a dense float64 NumPy reference, and names the kernel that ran it. Exits
with status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import jaxkeops
from jaxkeops import Pm, Vi, Vj, _native, explain

INSTALL_GUIDE = "the README's Installation section"
HOW_TO_GET_CUDA = (
    "To get it, build jaxkeops from source on a machine with the CUDA toolkit's nvcc on the PATH "
    "(pip install -v . in a checkout; the log says 'jaxkeops: CUDA executor enabled'), "
    f"with jax's CUDA plugin installed (the cuda13 or cuda12 extra): see {INSTALL_GUIDE}.")

# Sizes that are not multiples of the kernels' tiles.
M, N, D = 37, 53, 3
TOLERANCE = 1e-4  # float32 results against float64 references of order 1


@dataclass(frozen=True)
class Check:
    """One reduction run on a device, and the dense float64 NumPy value it must match."""

    name: str
    function: Callable  # (x, y, b) -> result, traced by jax.jit
    reference: Callable  # (x, y, b) as float64 numpy arrays -> the expected value
    # What is compared with the reference: the result itself, or a value computed from it
    # (for indices: the distances they pick, so that near-ties in float32 do not matter).
    compared: Callable = lambda result, x, y, b: result


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _gaussian_sum(x, y, b):
    return ((-Vi(x).sqdist(Vj(y)) / Pm(jnp.float32(0.7)) ** 2).exp() * Vj(b)).sum(axis=1)


def _cosine_logsumexp(x, y, b):
    return ((Vi(x) | Vj(y)).cos() + Vj(b[:, :1])).logsumexp(axis=1)


def _nearest_three(x, y, b):
    return Vi(x).sqdist(Vj(y)).argKmin(3, axis=1)


def _dense_cosine_logsumexp(x, y, b):
    scores = np.cos(x @ y.T) + b[None, :, 0]
    top = scores.max(axis=1, keepdims=True)
    return top + np.log(np.exp(scores - top).sum(axis=1, keepdims=True))


def _picked_distances(indices, x, y, b):
    if indices.dtype.kind not in "iu" or indices.min() < 0 or indices.max() >= len(y):
        raise ValueError(f"argKmin returned {indices.dtype} indices outside [0, {len(y)})")
    return np.take_along_axis(_sqdist(x, y), indices.astype(np.int64), axis=1)


CHECKS = (
    Check("Gaussian kernel sum", _gaussian_sum,
          lambda x, y, b: np.exp(-_sqdist(x, y) / 0.7 ** 2) @ b),
    Check("logsumexp of cos(x·y) + b", _cosine_logsumexp, _dense_cosine_logsumexp),
    Check("3 nearest neighbours (argKmin)", _nearest_three,
          lambda x, y, b: np.sort(_sqdist(x, y), axis=1)[:, :3], _picked_distances),
)


def _kernel_platform(device) -> str | None:
    """The jaxkeops lowering platform of a jax device: "cpu", "cuda", or None (pure-JAX)."""
    if device.platform == "cpu":
        return "cpu"
    if device.platform in ("gpu", "cuda"):  # jax names CUDA and ROCm devices "gpu"
        rocm = "rocm" in str(getattr(device.client, "platform_version", "")).lower()
        return None if rocm else "cuda"
    return None


def _runs_on(check: Check, args, device) -> str:
    """What executes the check on the device: a fused family, the interpreter or the fallback."""
    platform = _kernel_platform(device)
    if platform is None or (platform == "cuda" and not _native.has_cuda()):
        return "pure-JAX fallback (no jaxkeops kernel for this device)"
    kernels = sorted({record.kernel for record in explain(check.function, *args,
                                                          platform=platform)})
    return ", ".join(kernels)


def _run_check(check: Check, device, data: tuple[np.ndarray, ...]) -> tuple[bool, str]:
    """Runs the check on the device (float32 inputs); compares with the float64 reference."""
    x, y, b = (jax.device_put(a, device) for a in data)
    with warnings.catch_warnings():
        # The selftest reports a missing CUDA module itself, above the checks.
        warnings.filterwarnings("ignore", message="jaxkeops: lowering for a CUDA GPU")
        result = np.asarray(jax.jit(check.function)(x, y, b))
    data64 = tuple(a.astype(np.float64) for a in data)
    expected = check.reference(*data64)
    if result.shape != expected.shape:
        return False, f"result shaped {result.shape}, expected {expected.shape}"
    compared = check.compared(result, *data64)
    error = float(np.max(np.abs(compared - expected) / (1 + np.abs(expected))))
    return error <= TOLERANCE, f"max relative error {error:.1e} (tolerance {TOLERANCE:.0e})"


def _module_lines() -> list[str]:
    cpu = _native.cpu
    lines = [
        f"jaxkeops {jaxkeops.__version__} from {jaxkeops.__file__.rsplit('/', 1)[0]}",
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}",
        f"CPU module: loaded ({cpu.__file__}), XLA FFI API "
        f"{'.'.join(map(str, cpu.ffi_api_version()))}, built against jaxlib "
        f"{cpu.jaxlib_build_version}",
    ]
    if _native.has_cuda():
        lines.append(f"CUDA module: loaded ({_native.cuda.__file__})")
    else:
        lines.append(f"CUDA module: {_native.CUDA_STATUS}.")
        lines.append(f"  {HOW_TO_GET_CUDA}")
    return lines


def main() -> int:
    print("\n".join(_module_lines()))
    devices = jax.devices()
    print(f"Devices jax sees (default backend {jax.default_backend()}): "
          + ", ".join(f"{d} [{d.platform}]" for d in devices))
    if any(_kernel_platform(d) == "cuda" for d in devices) and not _native.has_cuda():
        print("WARNING: jax sees a GPU but the jaxkeops CUDA module is missing: reductions on it "
              "run the pure-JAX fallback, correct but much slower. " + HOW_TO_GET_CUDA)
    rng = np.random.default_rng()
    data = tuple(rng.normal(size=shape).astype(np.float32) for shape in ((M, D), (N, D), (N, 2)))
    failures = 0
    for device in devices:
        for check in CHECKS:
            try:
                runs_on = _runs_on(check, data, device)
                passed, detail = _run_check(check, device, data)
            except Exception as error:  # a broken installation: report it, keep checking
                passed, runs_on, detail = False, "?", f"{type(error).__name__}: {error}"
            failures += not passed
            print(f"[{'PASS' if passed else 'FAIL'}] {device}: {check.name}, {M} x {N}, "
                  f"kernel: {runs_on}; {detail}")
    if failures:
        print(f"selftest FAILED: {failures} check(s) failed")
        return 1
    print(f"selftest passed: {len(CHECKS)} reductions on each of {len(devices)} device(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
