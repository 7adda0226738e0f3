"""Publishing records that are checked against their schema first."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Producer
from fastavro.validation import ValidationError, validate

from streaming.events.codec import Codec
from streaming.events.security import client_config

__all__ = ["EventProducer", "entity_key", "EVENT_LINGER_MS", "LABEL_LINGER_MS"]

#: Default linger of every producer here: a few ms batches requests on Tansu (docs/platform.md) at little latency.
EVENT_LINGER_MS = 20.0

#: Linger of label producers. Labels arrive seconds after their events, so a tenth of a second more costs
#: nothing, and it sends 5x fewer, larger batches than the events' ``EVENT_LINGER_MS``. On the embedded broker (Tansu,
#: memory storage) that matters: a fetch that finds new data lists every batch the partition holds, so a
#: topic's broker CPU grows with (batches per second)^2 x time (docs/benchmarks.md, "Demo").
LABEL_LINGER_MS = 100.0


def entity_key(record: dict[str, Any], fields: Sequence[str]) -> str:
    """The Kafka key of a record: its entity key fields joined by ``|``.

    >>> entity_key({"card_id": "c1", "merchant_id": "m9"}, ["card_id"])
    'c1'
    >>> entity_key({"card_id": "c1", "merchant_id": "m9"}, ["card_id", "merchant_id"])
    'c1|m9'
    """
    if len(fields) == 1:
        return str(record[fields[0]])
    return "|".join(str(record[f]) for f in fields)


class EventProducer:
    """Validate records against a subject's schema, then publish them.

    Batches like every producer in this project (``linger_ms``); call
    :meth:`flush` before exiting. ``as_json`` publishes JSON instead of Avro.
    """

    def __init__(
        self,
        bootstrap: str,
        codec: Codec,
        subject: str,
        topic: str,
        *,
        key_fields: Sequence[str] = (),
        linger_ms: float = EVENT_LINGER_MS,
        as_json: bool = False,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.codec = codec
        self.subject = subject
        self.schema = codec.registry.latest(subject)
        self.topic = topic
        self.key_fields = list(key_fields)
        self.as_json = as_json
        self._on_delivery = on_delivery
        self._producer = Producer(
            client_config(bootstrap, {
                "linger.ms": linger_ms,
                "acks": "all",
                "enable.idempotence": False,
                "partitioner": "murmur2_random",  # Kafka's default (Java clients, the worker's aiokafka)
                "log.connection.close": False,
            })
        )
        self.sent = 0

    def validate(self, record: dict[str, Any]) -> None:
        try:
            validate(record, self.schema.parsed, raise_errors=True)
        except ValidationError as exc:
            raise ValueError(f"record does not match schema {self.subject!r}: {'; '.join(map(str, exc.errors))}") from None

    def send(self, record: dict[str, Any], *, key: str | None = None, timestamp_ms: int | None = None) -> None:
        self.validate(record)
        value = self.codec.encode_json(record) if self.as_json else self.codec.encode(self.subject, record)
        if key is None and self.key_fields:
            key = entity_key(record, self.key_fields)
        self.send_raw(value, key=key, timestamp_ms=timestamp_ms)

    def send_raw(self, value: bytes, *, key: str | bytes | None = None, timestamp_ms: int | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if self._on_delivery is not None:
            kwargs["on_delivery"] = self._on_delivery
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        self.sent += 1

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for delivery; return how many records are still undelivered."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 5.0) -> int:
        """Flush, then release the client (its threads stop with it)."""
        left = self.flush(timeout)
        del self._producer
        return left
