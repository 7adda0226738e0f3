"""The score loop: consumer batches in, predictions out, events acked once their records are on the broker.

One :class:`ScoreLoop` per worker. Its three steps:

* :meth:`ScoreLoop.take` gets a whole consumer fetch (every record of the events topic one
  ``getmany`` returned, across partitions), decodes and checks it, reads its window features in
  one feature-store call, publishes its dead letters and puts the rows on the inference queue
  (waiting while the queue is full: the consumer stops fetching);
* :meth:`ScoreLoop.run_batch` runs one batch the policy dispatched: scores, predictions, the
  feature log; the publisher sends them and acks their events once the broker has them;
* :meth:`ScoreLoop.drain` scores what is queued and waits for its acknowledgements (a clean stop).

Nothing here knows Faust: a record's ``token`` is whatever the caller's ``ack`` takes (the worker
passes Faust messages and acks them on the consumer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from streaming.inference.batching import BatchPolicy, Dispatch
from streaming.inference.manager import ModelManager
from streaming.observability.metrics import Metrics
from streaming.worker.batcher import Batcher, seed
from streaming.worker.publisher import Publisher
from streaming.worker.records import InRecord
from streaming.worker.score import Row, ScoreProcessor

__all__ = ["ScoreLoop"]

log = logging.getLogger(__name__)


class ScoreLoop:
    """Takes consumer batches, queues their rows for the batch policy, scores and publishes each dispatched batch."""

    def __init__(self, scorer: ScoreProcessor, publisher: Publisher, policy: BatchPolicy, models: ModelManager,
                 metrics: Metrics, *, queue_rows: int, take_rows: int,
                 on_failure: Callable[[BaseException], Any] | None = None, drain_timeout_s: float = 5.0) -> None:
        self.scorer = scorer
        self.publisher = publisher
        self.policy = policy
        self.models = models
        self.metrics = metrics
        self.take_rows = take_rows
        self._serving = models.active
        self.batcher: Batcher[Row] = Batcher(policy, self.run_batch, bound=queue_rows, metrics=metrics)
        self._runner: asyncio.Future[None] | None = None
        self.on_failure = on_failure  # called at once when the inference loop fails (the worker exits)
        self.drain_timeout_s = drain_timeout_s

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.ensure_future(self.batcher.run())
            self._runner.add_done_callback(self._ended)

    def _ended(self, runner: asyncio.Future[None]) -> None:
        if runner.cancelled() or self.on_failure is None:
            return
        exc = runner.exception()
        if exc is not None:
            self.on_failure(exc)

    def check(self) -> None:
        """Raise what stopped the inference loop or the publisher (nothing of the failed batch is acked)."""
        if self._runner is not None and self._runner.done():
            self._runner.result()
        self.publisher.check()

    async def take(self, records: Sequence[InRecord], tokens: Sequence[Any]) -> None:
        """Prepare a consumer fetch and queue its rows (dead letters go out at once), ``take_rows`` at a time:
        a large fetch never has more than that many events with their features applied and not queued."""
        self.start()
        for i in range(0, len(records), self.take_rows):
            self.check()
            prepared = await self.scorer.prepare(records[i:i + self.take_rows], tokens[i:i + self.take_rows])
            if prepared.dead:
                await self.publisher.publish([o for o, _ in prepared.dead], [t for _, t in prepared.dead], [])
            await self.batcher.put(prepared.rows)  # waits while the queue is full: the consumer pauses
            self.metrics.queue_rows.set(len(self.batcher))

    async def run_batch(self, rows: list[Row], _dispatch: Dispatch) -> float:
        """Score one dispatched batch and hand its predictions to the publisher; returns its service time."""
        active = self.models.active
        if active is not self._serving:  # a new version: its provider and warm-up timings
            self._serving = active
            seed(self.policy, active)
        batch = await self.scorer.score(rows, wait_log=False)
        await self.publisher.publish(batch.out, [r.token for r in rows], batch.produced_ms)
        return batch.service_s

    async def drain(self, timeout_s: float | None = None) -> None:
        """Score what is queued and wait for every acknowledgement (before a rebalance's or a stop's commit).

        The inference loop keeps running (a rebalance is followed by more events); a stop ends it with
        the event loop."""
        try:
            await asyncio.wait_for(asyncio.shield(self._drain()), timeout_s or self.drain_timeout_s)
        except Exception as exc:
            log.warning("committing with %d rows unscored (%s); they will be redelivered", len(self.batcher),
                        type(exc).__name__ + (f": {exc}" if str(exc) else ""))

    async def _drain(self) -> None:
        await self.batcher.drained()
        await self.publisher.flush()
        await self.scorer.flush_logs()

    def __len__(self) -> int:
        return len(self.batcher)
