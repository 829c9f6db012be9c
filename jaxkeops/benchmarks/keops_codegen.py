"""The CUDA source KeOps 2.3 generates for a formula, obtained without a GPU.

keopscore builds the source text of its 1D GPU reduction (`GpuReduc1D.get_code`) before any
nvrtc call; only its CUDA configuration must believe a GPU exists. We stub that configuration,
build the text and hand it back: it is KeOps's code, generated at benchmark time into memory or
a temporary folder, never stored in this project.
"""

from __future__ import annotations

import contextlib
import os
import sys

# The reference workloads, D = 3 float32 (keopscore's formula syntax; pykeops builds the same):
# Gaussian sum, pykeops's logsumexp (Max_SumShiftExp), argKmin K = 10.
FORMULAS = {
    "gaussian": ("Sum_Reduction(Exp(Minus(SqDist(Var(0,3,0),Var(1,3,1))))*Var(2,1,1),0)", 3,
                 "block_sum"),
    "logsumexp": ("Max_SumShiftExp_Reduction(Minus(SqDist(Var(0,3,0),Var(1,3,1))),0)", 2,
                  "block_sum"),
    "argkmin": ("ArgKMin_Reduction(SqDist(Var(0,3,0),Var(1,3,1)),10,0)", 2, "direct_sum"),
}


def keopscore_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("keopscore")
    except Exception:  # noqa: BLE001 - not installed
        return None


def _cuda_include() -> str:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isdir(os.path.join(root, "include")):
            return os.path.join(root, "include")
    return "/usr/local/cuda/include"


@contextlib.contextmanager
def _quiet():
    """keopscore prints warnings about the missing CUDA libraries on import."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def generate(name: str) -> str:
    """KeOps 2.3's CUDA source of one reference formula (a key of FORMULAS)."""
    with _quiet():
        import keopscore  # noqa: F401  (sets up keopscore.config)
        config = sys.modules["keopscore.config"].cuda_config
        # Make keopscore believe one sm_90-class GPU exists; nothing is compiled or loaded.
        config.get_cuda_version = lambda *a, **k: 13000
        config.get_use_cuda = lambda *a, **k: True
        config.get_gpu_props = lambda *a, **k: (
            1, "-DMAXIDGPU=0 -DMAXTHREADSPERBLOCK0=1024 -DSHAREDMEMPERBLOCK0=49152")
        config.get_nvrtc_flags = lambda *a, **k: ""
        config.get_cuda_include_path = lambda *a, **k: _cuda_include()
        from keopscore.mapreduce.gpu.GpuReduc1D import GpuReduc1D
        from keopscore.mapreduce.MapReduce import MapReduce
        formula, nargs, sum_scheme = FORMULAS[name]
        reduction = GpuReduc1D.__new__(GpuReduc1D)
        # (formula, aliases, nargs, dtype, dtypeacc, sum_scheme, tagHostDevice=1 (device),
        #  tagCpuGpu=1 (GPU), tag1D2D=0 (1D), use_half=0, use_fast_math (a compile flag in
        #  KeOps: the source does not depend on it), device_id=0)
        MapReduce.__init__(reduction, formula, [], nargs, "float", "float", sum_scheme, 1, 1, 0,
                           0, 1, 0)
        reduction.dimy = reduction.varloader.dimy
        reduction.get_code()
        return reduction.code


def bytes_per_j(name: str) -> int:
    """Bytes of one j's data in KeOps's shared-memory tile (float32): its dimy."""
    return {"gaussian": 4 * (3 + 1), "logsumexp": 4 * 3, "argkmin": 4 * 3}[name]
