"""Reading a topic without a consumer group join (``assign()``; docs/platform.md: joins are slow on Tansu)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Message, TopicPartition

from streaming.errors import UnreachableError

__all__ = ["TopicReader"]


class TopicReader:
    """Reads every partition of ``topic`` from the beginning or the end."""

    def __init__(self, bootstrap: str, topic: str, *, from_beginning: bool = True, fetch_wait_ms: int = 5,
                 config: Mapping[str, Any] | None = None) -> None:
        """``config``: more librdkafka settings for the consumer (e.g. statistics and their callback)."""
        self.topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": fetch_wait_ms,
                "fetch.min.bytes": 1,
                "log.connection.close": False,
                **(config or {}),
            }
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
