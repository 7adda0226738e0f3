"""Publishing a batch's records and acking its events once the broker has them.

:meth:`Publisher.publish` queues a batch's records and returns; the
publisher's task sends what is queued and, once the broker has acknowledged
it, acks the batch's Faust events, so an offset is committed only after its
prediction (or dead letter) is on the broker. The inference loop never waits
for the broker: the next batch runs while this one is on its way. A failed
send is raised from the next :meth:`publish` or :meth:`check` and reported
to ``on_failure`` (the worker exits; unacked events are redelivered).

Records go to the broker as whole record batches, one per topic partition
(:class:`BatchSender`: aiokafka's ``create_batch``/``send_batch``), not one
``send`` per record: a record then costs an append to a buffer instead of a
coroutine, a partitioner call and an accumulator lookup in Python, which was a
large share of the worker's CPU per event. The partition of a keyed record is
the one aiokafka's default partitioner picks (murmur2 of the key, as Kafka's
Java client), so keys land where a per-record send would put them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust

from streaming.observability.metrics import Metrics
from streaming.worker.records import OutRecord

__all__ = ["Ack", "BatchSender", "Publisher", "ack_message"]

#: acknowledges one input record's token once its output is on the broker
Ack = Callable[[Any], None]

log = logging.getLogger(__name__)


def ack_message(app: faust.App, message: Any) -> None:
    """Acknowledge a Faust message the worker's consumer tracked (:mod:`streaming.worker.transport`):
    the consumer may now commit its offset."""
    if message is not None and app.consumer.ack(message):
        app.sensors.on_message_out(message.tp, message.offset, message)


class BatchSender:
    """Sends records as one record batch per topic partition through the app's aiokafka producer.

    Reaches into two private parts of the clients (Faust's ``Producer._ensure_producer`` for the
    aiokafka producer, aiokafka's ``_partition`` for the default partitioner); where either is
    missing it falls back to one ``send`` per record.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def client(self) -> Any:
        """The app's aiokafka producer (its ``client`` answers metadata requests), or None."""
        return self._aiokafka()

    def _aiokafka(self) -> Any:
        ensure = getattr(self.app.producer, "_ensure_producer", None)
        aio = ensure() if ensure is not None else None
        if aio is None or not all(hasattr(aio, a) for a in ("create_batch", "send_batch", "_partition")):
            return None
        return aio

    async def send(self, records: Sequence[OutRecord]) -> list[Any]:
        """Queue ``records``; returns the futures that resolve when the broker has them."""
        if not records:
            return []
        aio = self._aiokafka()
        if aio is None:
            producer = self.app.producer
            return [await producer.send(r.topic, r.key, r.value, None, None, r.headers) for r in records]
        by_tp: dict[tuple[str, int], list[OutRecord]] = {}
        only: dict[str, int | None] = {}
        for topic in {r.topic for r in records}:
            parts = await aio.client._wait_on_metadata(topic)
            only[topic] = next(iter(parts)) if len(parts) == 1 else None  # one partition: no hashing
        for r in records:
            p = only[r.topic]
            if p is None:
                p = aio._partition(r.topic, None, r.key, r.value, r.key, r.value)
            by_tp.setdefault((r.topic, p), []).append(r)
        futures = []
        for (topic, partition), recs in by_tp.items():
            batch = aio.create_batch()
            for r in recs:
                if batch.append(timestamp=None, key=r.key, value=r.value, headers=r.headers or []) is None:
                    futures.append(await aio.send_batch(batch, topic, partition=partition))  # full: send it
                    batch = aio.create_batch()
                    if batch.append(timestamp=None, key=r.key, value=r.value, headers=r.headers or []) is None:
                        raise ValueError(f"a record of {len(r.value or b'')} bytes does not fit a record batch")
            futures.append(await aio.send_batch(batch, topic, partition=partition))
        return futures


class Publisher:
    """Sends batches of records from its own task and acks their events once the broker has them.

    :meth:`publish` only queues (it never waits for the broker): aiokafka accepts a new record
    batch for a partition only once the previous one has left, so a caller that sent itself
    would wait a producer round trip per batch. The publishing task takes everything queued
    since its last send and sends it as one record batch per partition: the slower the
    broker, the larger and fewer the requests (Tansu's cost is per request, docs/platform.md).
    """

    def __init__(self, app: faust.App, metrics: Metrics, ack: Ack, *, max_queued: int = 50_000,
                 on_failure: Callable[[BaseException], Any] | None = None) -> None:
        self.app = app
        self.on_failure = on_failure  # called at once when a send fails (the worker exits)
        self.ack = ack
        self.metrics = metrics
        self.max_queued = max_queued
        self.sender = BatchSender(app)
        self._queue: list[tuple[list[OutRecord], list[Any], list[int], float]] = []
        self._queued = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._settling: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def publish(self, records: Sequence[OutRecord], tokens: Sequence[Any], produced_ms: Sequence[int]) -> None:
        """Queue ``records`` for sending; ack ``tokens`` (Faust events) once all are acknowledged."""
        if self._failed is not None:
            raise self._failed
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        while self._queued >= self.max_queued:  # the broker is far behind: hold the caller
            self._space.clear()
            await self._space.wait()
            if self._failed is not None:
                raise self._failed
        self._queue.append((list(records), list(tokens), list(produced_ms), time.perf_counter()))
        self._queued += len(records)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if not self._settling:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            taken, self._queue, self._queued = self._queue, [], 0
            self._space.set()
            records = [r for recs, _, _, _ in taken for r in recs]
            try:
                futures = await self.sender.send(records)
            except Exception as exc:  # the producer refused (stopped, record too large): stop the agent
                self._fail(exc)
                return
            task = asyncio.ensure_future(self._settle(futures, taken))
            self._settling.add(task)
            task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not self._queue and not self._settling:
            self._idle.set()

    def _fail(self, exc: BaseException) -> None:
        log.error("publishing failed (%s: %s); the events stay unacked and will be redelivered",
                  type(exc).__name__, exc)
        self._failed = exc
        self._space.set()
        self._idle.set()
        if self.on_failure is not None:
            self.on_failure(exc)

    async def _settle(self, futures: list[Any], taken: list[tuple[list[OutRecord], list[Any], list[int], float]]) -> None:
        try:
            if futures:
                await asyncio.gather(*futures)
        except Exception as exc:  # the broker refused or the producer stopped: do not ack, stop the agent
            self._fail(exc)
            return
        m = self.metrics
        ack = self.ack
        now = time.perf_counter()
        now_ms = time.time() * 1000
        for _recs, tokens, produced_ms, t0 in taken:
            for tok in tokens:
                ack(tok)
            m.stage.labels("publish").observe(now - t0)
            for p in produced_ms:
                if p:
                    m.e2e.observe(max(0.0, (now_ms - p) / 1000.0))

    async def flush(self) -> None:
        """Wait until everything queued is sent and acknowledged (raises a failed send)."""
        await self._idle.wait()
        if self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)
        if self._failed is not None:
            raise self._failed

    def check(self) -> None:
        """Raise the error of a failed send, if any (the agent calls it between batches)."""
        if self._failed is not None:
            raise self._failed
