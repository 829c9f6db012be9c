"""How many threads the CPU executor runs each reduction on.

By default a reduction on a CPU device uses every core: the thread XLA calls it from plus a
persistent pool of workers (hardware concurrency − 1), shared by all the CPU devices of the
process. Several processes per host, or several forced host devices per process, each running
reductions at once, would then oversubscribe the cores; set the count lower:

- the environment variable ``JAXKEOPS_NUM_THREADS`` (a positive integer), read once, when
  jaxkeops is imported;
- or `set_cpu_threads(n)` at any time (it takes effect for the reductions that start afterwards).

With a count of 1 a reduction runs entirely on the thread that XLA calls it from, so n CPU
devices of one process running at once use n cores. Results do not depend on the count beyond
float rounding: the count changes how the reduced axis is split between threads, and the
partial results are combined in index order, so argmin / argKmin indices (ties to the lowest
index) are the same for every count.
"""

from __future__ import annotations

import os

from jaxkeops import _native

ENV_VAR = "JAXKEOPS_NUM_THREADS"


def cpu_threads() -> int:
    """The threads one CPU reduction runs on (the calling thread plus the pool's workers)."""
    return int(_native.cpu.num_threads())


def set_cpu_threads(n: int) -> int:
    """Runs each later CPU reduction on `n` threads (n >= 1); returns the previous count."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_cpu_threads: n must be a positive int, got {n!r}")
    return int(_native.cpu.set_num_threads(n))


def _threads_from_environment(value: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"jaxkeops: the environment variable {ENV_VAR} must be a positive "
                         f"integer (threads per CPU reduction), got {value!r}")
    return n


def apply_environment() -> None:
    """Applies JAXKEOPS_NUM_THREADS when it is set (and not empty); called at import."""
    value = os.environ.get(ENV_VAR, "")
    if value.strip():
        set_cpu_threads(_threads_from_environment(value))


apply_environment()
