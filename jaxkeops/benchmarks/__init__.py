"""Benchmarks: `python -m jaxkeops.benchmarks [name ...]` (see docs/benchmarks.md).

Each benchmark times jaxkeops against baselines computed in the same run (dense jnp, row-chunked
jnp with `lax.map`, pykeops when installed), alternating the candidates and reporting medians,
so that ratios hold even on a noisy machine.
"""
