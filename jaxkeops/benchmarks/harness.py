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
    run: Callable[[], object]  # returns jax arrays; blocked on before stopping the clock


def _time_once(run) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def compare(candidates: list[Candidate], pairs: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds per candidate; each is warmed up once, then all run in turn `repeats`
    times so that machine noise hits them alike."""
    for c in candidates:
        jax.block_until_ready(c.run())
    samples = {c.name: [] for c in candidates}
    for _ in range(repeats):
        for c in candidates:
            samples[c.name].append(_time_once(c.run))
    return {name: statistics.median(s) for name, s in samples.items()}


def report(title: str, medians: dict[str, float], pairs: int, reference: str) -> str:
    lines = [f"## {title}", "", "| implementation | median time | G pairs/s | speed-up vs "
             f"{reference} |", "|---|---|---|---|"]
    base = medians[reference]
    for name, t in medians.items():
        lines.append(f"| {name} | {t * 1e3:.1f} ms | {pairs / t / 1e9:.3f} | {base / t:.2f}× |")
    return "\n".join(lines) + "\n"
