"""Wires the Faust app: the worker's topics, its two loops, and its timers.

Both topics are consumed as raw bytes and taken a whole fetch at a time
(:mod:`streaming.worker.intake`): decoding happens inside the step, so bad
input becomes a dead letter, not a crash, and no Faust machinery runs once per
event. The events go through the :class:`~streaming.worker.loop.ScoreLoop`,
the labels through the :class:`~streaming.worker.learn.LabelProcessor`; one
:class:`~streaming.worker.publisher.Publisher` sends what both produce and
acks their input messages once the broker has it, so Faust commits an offset
only after its prediction (or dead letter) is on the broker. The acks pass
through :class:`~streaming.worker.acks.OrderedAcks`, which releases them in
offset order per partition. A failed loop (inference, publisher, a handler)
ends the process with status 70 (:mod:`streaming.worker.fatal`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from streaming.events.security import KafkaSecurity
from streaming.settings import Settings
from streaming.worker import transport
from streaming.worker.acks import OrderedAcks
from streaming.worker.batcher import policy_for
from streaming.worker.checkpoints import LearnerCheckpoints
from streaming.worker.fatal import crash
from streaming.worker.intake import register_batch_handler
from streaming.worker.learn import LabelProcessor
from streaming.worker.logwatch import LogLostError, LogWatch
from streaming.worker.loop import ScoreLoop
from streaming.worker.publisher import Publisher, ack_message
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import ScoreProcessor

__all__ = ["StreamingApp", "app_keywords", "create_app", "to_records"]

log = logging.getLogger(__name__)


class StreamingApp(faust.App):
    """A Faust app that carries the consumer fetch wait for our transport, and drains the worker's
    loops before its offsets are committed (on a rebalance and on a clean stop)."""

    fetch_max_wait_ms: int = transport.DEFAULT_FETCH_MAX_WAIT_MS
    close_timeout_s: float = transport.DEFAULT_CLOSE_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drains: list[Callable[[], Awaitable[None]]] = []

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        for drain in self.drains:  # what was taken is scored, published and acked before the commit
            await drain()
        await super()._consumer_wait_empty(consumer, logger)


def to_records(messages: Sequence[Any], offsets: dict[tuple[str, int], int]) -> list[InRecord]:
    """InRecords of Faust messages, noting each partition's next offset to process in ``offsets``."""
    now_us = time.time_ns() // 1000
    out = []
    for msg in messages:
        ts = msg.timestamp
        out.append(InRecord(msg.key, msg.value, msg.topic, msg.partition, msg.offset,
                            int(ts * 1000) if ts else None, now_us))
        offsets[(msg.topic, msg.partition)] = msg.offset + 1
    return out


async def _report_lag(consumer: Any, topics: Sequence[str], offsets: dict[tuple[str, int], int], rt: Runtime) -> None:
    """Lag behind the log end of what the worker took, and of what the group committed."""
    committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})  # Faust's, updated per commit
    for tp in consumer.assignment():
        if tp.topic not in topics:
            continue
        end = consumer.highwater(tp)
        done = offsets.get((tp.topic, tp.partition))
        if done is None:
            done = await consumer.position(tp) or 0
        labels = (tp.topic, str(tp.partition))
        rt.metrics.consumer_lag.labels(*labels).set(max(0, end - done))
        c = committed.get(tp)
        if c is not None:
            rt.metrics.committed_lag.labels(*labels).set(max(0, end - c))


def app_keywords(s: Settings, bootstrap: str) -> dict[str, Any]:
    """The ``faust.App`` keywords of our worker (also used by the benchmark's Faust apps, so they run alike)."""
    return dict(
        broker=f"{transport.SCHEME}://{bootstrap}",
        store="memory://",
        datadir=str(s.run_path / "{conf.name}-data"),  # Faust's (empty) data folder: under the run dir, not the cwd
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
        cython_optimizations=True,  # Faust's repaired Cython fast paths (less CPU per message)
        broker_credentials=KafkaSecurity.from_settings(s).faust_credentials(),  # TLS/SASL (events/security.py)
    )


