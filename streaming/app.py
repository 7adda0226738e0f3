"""Wires the Faust app: topics and agents. The logic lives in streaming.worker.

Both agents consume raw bytes (Faust has no dead letters: decoding happens
inside the step, so bad input becomes a dead letter, not a crash), take
micro-batches, and send every output record of a batch together, then await
all acknowledgements before the batch's events are acked; Faust commits
only acked offsets, so an offset is committed only after its prediction (or
dead letter) is on the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust

from streaming.inference.batching import Dispatch
from streaming.settings import Settings
from streaming.worker import transport
from streaming.worker.batcher import Batcher, policy_for, seed
from streaming.worker.learn import LabelProcessor
from streaming.worker.publisher import BatchSender, Publisher
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import Row, ScoreProcessor

__all__ = ["StreamingApp", "app_keywords", "create_app"]

log = logging.getLogger(__name__)


class StreamingApp(faust.App):
    """A Faust app that carries the consumer fetch wait for our transport."""

    fetch_max_wait_ms: int = transport.DEFAULT_FETCH_MAX_WAIT_MS


#: (topic, partition) -> the next offset to process, for the consumer-lag gauge
_next_offsets: dict[tuple[str, int], int] = {}


def _records(events: Sequence[Any]) -> list[InRecord]:
    now_us = time.time_ns() // 1000
    out = []
    for e in events:
        msg = e.message
        ts = msg.timestamp
        out.append(InRecord(msg.key, msg.value, msg.topic, msg.partition, msg.offset,
                            int(ts * 1000) if ts else None, now_us))
        _next_offsets[(msg.topic, msg.partition)] = msg.offset + 1
    return out


async def _drain(batcher: Batcher[Row], publisher: Publisher, scorer: ScoreProcessor) -> None:
    await batcher.drained()
    await publisher.flush()
    await scorer.flush_logs()


def app_keywords(s: Settings, bootstrap: str) -> dict[str, Any]:
    """The ``faust.App`` keywords of our worker (also used by the benchmark's Faust apps, so they run alike)."""
    return dict(
        broker=f"{transport.SCHEME}://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=s.topic_partitions,
        topic_allow_declare=False,
        producer_linger=s.producer_linger_ms / 1000.0,
        producer_acks=-1 if s.producer_acks == "all" else int(s.producer_acks),
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
        broker_commit_interval=s.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        cython_optimizations=True,  # Faust's repaired Cython fast paths (facts.md: less CPU per message)
    )


def create_app(rt: Runtime) -> StreamingApp:
    s = rt.settings
    app = StreamingApp(s.app_id, **app_keywords(s, rt.bootstrap))
    app.fetch_max_wait_ms = s.consumer_fetch_max_wait_ms
    events_topic = app.topic(s.topic_events, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw")
    labels_topic = app.topic(s.topic_labels, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw")
    scorer = ScoreProcessor(rt)
    learner = LabelProcessor(rt)
    within = s.batch_max_wait_ms / 1000.0
    spec = rt.pipeline.batching
    policy = policy_for(spec, rt.models.active, s.batch_policy)
    rt.extras["policy"] = policy
    serving = {"model": rt.models.active}
    log.info("inference batching: %s, max %d rows, budget %.1f ms, queue bound %d rows",
             policy.name, policy.max_rows, spec.budget_ms, spec.queue_rows)

    @app.agent(events_topic, name="score")
    async def score(stream: Any) -> None:  # a faust Stream (StreamT lacks take_events)
        publisher = Publisher(app, rt.metrics)

        async def run_batch(rows: list[Row], _dispatch: Dispatch) -> float:
            if rt.models.active is not serving["model"]:  # a new version: its provider and warm-up timings
                serving["model"] = rt.models.active
                seed(policy, rt.models.active)
            batch = await scorer.score(rows, wait_log=False)
            await publisher.publish(batch.out, [r.token for r in rows], batch.produced_ms)
            return batch.service_s

        batcher: Batcher[Row] = Batcher(policy, run_batch, bound=spec.queue_rows, metrics=rt.metrics)
        runner = asyncio.ensure_future(batcher.run())
        try:
            async for events in stream.take_events(s.batch_max_rows, within=within):
                if runner.done():
                    runner.result()  # the inference loop failed: raise here, nothing is acked
                publisher.check()  # a send failed: stop here, its events stay unacked
                for e in events:
                    e.message.incref()  # held until its prediction is on the broker (Publisher acks it)
                prepared = await scorer.prepare(_records(events), events)
                if prepared.dead:
                    await publisher.publish([o for o, _ in prepared.dead], [t for _, t in prepared.dead], [])
                await batcher.put(prepared.rows)  # waits while the queue is full: the consumer pauses
                rt.metrics.queue_rows.set(len(batcher))
        finally:
            try:  # a clean stop: score what is queued and wait for its acknowledgements
                await asyncio.wait_for(asyncio.shield(_drain(batcher, publisher, scorer)), 5.0)
            except Exception as exc:
                log.warning("stopping with %d rows unscored (%s); they will be redelivered", len(batcher), exc)
            runner.cancel()

    @app.agent(labels_topic, name="learn")
    async def learn(stream: Any) -> None:
        sender = BatchSender(app)  # the score agent's send path: one record batch per partition
        async for events in stream.take_events(1000, within=0.05):
            batch = await learner.process(_records(events))
            # every acknowledgement before the next take: Faust acks these events (commits) after that
            await asyncio.gather(*await sender.send(batch.out))

    @app.timer(interval=1.0)
    async def watch_models() -> None:
        await rt.models.refresh()  # loads and warms in the default thread pool, not the inference thread

    @app.timer(interval=5.0)
    async def consumer_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic not in (s.topic_events, s.topic_labels):
                continue
            done = _next_offsets.get((tp.topic, tp.partition))
            if done is None:
                done = await consumer.position(tp) or 0
            lag = max(0, consumer.highwater(tp) - done)
            rt.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    @app.timer(interval=1.0)
    async def loop_lag() -> None:
        t0 = time.perf_counter()
        await asyncio.sleep(0.1)
        rt.metrics.loop_lag.set(max(0.0, time.perf_counter() - t0 - 0.1))

    return app
