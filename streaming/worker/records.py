"""Records in and out of the worker, independent of the Kafka client."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["InRecord", "OutRecord"]


class InRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None  # the record's Kafka timestamp
    received_us: int  # when the worker took it


class OutRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
