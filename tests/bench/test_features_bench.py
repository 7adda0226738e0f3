"""The features benchmark runs end to end on a real Redis and reports what the issue asks for."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from streaming.bench.features import BATCH_SIZES, CLUSTER_FIGURES, _run, run_cluster_bench
from streaming.infra.processes import port_open
from streaming.pipeline.spec import Pipeline
from tests.conftest import Servers
from tests.features.redis_servers import needs_redis_server

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


@pytest.mark.scaleout
@needs_redis_server
def test_cluster_mode_runs_both_stores_and_their_vectors_are_equal(fraud_pipeline: Pipeline, tmp_path: Path) -> None:
    """``--cluster`` with a tiny workload: one private Redis and a private 3-node cluster, the same batches on
    both, every figure and ratio in the JSON, the same vectors bit for bit, every redis-server stopped."""
    lines: list[str] = []
    vectors: dict[str, list[np.ndarray]] = {}
    result = run_cluster_bench(fraud_pipeline, quick=True, say=lines.append, root=tmp_path, progress=False,
                               batch=64, batches=3, repeats=2, vectors=vectors)
    result = orjson.loads(orjson.dumps(result))  # what --json prints
    assert result["bench"] == "features-cluster" and result["cluster_nodes"] == 3
    assert (result["batch_size"], result["batches"], result["repeats"]) == (64, 3, 2)
    assert result["events_per_store"] == 64 * 3 * 2
    for which in ("single", "cluster"):
        r = result[which]
        for key in CLUSTER_FIGURES:
            assert r[key] > 0, (which, key)
        assert r["batch_wall_ms_p99"] >= r["batch_wall_ms_p50"]
        assert len(r["runs"]["redis_cpu_us_per_event"]) == 2
    assert result["single"]["nodes"] == 1 and result["cluster"]["nodes"] == 3
    assert len(result["cluster"]["redis_cpu_us_per_event_by_node"]) == 3
    assert result["cluster"]["redis_cpu_us_per_event"] == pytest.approx(
        sum(result["cluster"]["redis_cpu_us_per_event_by_node"]), abs=0.1)
    assert result["single"]["round_trips_per_batch"] == 2  # one script call and the feature log
    assert result["cluster"]["round_trips_per_batch"] == 3  # lateness, the slots' calls, the feature log
    assert result["cluster"]["slots_per_batch"] > 64  # a card and a merchant per event: many slots
    for key in CLUSTER_FIGURES:
        assert result["ratio_cluster_over_single"][key] == pytest.approx(
            result["cluster"][key] / result["single"][key], rel=0.01)
    # the same events gave the same vectors on both (warm-up batches included), bit for bit
    assert result["vectors_identical"] is True
    assert len(vectors["single"]) == len(vectors["cluster"]) == 2 * (2 + 3)
    for a, b in zip(vectors["single"], vectors["cluster"], strict=True):
        assert a.shape[0] == 64 and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert any(np.any(v != 0) for v in vectors["single"])
    assert any("cluster/single" in line for line in lines) and lines[-1].startswith("vectors: identical")
    # every redis-server it started (named on the first line) is stopped
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", lines[0])]
    assert len(ports) == 4 and not any(port_open("127.0.0.1", p) for p in ports)
