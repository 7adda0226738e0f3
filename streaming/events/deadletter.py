"""Dead letters: the original key and value, with the reason in headers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeadLetter", "HEADER_PREFIX"]

HEADER_PREFIX = "dlq."


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, and why.

    >>> dl = DeadLetter(b"k", b"v", "events", 0, 42, 1000, "decode", "DecodeError", "empty value")
    >>> dict(dl.headers())["dlq.reason"]
    b'empty value'
    """

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    stage: str
    error_class: str
    reason: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_PREFIX + "topic", self.topic.encode()),
            (HEADER_PREFIX + "partition", str(self.partition).encode()),
            (HEADER_PREFIX + "offset", str(self.offset).encode()),
            (HEADER_PREFIX + "timestamp", str(self.timestamp_ms if self.timestamp_ms is not None else "").encode()),
            (HEADER_PREFIX + "stage", self.stage.encode()),
            (HEADER_PREFIX + "error_class", self.error_class.encode()),
            (HEADER_PREFIX + "reason", self.reason.encode("utf-8", "replace")[:4096]),
        ]
