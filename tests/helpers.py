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


def score_events(bootstrap: str, env: dict[str, str], codec: Codec, ids: list[str], cards: int,
                 timeout: float = 60) -> list[Any]:
    """Publish one transaction per id (cards ``c0..``) to the worker's events topic; read until every id has a
    prediction. Returns the raw prediction records of those ids."""
    from streaming.events.producer import EventProducer

    prod = EventProducer(bootstrap, codec, "transaction", env["STREAMING_TOPIC_EVENTS"], key_fields=["card_id"],
                         linger_ms=5)
    for i, eid in enumerate(ids):
        prod.send(transaction(eid, card=f"c{i % cards}-{ids[0]}"))
    assert prod.close() == 0
    want = set(ids)
    msgs = read_until(bootstrap, env["STREAMING_TOPIC_PREDICTIONS"],
                      lambda got: want <= {p["event_id"] for p in decoded(codec, "prediction", got)}, timeout)
    return [m for m in msgs if codec.decode("prediction", m.value())["event_id"] in want]
