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
    """Run every measure (each returns a p50 in ms) once per round, ``n`` rounds; round r starts
    at measure r (mod the count), so no measure always runs first or right after another one.
    Returns each measure's per-round values (in round order) and their median."""
    if n < 1:
        raise ValueError("at least one round")
    names = list(measures)
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        for name in names[r % len(names):] + names[:r % len(names)]:
            values[name].append(float(measures[name]()))
    return {"rounds": n, "p50_ms": {k: median(v) for k, v in values.items()},
            "per_round_ms": values}


def ratio(result: Mapping[str, Any], numerator: str, *denominator: str) -> float:
    """The median over rounds of numerator / sum(denominator), each round's own values: the
    paired estimate (a drift between rounds cancels out within each)."""
    per = result["per_round_ms"]
    return median([per[numerator][i] / sum(per[d][i] for d in denominator)
                   for i in range(result["rounds"])])
