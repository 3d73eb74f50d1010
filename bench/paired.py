"""Side by side in time: the measures a target compares, run in turn, round after round.

On a shared 2-core machine latency drifts by tens of percent within minutes; a gateway run and a
direct run minutes apart compare two different machines. Here each round runs every measure for
a few seconds, one after another, and a measure's value is the median of its rounds' p50s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.stats import median


def rounds(measures: Mapping[str, Callable[[], float]], n: int = 5) -> dict[str, Any]:
    """Run every measure (each returns a p50 in ms) once per round, in order, ``n`` rounds.
    Returns each measure's per-round values and their median."""
    if n < 1:
        raise ValueError("at least one round")
    values: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(n):
        for name, measure in measures.items():
            values[name].append(float(measure()))
    return {"rounds": n, "p50_ms": {k: median(v) for k, v in values.items()},
            "per_round_ms": values}
