"""Creating the system's topics (idempotent).

The replication factor is the broker's default (``-1`` in CreateTopics, KIP-464): a Kafka cluster's
``default.replication.factor`` applies, and the embedded broker (one node) makes one replica. A topic
that exists already is recognised by its error code (``TOPIC_ALREADY_EXISTS``), not by its message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streaming.errors import UnreachableError
from streaming.events.security import auth_error, client_config

__all__ = ["ensure_topics"]

#: the probe's librdkafka log lines: its errors reach us through error_cb and become one clear error
_QUIET = logging.getLogger("streaming.kafka.probe")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout: float = 10.0) -> None:
    errors: list[str] = []  # librdkafka's reasons (a refused login, a failed TLS handshake) come through error_cb
    admin = AdminClient(client_config(bootstrap, {"socket.timeout.ms": int(timeout * 1000),
                                                  "error_cb": lambda err: errors.append(str(err)),
                                                  "logger": _QUIET}))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        admin.poll(0.1)  # error_cb runs from poll
        refused = auth_error(bootstrap, "; ".join(errors))
        if refused is not None:
            raise refused from None
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
