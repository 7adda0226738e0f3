"""The inference batch policy is chosen per pipeline (or overridden by a setting) and really used."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from streaming.demo import scrape
from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.infra.processes import free_port
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, unique, worker_env
from tests.helpers import decoded, score_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def codec_(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


def test_policy_none_scores_every_event_alone(servers: Servers, models_dir: Path, codec_: Codec) -> None:
    namespace = f"{unique('ns')}:fraud:"  # and the store keys everything under STREAMING_REDIS_PREFIX
    env = worker_env(servers, models_dir, STREAMING_BATCH_POLICY="none", STREAMING_METRICS_PORT=str(free_port()),
                     STREAMING_REDIS_PREFIX=namespace)
    worker = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()
    try:
        ids = [unique("one") for _ in range(200)]
        preds = decoded(codec_, "prediction", score_events(servers.bootstrap, env, codec_, ids, cards=9))
        assert sorted(p["event_id"] for p in preds) == sorted(ids)
        assert {p["batch_size"] for p in preds} == {1}
        url = f"http://127.0.0.1:{env['STREAMING_METRICS_PORT']}/metrics"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples = scrape(url)
            if samples.get(("streaming_batch_dispatches_total", (("reason", "single"),)), 0) >= len(ids):
                break
            time.sleep(0.2)
        assert samples[("streaming_batch_dispatches_total", (("reason", "single"),))] >= len(ids)
        assert samples[("streaming_batch_target_rows", ())] == 1
        client = redis.Redis.from_url(servers.redis_url)
        entity_keys = list(client.scan_iter(match=namespace + "e2:*", count=1000))
        logged = list(client.scan_iter(match=namespace + "flog:*", count=1000))
        client.close()
        assert len(entity_keys) >= 9 + 1  # the 9 cards (and their merchants) under the run's namespace
        assert len(logged) == len(ids)  # one served vector per event, under the namespace too
    finally:
        worker.stop()


def test_batched_publishing_puts_each_key_on_its_partition(servers: Servers, models_dir: Path, codec_: Codec) -> None:
    """Predictions go out as one record batch per partition; each key lands where Kafka's default partitioner
    (murmur2, what a per-record send would use) puts it, and nothing is lost."""
    from aiokafka.partitioner import murmur2

    env = worker_env(servers, models_dir, STREAMING_TOPIC_PARTITIONS="3")
    worker = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()
    try:
        ids = [unique("part") for _ in range(300)]
        mine = score_events(servers.bootstrap, env, codec_, ids, cards=23)
    finally:
        worker.stop()
    assert sorted(codec_.decode("prediction", m.value())["event_id"] for m in mine) == sorted(ids)
    assert {m.partition() for m in mine} == {0, 1, 2}
    for m in mine:
        assert m.partition() == (murmur2(m.key()) & 0x7FFFFFFF) % 3, m.key()
