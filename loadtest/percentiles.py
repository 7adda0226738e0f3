"""Latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["percentiles"]


def percentiles(values_ms: Sequence[float], qs: Sequence[float] = (50, 95, 99, 99.9)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "max": ...}`` in milliseconds (NaN when empty).

    >>> percentiles([1, 2, 3, 4, 100], qs=(50,))
    {'p50': 3.0, 'max': 100.0, 'count': 5}
    """
    if len(values_ms) == 0:
        return {**{f"p{q:g}": float("nan") for q in qs}, "max": float("nan"), "count": 0}
    arr = np.asarray(values_ms, dtype=np.float64)
    out: dict[str, float] = {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}
    out["max"] = float(arr.max())
    out["count"] = len(arr)
    return out
