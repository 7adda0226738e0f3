"""Reading the worker's e2e histogram and comparing shares over the SLO (pure logic)."""

from __future__ import annotations

import math

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, generate_latest

from loadtest.reconcile import e2e_buckets, share_over
from streaming.observability.metrics import Metrics


def test_share_over_counts_values_above_the_limit() -> None:
    h = HdrHistogram(1, 120_000_000, 3)
    for v in [10_000] * 97 + [50_000] + [60_000] * 2:  # µs
        h.record_value(v)
    assert abs(share_over(h, 50) - 0.02) < 1e-9  # 50 ms itself is within
    assert share_over(h, 5) == 1.0
    assert math.isnan(share_over(HdrHistogram(1, 1000, 3), 50))


def test_the_worker_histogram_is_read_with_the_slo_on_an_edge() -> None:
    m = Metrics(slo_s=0.05, registry=CollectorRegistry())
    for s in (0.01, 0.02, 0.049, 0.051, 0.3):
        m.e2e.observe(s)
    buckets = e2e_buckets(generate_latest(m.registry).decode())
    assert buckets[math.inf] == 5 and buckets[0.05] == 3
    assert abs(1 - buckets[0.05] / buckets[math.inf] - 0.4) < 1e-9
