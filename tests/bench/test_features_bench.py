"""The features benchmark runs end to end on a real Redis and reports what the issue asks for."""

from __future__ import annotations

import asyncio

import pytest

from streaming.bench.features import BATCH_SIZES, _run
from streaming.pipeline.spec import Pipeline
from tests.conftest import Servers

pytestmark = pytest.mark.integration


def test_small_run_reports_ratios_and_round_trips(servers: Servers, fraud_pipeline: Pipeline) -> None:
    lines: list[str] = []
    result = asyncio.run(_run(servers.redis_url, fraud_pipeline, 1024, 100, lines.append))
    assert set(result["events_per_s"]) == {str(b) for b in BATCH_SIZES}
    assert all(v == 2.0 for v in result["round_trips_per_batch"].values())
    assert result["naive"]["round_trips_per_event"] > 10
    # batching must beat one command per event per aggregate by a wide margin even in a small run
    assert result["speedup_vs_naive_at_256"] > 5
    assert len(lines) == 1 + len(BATCH_SIZES)