def create_app(rt: Runtime) -> StreamingApp:
    s = rt.settings
    app = StreamingApp(s.app_id, **app_keywords(s, rt.bootstrap))
    app.fetch_max_wait_ms = s.consumer_fetch_max_wait_ms
    # a stop fits in stop_timeout_s even with the broker or Redis gone: at most 40 % for scoring what is queued,
    # 20 % each for closing the consumer and flushing the producer (streaming.worker.transport)
    app.close_timeout_s = 0.2 * s.stop_timeout_s
    events_topic, labels_topic = (app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                                            value_serializer="raw") for name in (s.topic_events, s.topic_labels))
    spec = rt.pipeline.batching
    policy = policy_for(spec, rt.models.active, s.batch_policy)
    log.info("inference batching: %s, max %d rows, budget %.1f ms, queue bound %d rows",
             policy.name, policy.max_rows, spec.budget_ms, spec.queue_rows)
    acks = OrderedAcks(functools.partial(ack_message, app))
    publisher = Publisher(app, rt.metrics, acks.ack, on_failure=lambda exc: crash("publishing", exc))
    score = ScoreLoop(ScoreProcessor(rt), publisher, policy, rt.models, rt.metrics, queue_rows=spec.queue_rows,
                      take_rows=s.batch_max_rows, on_failure=lambda exc: crash("the inference loop", exc),
                      drain_timeout_s=min(5.0, 0.4 * s.stop_timeout_s))
    learner = LabelProcessor(rt)
    checkpoints = LearnerCheckpoints(rt, learner) if s.checkpoint_interval_s > 0 else None
    offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> the next offset to process (consumer lag)

    async def take_events(messages: list[Any]) -> None:
        acks.track(messages)
        await score.take(to_records(messages, offsets), messages)

    async def take_labels(messages: list[Any]) -> None:
        acks.track(messages)
        publisher.check()
        while learner.full:  # as many labels wait for their vectors as the pipeline allows: pause the consumer
            await asyncio.sleep(0.05)
        if checkpoints is not None:
            await checkpoints.restore()  # the learner's state from before a restart, before it learns more
        batch = await learner.process(to_records(messages, offsets), messages)
        await publisher.publish(batch.out, batch.done, [])  # acked once its records (if any) are on the broker

    @app.timer(interval=0.5)
    async def waiting_labels() -> None:
        """Join the labels that arrived before their events' vectors were logged."""
        if not learner.waiting:
            return
        try:
            batch = await learner.retry()
            await publisher.publish(batch.out, batch.done, [])
        except Exception as exc:
            crash("the label join", exc)

    @app.timer(interval=0.5)
    async def watch_served() -> None:
        """The label-free monitors (scores, feature vectors) on what was served since the last tick."""
        if not rt.served_samples:
            return
        try:
            batch = await learner.watch_served()
            await publisher.publish(batch.out, [], [])
        except Exception as exc:
            crash("the drift monitors", exc)

    if checkpoints is not None:
        ckpt = checkpoints

        @app.on_partitions_assigned.connect  # type: ignore[arg-type]
        async def replay_labels(_sender: Any, assigned: Any, **_kw: Any) -> None:
            """Labels learned after the last checkpoint are learned again (their offsets may be committed)."""
            try:
                await ckpt.seek_labels(app.consumer, assigned)
            except Exception as exc:
                crash("restoring the learner's checkpoint", exc)

        @app.timer(interval=s.checkpoint_interval_s)
        async def checkpoint() -> None:
            try:
                await ckpt.save()
            except Exception as exc:  # Redis down: the next tick tries again; the learner goes on
                log.warning("learner checkpoint not written (%s: %s)", type(exc).__name__, exc)

        async def last_checkpoint() -> None:
            try:
                await asyncio.wait_for(ckpt.save(), timeout=max(1.0, 0.2 * s.stop_timeout_s))
            except Exception as exc:
                log.warning("learner checkpoint not written at the stop (%s: %s)", type(exc).__name__, exc)

    register_batch_handler(app, events_topic, take_events)
    register_batch_handler(app, labels_topic, take_labels)
    app.drains.append(score.drain)
    if checkpoints is not None:
        app.drains.append(last_checkpoint)

    @app.timer(interval=1.0)
    async def watch_models() -> None:
        try:
            await rt.models.refresh()  # loads and warms in the default thread pool, not the inference thread
        except Exception as exc:  # refresh refuses bad versions itself; this is a last guard for the timer
            log.error("checking for model changes failed (%s: %s); the current model keeps serving",
                      type(exc).__name__, exc)

    @app.timer(interval=5.0)
    async def consumer_lag() -> None:
        try:
            await _report_lag(app.consumer, (s.topic_events, s.topic_labels), offsets, rt)
        except Exception as exc:  # a metric must never stop the worker
            log.warning("consumer lag not reported (%s: %s)", type(exc).__name__, exc)
        rt.metrics.acks_waiting.set(acks.waiting())

    watch = LogWatch(s.topics.values())
    app.logwatch = watch  # type: ignore[attr-defined]  # a revocation checks it before committing (intake.py)

    @app.timer(interval=5.0)
    async def logs_kept() -> None:
        """End the worker when the broker lost its logs (a restart without storage): it would freeze otherwise."""
        consumer = app.consumer
        lost = watch.check_highwaters({tp: consumer.highwater(tp) for tp in consumer.assignment()
                                       if tp.topic in (s.topic_events, s.topic_labels)})
        if lost is None:
            aio = publisher.sender.client()
            try:
                metadata = await asyncio.wait_for(aio.client.fetch_all_metadata(), 5.0) if aio is not None else None
            except Exception:  # the broker is down or slow: no sign of anything
                metadata = None
            if metadata is not None:
                lost = watch.check_topics(metadata.topics())
        if lost is not None:
            crash("the broker's logs", LogLostError(lost + "; the worker exits so that its restart creates its "
                                                    "topics and reads them afresh"))

    @app.timer(interval=1.0)
    async def loop_lag() -> None:
        t0 = time.perf_counter()
        await asyncio.sleep(0.1)
        rt.metrics.loop_lag.set(max(0.0, time.perf_counter() - t0 - 0.1))

    return app
