"""What a chaos run publishes: valid events, hostile records among them, and labels that follow.

The producers never create topics (``allow.auto.create.topics=false``): after the broker restart the
topics must come back from the worker (or the run reports that they did not), and a topic that a
producer's metadata request auto-created on Tansu would have four partitions, three of which no
worker of a one-partition deployment reads. Every delivery is confirmed: the accounting counts what
the broker acknowledged, and a label's offset tells whether the worker's group committed past it.
"""

from __future__ import annotations

import random
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Producer

from loadtest.reader import first_string_field
from streaming.events.codec import MAGIC, Codec
from streaming.events.producer import EVENT_LINGER_MS, LABEL_LINGER_MS, entity_key
from streaming.events.security import client_config
from streaming.pipeline.spec import Pipeline

__all__ = ["HOSTILE_KINDS", "HOSTILE_PREFIX", "Delivered", "LabelQueue", "Traffic", "hostile_record"]

#: the key (and, where it has one, the event id) of every hostile record starts with this
HOSTILE_PREFIX = "hostile-"

#: each must end as one dead letter (the worker's limits and codec, docs/reliability.md)
HOSTILE_KINDS = ("garbage", "deep_json", "huge_amount", "nanosecond_time", "oversized", "avro_trailing",
                 "unknown_schema", "wrong_shape")


