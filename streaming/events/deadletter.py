"""Dead letters: the original key and value, with the reason in headers.

A value (or key) larger than the pipeline's ``dead_letter_bytes`` is cut to that size, and the
headers say so (``dlq.truncated``, the original's size and sha256): a dead letter must always
be publishable, and a record the broker refused for its size would otherwise stop the worker
again after every restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DeadLetter", "HEADER_PREFIX", "SourceRecord"]

HEADER_PREFIX = "dlq."


class SourceRecord(Protocol):
    """Where a dead letter comes from: a consumed record (the worker's ``InRecord`` is one)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int | None: ...


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, and why.

    >>> dl = DeadLetter(b"k", b"v", "events", 0, 42, 1000, "decode", "DecodeError", "empty value")
    >>> dict(dl.headers())["dlq.reason"]
    b'empty value'
    >>> big = DeadLetter(b"k", b"x" * 100, "events", 0, 43, None, "decode", "LimitError", "too big")
    >>> key, value, headers = big.parts(max_bytes=10)
    >>> value, dict(headers)["dlq.truncated"], dict(headers)["dlq.original_size"]
    (b'xxxxxxxxxx', b'1', b'100')
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

    @classmethod
    def of(cls, rec: SourceRecord, stage: str, exc: BaseException) -> DeadLetter:
        """The dead letter of ``rec``, which failed at ``stage`` with ``exc``."""
        return cls(rec.key, rec.value, rec.topic, rec.partition, rec.offset, rec.timestamp_ms, stage,
                   type(exc).__name__, str(exc))

    def parts(self, max_bytes: int | None = None) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """The dead letter's key, value and headers, the value and key cut to ``max_bytes`` if larger."""
        headers = self.headers()
        key, value = self.key, self.value
        if max_bytes is not None and (len(value or b"") > max_bytes or len(key or b"") > max_bytes):
            headers += [
                (HEADER_PREFIX + "truncated", b"1"),
                (HEADER_PREFIX + "original_size", str(len(value or b"")).encode()),
                (HEADER_PREFIX + "original_sha256", hashlib.sha256(value or b"").hexdigest().encode()),
                (HEADER_PREFIX + "original_key_size", str(len(key or b"")).encode()),
            ]
            value = None if value is None else value[:max_bytes]
            key = None if key is None else key[:max_bytes]
        return key, value, headers

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
