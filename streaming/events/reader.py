"""Reading a topic without a consumer group join (``assign()``; docs/platform.md: joins are slow on Tansu)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from streaming.errors import UnreachableError
from streaming.events.security import client_config

__all__ = ["EndRead", "TopicReader"]


class TopicReader:
    """Reads every partition of ``topic`` from the beginning or the end."""

    def __init__(self, bootstrap: str, topic: str, *, from_beginning: bool = True, fetch_wait_ms: int = 5,
                 config: Mapping[str, Any] | None = None) -> None:
        """``config``: more librdkafka settings for the consumer (e.g. statistics and their callback)."""
        self.topic = topic
        self._consumer = Consumer(
            client_config(bootstrap, {
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": fetch_wait_ms,
                "fetch.min.bytes": 1,
                "log.connection.close": False,
                **(config or {}),
            })
        )
        try:
            meta = self._consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise UnreachableError(f"cannot read topic {topic} from {bootstrap}: {exc.args[0]}") from None
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise UnreachableError(f"topic {topic} does not exist on {bootstrap}")
        parts = []
        for p in sorted(tmeta.partitions):
            if from_beginning:
                parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
            else:  # resolve the end now, so records that arrive before the first fetch are not skipped
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                parts.append(TopicPartition(topic, p, high if high >= 0 else OFFSET_END))
        self._consumer.assign(parts)

    @property
    def partitions(self) -> list[int]:
        return [tp.partition for tp in self._consumer.assignment()]

    def end_offsets(self) -> dict[int, int]:
        """The high watermark of every partition."""
        return {
            p: max(0, self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1])
            for p in self.partitions
        }

    def poll(self, timeout: float = 0.1, max_records: int = 1000) -> list[Message]:
        msgs = self._consumer.consume(max_records, timeout)
        return [m for m in msgs if m.error() is None]

    def close(self) -> None:
        self._consumer.close()


class EndRead:
    """Reading a topic up to its end as it was when the read started, on a reader from the beginning.

    The end offsets are taken at the start. The embedded broker's high watermark counts batches, not
    records (docs/platform.md), so a partition's end is "reached" at its last offset and read on until it
    is quiet; a record at or past the end, stamped after ``started_ms``, is a newer one: it and everything
    after it in its partition are counted (``newer``), not returned.
    """

    def __init__(self, reader: TopicReader, started_ms: int) -> None:
        self.reader = reader
        self.started_ms = started_ms
        self.ends = reader.end_offsets()
        self.reached = {p: end <= 0 for p, end in self.ends.items()}
        self.position = dict.fromkeys(self.ends, -1)
        self.past: set[int] = set()  # partitions where a record written after the start was seen
        self.last_seen = dict.fromkeys(self.ends, time.monotonic())
        self.newer = 0
        self.polled = 0  # records the last poll returned, newer ones included

    def poll(self, timeout: float = 0.2) -> list[Message]:
        """The next records written before the start."""
        msgs = self.reader.poll(timeout)
        self.polled = len(msgs)
        now = time.monotonic()
        out = []
        for msg in msgs:
            p, off = int(msg.partition() or 0), int(msg.offset() or 0)
            self.last_seen[p] = now
            self.position[p] = off
            end = self.ends.get(p, 0)
            if off >= end - 1:
                self.reached[p] = True
            ts_type, ts = msg.timestamp()
            if p in self.past or (off >= end and ts_type != TIMESTAMP_NOT_AVAILABLE and ts > self.started_ms):
                self.past.add(p)
                self.newer += 1
                continue
            out.append(msg)
        return out

    def done(self, idle_s: float, stall_s: float | None = None) -> bool:
        """Every partition has passed its end, or reached it and been quiet ``idle_s``; with ``stall_s``, a
        partition quiet that long short of its end counts as done too."""
        now = time.monotonic()
        return all(p in self.past or now - self.last_seen[p] >= (
            idle_s if self.reached[p] else (float("inf") if stall_s is None else stall_s)) for p in self.ends)

    def behind(self) -> str:
        """Where the partitions short of their end are (for an error message)."""
        return ", ".join(f"partition {p} at offset {self.position[p]} of {self.ends[p]}"
                         for p in self.ends if not self.reached[p]) or "every partition reached its end"
