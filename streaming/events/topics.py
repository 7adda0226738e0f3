"""Creating the system's topics (idempotent).

The replication factor is the broker's default (``-1`` in CreateTopics, KIP-464): a Kafka cluster's
``default.replication.factor`` applies, and the embedded broker (one node) makes one replica. A topic
that exists already is recognised by its error code (``TOPIC_ALREADY_EXISTS``), not by its message.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streaming.errors import UnreachableError

__all__ = ["ensure_topics"]


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout: float = 10.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise UnreachableError(f"the Kafka broker at {bootstrap} does not answer ({exc.args[0]})") from None
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=-1)  # the broker's default
              for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise UnreachableError(f"could not create topic {name}: {exc}") from None
