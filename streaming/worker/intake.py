"""Whole consumer fetches to a handler, instead of one Faust event per message.

Faust's consumer hands each fetched message to the conductor one at a time: per message, a
``wait_first`` (two tasks and an ``asyncio.wait``), a lock, an ``Event``, a channel queue, and the
stream's iteration. On a worker that scores micro-batches that machinery cost more CPU than the
scoring itself (docs/benchmarks.md, "Worker CPU per event"). The worker therefore registers a
*batch handler* for the events and labels topics (:func:`register_batch_handler`): the drain loop
below gives it every message of those topics that one fetch returned, as one list, and it keeps
Faust's per-message path for every other topic.

What stays Faust's: the consumer group, partition assignment and rebalances (the drain stops when
the flow stops and skips partitions that are no longer active), offsets and commits: each message
is tracked (``Consumer.track_message``) before the handler gets it and acked on the consumer
(``Consumer.ack``) once its output is on the broker, so Faust commits only acknowledged offsets
and waits for them on a rebalance or a clean stop. Before a rebalance takes partitions away, the
consumer drains the worker's loops and commits what they acknowledged
(:meth:`BatchDrain.on_partitions_revoked`): Faust itself would forget those acknowledgements, and
the partitions' next owner would score every event since the last periodic commit again.

A handler that raises ends the process (:func:`streaming.worker.fatal.crash`): the records it held
stay unacknowledged and are redelivered after the supervisor restarts the worker. Records are
turned into dead letters one by one inside the handlers; what escapes one is a failure of the
worker itself (its publisher, its inference loop), not of a record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streaming.worker.fatal import crash

__all__ = ["BatchDrain", "BatchHandler", "register_batch_handler"]

log = logging.getLogger(__name__)

#: how long a revocation waits for the broker's log ends before it gives up committing
LOG_END_TIMEOUT_S = 5.0

#: gets every message of its topic one fetch returned (all partitions, offset order within each)
BatchHandler = Callable[[list[Any]], Awaitable[None]]


def register_batch_handler(app: faust.App, topic: faust.TopicT, handler: BatchHandler) -> None:
    """Subscribe the worker to ``topic`` and deliver its messages to ``handler`` a fetch at a time."""
    app.topics.add(topic)  # the conductor subscribes to it and enables acks; no stream reads it
    handlers: dict[str, BatchHandler] = app.__dict__.setdefault("batch_handlers", {})
    for name in topic.topics:
        handlers[name] = handler


class BatchDrain:
    """A mixin for a ``faust.transport.consumer.Consumer``: the drain loop with batch handlers, and a commit
    of what was acknowledged before a rebalance takes partitions away."""

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """Drain the app's loops and commit, then Faust's revocation.

        Faust's consumer first forgets the revoked partitions' acknowledgements and then runs the app's
        revocation (which drains the worker's loops); it commits there only with ``stream_wait_empty``,
        which the worker turns off. Left alone, everything acknowledged since the last periodic commit
        would be read again by the partitions' next owner (scored twice, flagged ``redelivered``)."""
        me: Any = self
        app = me.app
        if revoked and not app.should_stop and me.assignment():
            me.stop_flow()  # no fetch is handed on from here (the drain loop checks the flow)
            for drain in getattr(app, "drains", ()):
                await drain()
            await me.maybe_wait_for_commit_to_finish()  # a periodic commit that began before the last acks
            lost = await self._logs_lost()
            if lost is None:
                await me.commit()
            else:  # committing old offsets to a broker that restarted empty would skip its new records
                log.warning("not committing before the rebalance: %s", lost)
        await super().on_partitions_revoked(revoked)  # type: ignore[misc]

    async def _logs_lost(self) -> str | None:
        """Why the broker's logs cannot take a commit now (a log end went back, or it cannot be read), or None.

        A rebalance also follows a broker that restarted without storage: its logs start again at 0, and
        offsets from before would be committed past records it has not served yet (measured with
        ``streaming chaos``: 2,082 labels skipped). The log watch (:mod:`streaming.worker.logwatch`) ends the
        worker a few seconds later; until then nothing is committed."""
        me: Any = self
        watch = getattr(me.app, "logwatch", None)
        if watch is None:
            return None
        wanted = [tp for tp in me.assignment() if tp.topic in watch.topics]
        try:
            ends = await asyncio.wait_for(me.highwaters(*wanted), LOG_END_TIMEOUT_S)
        except Exception as exc:  # the broker is down or slow: no commit is safe to make now
            return f"the broker's log ends could not be read ({type(exc).__name__}: {exc})"
        return watch.check_highwaters(ends)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs inside Faust's Fetcher
        handlers: dict[str, BatchHandler] = getattr(self.app, "batch_handlers", {})  # type: ignore[attr-defined]
        if not handlers:
            await super()._drain_messages(fetcher)  # type: ignore[misc]
            return
        me: Any = self
        fetcher_stopped = fetcher._stopped.is_set
        to_message = me._to_message
        track = me.track_message
        callback = me.callback
        read_offset = me._read_offset
        try:
            while not (me._stopped.is_set() or fetcher_stopped()):
                records, active = await me._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or me.should_stop:
                    continue
                if not me.flow_active:  # a rebalance began while fetching: back to the committed offsets
                    await me.perform_seek()
                    continue
                generation = me.app.consumer_generation_id
                batches: dict[BatchHandler, list[Any]] = {}
                read: dict[Any, int] = {}
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in me._buffered_partitions:
                        continue
                    last = read_offset[tp]
                    handler = handlers.get(tp.topic)
                    if handler is None:  # not ours: Faust's per-message path
                        for rec in recs:
                            if last is None or rec.offset >= last:
                                await me.wait_first(callback(to_message(tp, rec)), me.suspend_flow.wait())
                                read_offset[tp] = last = rec.offset
                        continue
                    out = batches.setdefault(handler, [])
                    for rec in recs:
                        if last is not None and rec.offset < last:
                            continue  # already read (a fetch that overlapped a seek)
                        if last is not None and rec.offset - last > 1:
                            await me._add_gap(tp, last + 1, rec.offset)  # offsets missing in the log
                        out.append(to_message(tp, rec))
                        last = rec.offset
                    if last is not None:
                        read[tp] = last
                    me.app.monitor.track_tp_end_offset(tp, me.highwater(tp))
                if me.app.consumer_generation_id != generation:
                    continue  # a rebalance during this fetch: nothing taken, the new assignment re-reads it
                read_offset.update(read)
                for handler, msgs in batches.items():
                    if msgs:
                        for msg in msgs:
                            track(msg)  # pending until the handler's ack: commits wait for it
                        try:
                            await me.wait_first(handler(msgs), me.suspend_flow.wait())
                        except Exception as exc:
                            if isinstance(exc, me.consumer_stopped_errors) and me.transport.app.should_stop:
                                return
                            crash(f"the {msgs[0].topic!r} handler", exc)
        except me.consumer_stopped_errors:
            if me.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if me.transport.app.should_stop:
                return
            raise
