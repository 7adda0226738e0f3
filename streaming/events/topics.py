"""Creating the system's topics (idempotent)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streaming.errors import UnreachableError

__all__ = ["ensure_topics"]


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout: float = 10.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise UnreachableError(f"the Kafka broker at {bootstrap} does not answer ({exc.args[0]})") from None
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise UnreachableError(f"could not create topic {name}: {exc}") from None
