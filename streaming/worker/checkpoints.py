"""The label path's state across restarts: signed checkpoints in Redis, and the labels replayed after one.

Every ``checkpoint_interval_s`` and at a clean stop, the learner, the evaluator, the monitor group
and the offsets of the labels the learner has learned from are sealed
(:mod:`streaming.online.checkpoint`: HMAC-SHA256 under the checkpoint key, verified before anything
is unpickled) and written to Redis under :func:`checkpoint_name` (``<prefix>ckpt:{<pipeline>}``, or
``<prefix>ckpt:{<pipeline>}:<worker id>`` with ``STREAMING_WORKER_ID``: each worker of a group learns
from its own share of the labels, so each keeps its own learner), the previous one kept beside it. At start the newest that verifies is restored; a tampered, unreadable or
other-version checkpoint is refused with one log line and the learner starts fresh.

The label offsets Faust committed may be ahead of the checkpoint (labels learned after it, then a
crash): when the labels partitions are assigned, each is moved back to the offset after the last
label the checkpoint holds, so those labels are learned again. Their Redis claims
(:meth:`~streaming.features.store.RedisFeatureStore.claim_labels`) name the record that claimed
them, which lets the same record be learned again while a second label for the event stays a
duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from streaming.online.checkpoint import CheckpointStore, resolve_key
from streaming.online.evaluator import OnlineEvaluator
from streaming.online.learners import OnlineLearner
from streaming.online.monitor import MonitorGroup
from streaming.worker.learn import LabelProcessor
from streaming.worker.runtime import Runtime

__all__ = ["LearnerCheckpoints", "checkpoint_name"]

log = logging.getLogger(__name__)


def checkpoint_name(prefix: str, pipeline: str, worker_id: str = "") -> str:
    """The Redis key of a worker's checkpoint (one hash tag per pipeline: a checkpoint and its ``:prev`` share a slot).

    >>> checkpoint_name("fraud:", "fraud"), checkpoint_name("fraud:", "fraud", "pod-1")
    ('fraud:ckpt:{fraud}', 'fraud:ckpt:{fraud}:pod-1')
    """
    return f"{prefix}ckpt:{{{pipeline}}}" + (f":{worker_id}" if worker_id else "")


class LearnerCheckpoints:
    def __init__(self, rt: Runtime, labels: LabelProcessor) -> None:
        self.rt = rt
        self.labels = labels
        s = rt.settings
        key_file = s.path(s.checkpoint_key_file) if s.checkpoint_key_file else s.run_path / "checkpoint.key"
        key = resolve_key(s.checkpoint_key or None, key_file)
        prefix = rt.settings.redis_prefix or f"{rt.pipeline.name}:"
        client = getattr(rt.store, "client", None)
        if client is None:
            raise TypeError("checkpoints need the Redis feature store's client")
        self.store = CheckpointStore(client, checkpoint_name(prefix, rt.pipeline.name, s.worker_id), key)
        self.restored: dict[str, int] | None = None  # the offsets of the checkpoint restored, if any
        self._lock = asyncio.Lock()
        self._done = False
        self.saves = 0

    async def restore(self) -> dict[str, int] | None:
        """Load the newest verifiable checkpoint once (later calls return the same offsets)."""
        async with self._lock:
            if self._done:
                return self.restored
            self._done = True
            got = await self.store.load()
            for reason in self.store.refused:
                self.rt.metrics.checkpoints.labels("refused").inc()
                log.warning("checkpoint refused: %s", reason)
            if got is None:
                log.info("no checkpoint of the online learner: it starts fresh")
                return None
            state: dict[str, Any] = got.state
            learner, evaluator, group = state.get("learner"), state.get("evaluator"), state.get("monitors")
            if not isinstance(learner, OnlineLearner) or not isinstance(evaluator, OnlineEvaluator):
                log.warning("checkpoint refused: it does not hold a learner and an evaluator; starting fresh")
                self.rt.metrics.checkpoints.labels("refused").inc()
                return None
            rt = self.rt
            rt.learner, rt.evaluator = learner, evaluator
            if isinstance(group, MonitorGroup) and group.version == rt.models.active.tag:
                rt.monitors = group  # the same model: its monitors go on where they were
            self.labels.learned = dict(got.offsets)
            self.restored = dict(got.offsets)
            rt.metrics.checkpoints.labels("restored").inc()
            log.info("online learner restored from its checkpoint of %s (%d labels learned; label offsets %s)",
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(got.created_at)), learner.seen, got.offsets)
            return self.restored

    async def save(self) -> int:
        """Seal the state and write it (the previous checkpoint kept); the bytes written."""
        rt = self.rt
        state = {"learner": rt.learner, "evaluator": rt.evaluator, "monitors": rt.monitors}
        n = await self.store.save(state, dict(self.labels.learned),
                                  {"pipeline": rt.pipeline.name, "model_version": rt.monitors.version,
                                   "labels_learned": rt.learner.seen})
        self.saves += 1
        rt.metrics.checkpoints.labels("saved").inc()
        rt.metrics.checkpoint_bytes.set(n)
        return n

    async def seek_labels(self, consumer: Any, assigned: Any) -> None:
        """Move each newly assigned labels partition back to just after the checkpoint's last label, when
        the group's committed offset is ahead of it (those labels are learned again)."""
        offsets = await self.restore()
        if not offsets:
            return
        topic = self.rt.settings.topic_labels
        for tp in assigned:
            if tp.topic != topic or str(tp.partition) not in offsets:
                continue
            target = offsets[str(tp.partition)] + 1
            position = await consumer.position(tp)
            if position is not None and position > target:
                await consumer.seek(tp, target)
                log.info("labels partition %d: replaying from offset %d (committed %d): learned after the "
                         "checkpoint", tp.partition, target, position)
