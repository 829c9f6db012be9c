"""jaxkeops: KeOps-style symbolic matrices for JAX.

Build a formula over i variables, j variables and parameters with `LazyTensor` / `Vi` / `Vj` /
`Pm`, then reduce it over i (`axis=0`) or j (`axis=1`); the M×N matrix is never stored.
"""

from jaxkeops import lowering as _lowering  # noqa: F401  (registers the FFI targets and lowerings)
from jaxkeops import cluster
from jaxkeops.explain import explain
from jaxkeops.lazy_tensor import LazyTensor, Pm, Vi, Vj
from jaxkeops.primitive import keops_reduce, keops_reduce_p
from jaxkeops.lineax_adapter import lineax_operator
from jaxkeops.solve import SolveInfo
from jaxkeops.export import export_disabled_checks
from jaxkeops.cpu_threads import cpu_threads, set_cpu_threads
from jaxkeops.sharded_reduce import sharded_reduce

__version__ = "0.1.0"

__all__ = ["LazyTensor", "Vi", "Vj", "Pm", "keops_reduce", "keops_reduce_p", "SolveInfo",
           "lineax_operator", "export_disabled_checks", "explain", "cpu_threads",
           "set_cpu_threads", "sharded_reduce", "cluster"]
