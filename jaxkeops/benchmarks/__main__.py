"""Command line: `python -m jaxkeops.benchmarks [name ...] [--size M N] [--repeats R]
[--dense-gib G] [--markdown FILE] [--plot NAME [--plot-sizes N ...] [--plot-file PNG]]`."""

from __future__ import annotations

import argparse
import datetime
import os
import platform

# pykeops' OpenMP workers otherwise spin for a while after each call, taking the cores from
# the candidate timed next (the candidates alternate); set before pykeops is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402

from jaxkeops.benchmarks.cases import BENCHMARKS  # noqa: E402
from jaxkeops.benchmarks.harness import compare, report  # noqa: E402


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header() -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"## {_cpu_name()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}, "
            f"jax {jax.__version__}, {datetime.date.today()}\n\nLoad average at start "
            f"(1 / 5 / 15 min): {load}\n")


def _plot(name, sizes, repeats, budget, path) -> None:
    """Median time of every candidate against N (M = N), log-log, into a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    series: dict[str, list[tuple[int, float]]] = {}
    title = name
    for n in sizes:
        case = BENCHMARKS[name].make(n, n, budget)
        title = case.title.split(",")[0]
        for cand, t in compare(case.candidates, repeats=repeats).items():
            series.setdefault(cand, []).append((n, t.median))
        print(f"  N={n}: " + ", ".join(f"{c} {s[-1][1] * 1e3:.1f} ms" for c, s in series.items()))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cand, points in series.items():
        ax.plot(*zip(*points), marker="o", label=cand)
    ax.set(xscale="log", yscale="log", xlabel="N (= M)", ylabel="median time (s)",
           title=f"{title} — {_cpu_name()}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxkeops.benchmarks")
    parser.add_argument("names", nargs="*",
                        help=f"any of {list(BENCHMARKS)} (default: all but the gpu_* ones)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("M", "N"), default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-gib", type=float, default=8.0,
                        help="memory budget of the dense jnp baseline's temporaries (GiB)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--plot", metavar="NAME", choices=list(BENCHMARKS),
                        help="plot time against N (M = N) for one benchmark (needs matplotlib)")
    parser.add_argument("--plot-sizes", nargs="+", type=int,
                        default=[500, 1000, 2000, 5000, 10000, 20000])
    parser.add_argument("--plot-file", default=None, help="PNG path (default: NAME.png)")
    args = parser.parse_args(argv)
    budget = int(args.dense_gib * 2**30)
    if args.plot:
        _plot(args.plot, args.plot_sizes, args.repeats, budget,
              args.plot_file or f"{args.plot}.png")
        if not args.names:
            return
    names = args.names or [name for name, b in BENCHMARKS.items() if b.in_default]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    sections = [_header()]
    print(sections[0], flush=True)
    for name in names:
        M, N = args.size or BENCHMARKS[name].default_size
        case = BENCHMARKS[name].make(M, N, budget)
        if case.candidates:
            timings = compare(case.candidates, repeats=case.repeats or args.repeats,
                              alternate=case.alternate)
            section = report(case.title, timings, case.pairs, case.notes)
        else:  # a benchmark that measured and formatted its own results
            section = f"### {case.title}\n\n" + "\n\n".join(case.notes) + "\n"
        print(section, flush=True)
        sections.append(section)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(sections))


if __name__ == "__main__":
    main()
