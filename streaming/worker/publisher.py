"""Publishing a batch's records and acking its events once the broker has them.

:meth:`Publisher.publish` hands every record to the producer at once (it only
queues them) and returns; a task awaits the broker's acknowledgements and only
then acks the batch's Faust events, so an offset is committed only after its
prediction (or dead letter) is on the broker. The inference loop does not wait
for the broker: the next batch runs while this one's acknowledgements are on
their way. At most ``max_pending`` batches are in flight; a failed send is
raised from the next :meth:`publish` (the agent stops; unacked events are
redelivered).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import faust

from streaming.observability.metrics import Metrics
from streaming.worker.records import OutRecord

__all__ = ["Publisher", "ack_event"]


def ack_event(app: faust.App, event: Any) -> None:
    """The final ack of a Faust event whose message was ``incref``'d when it was taken."""
    if event is None:
        return
    msg = event.message
    if event.ack():  # the last reference: the consumer may now commit this offset
        app.sensors.on_message_out(msg.tp, msg.offset, msg)


class Publisher:
    def __init__(self, app: faust.App, metrics: Metrics, *, max_pending: int = 16) -> None:
        self.app = app
        self.metrics = metrics
        self.max_pending = max_pending
        self._pending: deque[asyncio.Task[None]] = deque()
        self._failed: BaseException | None = None

    async def publish(self, records: Sequence[OutRecord], tokens: Sequence[Any], produced_ms: Sequence[int]) -> None:
        """Send ``records``; ack ``tokens`` (Faust events) once all are acknowledged."""
        if self._failed is not None:
            raise self._failed
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        while len(self._pending) >= self.max_pending:
            await asyncio.wait([self._pending.popleft()])
        t0 = time.perf_counter()
        producer = self.app.producer
        futures = [await producer.send(r.topic, r.key, r.value, None, None, r.headers) for r in records]
        self._pending.append(asyncio.ensure_future(self._settle(futures, list(tokens), list(produced_ms), t0)))

    async def _settle(self, futures: list[Any], tokens: list[Any], produced_ms: list[int], t0: float) -> None:
        try:
            if futures:
                await asyncio.gather(*futures)
        except Exception as exc:  # the broker refused or the producer stopped: do not ack, stop the agent
            self._failed = exc
            return
        for tok in tokens:
            ack_event(self.app, tok)
        m = self.metrics
        m.stage.labels("publish").observe(time.perf_counter() - t0)
        now_ms = time.time() * 1000
        for p in produced_ms:
            if p:
                m.e2e.observe(max(0.0, (now_ms - p) / 1000.0))

    async def flush(self) -> None:
        """Wait for every batch in flight."""
        while self._pending:
            await asyncio.wait([self._pending.popleft()])
        if self._failed is not None:
            raise self._failed
