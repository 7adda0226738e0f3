"""At-least-once through a crash, and no aggregate moved twice by the redelivery."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore
from streaming.pipeline.spec import Pipeline
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, unique, worker_env
from tests.helpers import decoded, read_until, transaction

pytestmark = pytest.mark.integration


async def test_kill_mid_stream_loses_nothing_and_counts_once(servers: Servers, models_dir: Path, codec_: Codec,
                                                             fraud_pipeline: Pipeline) -> None:
    env = worker_env(servers, models_dir, STREAMING_BATCH_MAX_ROWS="50", STREAMING_COMMIT_INTERVAL_S="2.0")
    n = 4000
    base = time.time_ns() // 1000
    events = [transaction(unique("k"), card=f"ck{i % 40}", amount=1.0 + i % 13, event_time=base + i * 1000)
              for i in range(n)]
    prod = EventProducer(servers.bootstrap, codec_, "transaction", env["STREAMING_TOPIC_EVENTS"],
                         key_fields=["card_id"], linger_ms=5)
    for ev in events:
        prod.send(ev)
    assert prod.close() == 0
    log = servers.run_dir / f"{env['STREAMING_APP_ID']}.log"
    topic = env["STREAMING_TOPIC_PREDICTIONS"]

    worker = WorkerProcess(env, log).start()
    read_until(servers.bootstrap, topic, lambda got: len(got) >= n // 4, timeout=30)
    worker.kill()  # SIGKILL: no clean shutdown, no final commit
    partial = len(read_until(servers.bootstrap, topic, lambda got: False, timeout=1))
    assert partial < n, "the crash came too late to test anything"

    worker = WorkerProcess(env, log).start()
    try:
        ids = {e["event_id"] for e in events}
        msgs = read_until(servers.bootstrap, topic,
                          lambda got: ids <= {p["event_id"] for p in decoded(codec_, "prediction", got)}, timeout=90)
    finally:
        worker.stop()
    preds = decoded(codec_, "prediction", msgs)
    seen = Counter(p["event_id"] for p in preds)
    assert set(seen) == ids, f"{len(ids - set(seen))} events lost"
    flagged = {p["event_id"] for p in preds if "redelivered" in p["flags"]}
    duplicated = {eid for eid, c in seen.items() if c > 1}
    assert duplicated, "the crash should have caused redelivery"
    assert duplicated <= flagged  # every duplicate prediction is a flagged redelivery
    # flagged but not duplicated: rows in flight at the kill (features applied, predictions unsent): at most
    # the consumer batch being prepared, the inference queue and the batch being scored
    in_flight = int(env["STREAMING_BATCH_MAX_ROWS"]) + fraud_pipeline.batching.queue_rows \
        + fraud_pipeline.batching.max_rows
    assert len(flagged - duplicated) <= in_flight < n // 4

    # the features: Redis after crash and redelivery equals the reference over each event once
    probe_time = base + n * 1000
    probes = [transaction(unique("probe"), card=f"ck{c}", event_time=probe_time) for c in range(40)]
    ref = ReferenceStore(fraud_pipeline)
    ref.update_and_read(events)
    want = ref.update_and_read(probes)
    store = RedisFeatureStore(aioredis.Redis.from_url(servers.redis_url), fraud_pipeline,
                              prefix=env["STREAMING_REDIS_PREFIX"])  # the worker's namespace
    got = await store.update_and_read(probes)
    await store.close()
    card_cols = [i for i, f in enumerate(fraud_pipeline.window_features) if f.entity == ("card_id",)]
    for g, w in zip(got, want, strict=True):
        assert [g.values[i] for i in card_cols] == pytest.approx([w[i] for i in card_cols])


@pytest.fixture
def codec_(schema_registry) -> Codec:  # type: ignore[no-untyped-def]
    return Codec(schema_registry)
