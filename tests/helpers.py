"""Small helpers for integration tests (real broker, real Redis)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Producer

from streaming.events.codec import Codec
from streaming.events.reader import TopicReader
from streaming.events.topics import ensure_topics

S = 1_000_000


def transaction(eid: str, card: str = "c1", amount: float = 25.0, **kw: Any) -> dict[str, Any]:
    ev = {"event_id": eid, "card_id": card, "merchant_id": "m1", "amount": amount, "country": "US",
          "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": time.time_ns() // 1000}
    ev.update(kw)
    return ev


def produce_raw(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    ensure_topics(bootstrap, [topic], 1)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for v in values:
        p.produce(topic, value=v, key=key)
    assert p.flush(10) == 0


def read_until(bootstrap: str, topic: str, predicate: Any, timeout: float = 30.0) -> list[Any]:
    """Read ``topic`` from the beginning until ``predicate(messages)`` holds or the time is up."""
    ensure_topics(bootstrap, [topic], 1)
    reader = TopicReader(bootstrap, topic)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            got.extend(reader.poll(0.05))
            if predicate(got):
                break
        return got
    finally:
        reader.close()


def decoded(codec: Codec, subject: str, msgs: list[Any]) -> list[dict[str, Any]]:
    return [codec.decode(subject, m.value()) for m in msgs]
