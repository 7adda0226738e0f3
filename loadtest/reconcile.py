"""The worker's own latency histogram beside the load test's, from the same run.

The worker's ``streaming_e2e_latency_seconds`` runs from the event record's
Kafka timestamp (the generator's *actual* send) to the broker's acknowledgement
of the prediction; the load test's from the intended (or actual) send time to
the reader's receipt. :func:`worker_view` scrapes the histogram at the end of a
run and compares the share of events over the SLO, the one figure both can give
exactly at the SLO (it is a bucket edge of the worker's histogram).
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from hdrh.histogram import HdrHistogram
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["share_over", "worker_view", "e2e_buckets", "scrape_buckets"]

_NAME = "streaming_e2e_latency_seconds"


def e2e_buckets(metrics_text: str) -> dict[float, float]:
    """Cumulative counts of the worker's e2e histogram by upper bound (seconds; +Inf included)."""
    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != _NAME:
            continue
        for s in fam.samples:
            if s.name == _NAME + "_bucket":
                out[float(s.labels["le"])] = float(s.value)
    return out


def scrape_buckets(metrics_url: str) -> dict[float, float]:
    """The worker's e2e histogram, scraped now (see :func:`e2e_buckets`)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        return e2e_buckets(resp.read().decode())


def share_over(h: HdrHistogram, limit_ms: float) -> float:
    """The share of a load-test histogram's values (µs) above ``limit_ms`` (to its 3 significant digits)."""
    total = h.get_total_count()
    if total == 0:
        return float("nan")
    limit = int(limit_ms * 1000)
    below = sum(item.count_added_in_this_iter_step for item in h.get_recorded_iterator()
                if h.get_lowest_equivalent_value(item.value_iterated_to) <= limit)
    return 1.0 - below / total


def worker_view(metrics_url: str, slo_ms: float, intended: HdrHistogram, actual: HdrHistogram,
                baseline: dict[float, float] | None = None) -> dict[str, Any]:
    """The worker's share of events over the SLO next to the load test's (intended and actual send).

    ``baseline``: the buckets scraped before the schedule (the warm-up event), subtracted.
    """
    buckets = scrape_buckets(metrics_url)
    if baseline:
        buckets = {le: c - baseline.get(le, 0.0) for le, c in buckets.items()}
    total = buckets.get(math.inf, 0.0)
    slo_s = round(slo_ms / 1000.0, 6)
    at_slo = buckets.get(slo_s)
    return {
        "worker_e2e_count": int(total),
        "worker_share_over_slo": None if not total or at_slo is None else round(1.0 - at_slo / total, 5),
        "loadtest_share_over_slo_intended": round(share_over(intended, slo_ms), 5),
        "loadtest_share_over_slo_actual": round(share_over(actual, slo_ms), 5),
    }