def hostile_record(kind: str, marker: str, template: dict[str, Any], codec: Codec, subject: str,
                   rng: random.Random) -> bytes:
    """A record of ``kind`` (one of :data:`HOSTILE_KINDS`) that carries ``marker`` as its event id where it has one.

    >>> from streaming.events.schemas import SchemaRegistry
    >>> from streaming.settings import project_root
    >>> codec = Codec(SchemaRegistry.from_dir(project_root() / "schemas"))
    >>> ev = {"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 1.0, "country": "US",
    ...       "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": 1_700_000_000_000_000}
    >>> sizes = {k: len(hostile_record(k, "hostile-1", ev, codec, "transaction", random.Random(1)))
    ...          for k in HOSTILE_KINDS}
    >>> sizes["oversized"] > 65_536 and sizes["deep_json"] > 2000
    True
    """
    ev = {**template, "event_id": marker, "event_time": time.time_ns() // 1000}
    m = marker.encode()
    if kind == "garbage":
        return b"\xff\xfe" + m + rng.randbytes(32)
    if kind == "deep_json":
        return b'{"event_id": "' + m + b'", "card_id": ' + b"[" * 1000 + b"]" * 1000 + b', "amount": 1}'
    if kind == "huge_amount":
        return codec.encode(subject, {**ev, "amount": 1e308})
    if kind == "nanosecond_time":
        return codec.encode(subject, {**ev, "event_time": time.time_ns()})
    if kind == "oversized":
        return orjson.dumps({**ev, "merchant_id": "m" * 70_000}, option=orjson.OPT_SERIALIZE_NUMPY)
    if kind == "avro_trailing":
        return codec.encode(subject, ev) + b"\x02\x04trailing"
    if kind == "unknown_schema":
        return struct.pack(">bI", MAGIC, 987_654) + codec.encode(subject, ev)[5:]
    if kind == "wrong_shape":
        return orjson.dumps({"event_id": marker, "amount": "a lot"})
    raise ValueError(f"unknown hostile kind {kind!r}")


@dataclass
class Delivered:
    """What the broker acknowledged (filled by the delivery callbacks)."""

    events_failed: set[str] = field(default_factory=set)  # event ids (or hostile keys) the broker refused
    labels: list[tuple[int, int, str]] = field(default_factory=list)  # (partition, offset, event id)
    labels_failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the first few delivery errors, as evidence


class Traffic:
    """Two producers (events and hostile records; labels) on one broker epoch; labels wait in a queue.

    A label is published ``label_delay_s`` after its event, and not before the run has seen as many
    events accounted for (predicted or dead-lettered) as had been published up to and including it:
    one partition is processed in offset order, so its event has been scored. Labels arrive after the
    decision in every real system; published earlier, after a restart's backlog they would race their
    events and be dead-lettered by design (``label_join``: never scored), which is not a fault.
    """

    def __init__(self, bootstrap: str, codec: Codec, pipeline: Pipeline, events_topic: str, labels_topic: str,
                 *, linger_ms: float = EVENT_LINGER_MS) -> None:
        self.codec = codec
        self.pipeline = pipeline
        self.subject = pipeline.event.schema
        self.events_topic = events_topic
        self.labels_topic = labels_topic
        self.delivered = Delivered()
        base = {**client_config(bootstrap), "acks": "all", "enable.idempotence": False,
                "allow.auto.create.topics": False, "log.connection.close": False, "message.timeout.ms": 60_000,
                "partitioner": "murmur2_random"}
        self._events = Producer({**base, "linger.ms": linger_ms})
        self._labels = Producer({**base, "linger.ms": LABEL_LINGER_MS})

    # -- delivery reports
    def _event_done(self, err: Any, msg: Any) -> None:
        if err is not None:
            key = msg.key() or b""
            eid = key.decode("utf-8", "replace") if key.startswith(HOSTILE_PREFIX.encode()) else \
                first_string_field(msg.value() or b"") or "?"
            self.delivered.events_failed.add(eid)
            if len(self.delivered.errors) < 5:
                self.delivered.errors.append(f"event {eid}: {err}")

    def _label_done(self, err: Any, msg: Any) -> None:
        eid = (msg.key() or b"").decode("utf-8", "replace")
        if err is not None:
            self.delivered.labels_failed.append(eid)
            if len(self.delivered.errors) < 5:
                self.delivered.errors.append(f"label {eid}: {err}")
        else:
            self.delivered.labels.append((msg.partition(), msg.offset(), eid))

    @staticmethod
    def _produce(producer: Producer, topic: str, value: bytes, key: bytes | str, callback: Any) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    def send_event(self, ev: dict[str, Any]) -> None:
        self._produce(self._events, self.events_topic, self.codec.encode(self.subject, ev),
                      entity_key(ev, self.pipeline.event.key), self._event_done)

    def send_hostile(self, value: bytes, marker: str) -> None:
        self._produce(self._events, self.events_topic, value, marker, self._event_done)

    def send_label(self, eid: str, label: int) -> None:
        value = self.codec.encode("label", {"event_id": eid, "label": label, "label_time": time.time_ns() // 1000})
        self._produce(self._labels, self.labels_topic, value, eid, self._label_done)

    def poll(self) -> None:
        self._events.poll(0)
        self._labels.poll(0)

    def in_flight(self) -> int:
        """Records produced and not yet delivered (or failed)."""
        self.poll()
        return len(self._events) + len(self._labels)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every delivery report; how many records are still undelivered."""
        return int(self._events.flush(timeout)) + int(self._labels.flush(timeout))

    def close(self) -> int:
        left = self.flush()
        del self._events, self._labels
        return left


class LabelQueue:
    """Labels waiting for their time and for their event to be accounted for (see :class:`Traffic`)."""

    def __init__(self, delay_s: float, give_up_s: float = 120.0) -> None:
        self.delay_s = delay_s
        self.give_up_s = give_up_s
        self._q: deque[tuple[float, int, str, int]] = deque()  # (due, sequence number, event id, label)
        self.forced = 0  # labels sent although their event was not accounted for after give_up_s

    def add(self, seq: int, eid: str, label: int) -> None:
        self._q.append((time.monotonic() + self.delay_s, seq, eid, label))

    def due(self, done: int) -> list[tuple[str, int]]:
        """The labels to send now, given ``done`` records of the run accounted for."""
        now = time.monotonic()
        out = []
        q = self._q
        while q and q[0][0] <= now:
            due, seq, eid, y = q[0]
            if seq > done:
                if now - due < self.give_up_s:
                    break
                self.forced += 1
            q.popleft()
            out.append((eid, y))
        return out

    def __len__(self) -> int:
        return len(self._q)
