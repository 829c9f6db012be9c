"""Command line: `python -m jaxkeops.benchmarks [name ...] [--size M N] [--dim D] [--repeats R]`."""

from __future__ import annotations

import argparse
import platform

import jax

from jaxkeops.benchmarks.cases import BENCHMARKS
from jaxkeops.benchmarks.harness import compare, report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxkeops.benchmarks")
    parser.add_argument("names", nargs="*", help=f"any of {sorted(BENCHMARKS)} (default: all)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("M", "N"), default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(BENCHMARKS)}")
    print(f"# jaxkeops benchmarks — {platform.processor() or platform.machine()}, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}\n")
    for name in names:
        bench = BENCHMARKS[name]
        M, N = args.size or bench.default_size
        candidates, pairs, title = bench.make(M, N)
        medians = compare(candidates, pairs, repeats=args.repeats)
        print(report(title, medians, pairs, reference=candidates[-1].name))


if __name__ == "__main__":
    main()
