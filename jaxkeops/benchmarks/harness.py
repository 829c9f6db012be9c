"""Timing harness: alternate candidates, take medians, print G pairs/s and ratios."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import jax


@dataclasses.dataclass
class Candidate:
    name: str
    run: Callable[[], object]  # returns arrays (jax or numpy); blocked on before stopping the clock


@dataclasses.dataclass
class Timing:
    first: float  # seconds of the first call (tracing, compilation, run)
    median: float  # median seconds of the warm calls


def _time_once(run) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def compare(candidates: list[Candidate], repeats: int = 5, alternate: bool = True
            ) -> dict[str, Timing]:
    """Per candidate: the first call, then the median of `repeats` warm calls. Alternating, the
    warm calls of all candidates run in turn so that machine noise hits them alike; otherwise
    each candidate's calls run back to back (for calls of microseconds, which another library's
    lingering worker threads would disturb)."""
    first = {c.name: _time_once(c.run) for c in candidates}
    samples = {c.name: [] for c in candidates}
    if alternate:
        for _ in range(repeats):
            for c in candidates:
                samples[c.name].append(_time_once(c.run))
    else:
        for c in candidates:
            samples[c.name] = [_time_once(c.run) for _ in range(repeats)]
    return {name: Timing(first[name], statistics.median(s)) for name, s in samples.items()}


def report(title: str, timings: dict[str, Timing], pairs: int, notes: list[str] = ()) -> str:
    """A markdown table; the first candidate is jaxkeops, the last column says how many times
    faster it is than each of the others."""
    names = list(timings)
    ours = timings[names[0]].median
    lines = [f"### {title}", "",
             f"| implementation | first call | median time | G pairs/s | {names[0]} speed-up |",
             "|---|---|---|---|---|"]
    for name in names:
        t = timings[name]
        lines.append(f"| {name} | {_seconds(t.first)} | {_seconds(t.median)} | "
                     f"{pairs / t.median / 1e9:.3f} | {t.median / ours:.2f}× |")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def _seconds(t: float) -> str:
    if t < 1e-2:
        return f"{t * 1e6:.0f} µs"
    return f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s"
