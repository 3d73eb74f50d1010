"""Small statistics helpers shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean in milliseconds (NaN when there is no sample)."""
    if not values_s:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "mean_ms": float("nan")}
    arr = np.asarray(values_s) * 1000.0
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean())}


def median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else float("nan")
