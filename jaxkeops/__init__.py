"""jaxkeops: KeOps-style symbolic matrices for JAX.

Build a formula over i variables, j variables and parameters with `LazyTensor` / `Vi` / `Vj` /
`Pm`, then reduce it over i (`axis=0`) or j (`axis=1`); the M×N matrix is never stored. KeOps'
formula strings go through `Genred` / `KernelSolve` into the same formulas.
"""

from jaxkeops import lowering as _lowering  # noqa: F401  (registers the FFI targets and lowerings)
from jaxkeops import cluster
from jaxkeops.explain import explain
from jaxkeops.genred import (Genred, KernelSolve, generic_argkmin, generic_argmin,
                             generic_logsumexp, generic_sum)
from jaxkeops.lazy_tensor import LazyTensor, Pm, Vi, Vj
from jaxkeops.complex_lazy import ComplexLazyTensor
from jaxkeops.primitive import keops_reduce, keops_reduce_p
from jaxkeops.lineax_adapter import lineax_operator
from jaxkeops.solve import SolveInfo
from jaxkeops.export import export_disabled_checks
from jaxkeops.cpu_threads import cpu_threads, set_cpu_threads
from jaxkeops.sharded_reduce import sharded_reduce
from jaxkeops._native import has_cuda

__version__ = "0.1.0"

__all__ = ["LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm", "keops_reduce", "keops_reduce_p",
           "SolveInfo", "lineax_operator", "export_disabled_checks", "explain", "cpu_threads",
           "set_cpu_threads", "sharded_reduce", "has_cuda", "Genred", "KernelSolve",
           "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin",
           "cluster"]
