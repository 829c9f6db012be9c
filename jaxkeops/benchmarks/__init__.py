"""Benchmarks: `python -m jaxkeops.benchmarks [name ...] [--size M N] [--repeats R]`.

Each benchmark times jaxkeops against baselines computed in the same run (dense jnp, row-chunked
jnp with `lax.map`), alternating the candidates and reporting medians, so that ratios hold even
on a noisy machine.
"""
