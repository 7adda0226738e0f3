"""Topic creation: idempotent, the broker's default replication, "already exists" known by its error code."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka.admin import AdminClient

from streaming.errors import UnreachableError
from streaming.events.topics import ensure_topics
from tests.conftest import Servers, unique

pytestmark = pytest.mark.integration


def test_topics_are_created_once_with_the_brokers_replication(servers: Servers) -> None:
    names = [unique("tp-a"), unique("tp-b")]
    # two creators racing: one creates, the other meets TOPIC_ALREADY_EXISTS and carries on
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(ensure_topics, servers.bootstrap, names, 3) for _ in range(2)]:
            f.result()
    ensure_topics(servers.bootstrap, names, 3)  # and again: nothing to do
    meta = AdminClient({"bootstrap.servers": servers.bootstrap}).list_topics(timeout=10).topics
    for name in names:
        parts = meta[name].partitions
        assert len(parts) == 3 and all(len(p.replicas) == 1 for p in parts.values())  # one node: one replica


def test_an_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(UnreachableError, match="does not answer"):
        ensure_topics("127.0.0.1:1", ["x"], 1, timeout=2)


def test_a_key_lands_on_the_partition_the_worker_would_choose(servers: Servers) -> None:
    """The CLI's producer and the worker's aiokafka hash keys alike (murmur2, Kafka's default)."""
    from aiokafka.partitioner import DefaultPartitioner

    from streaming.events.codec import Codec
    from streaming.events.producer import EventProducer
    from streaming.events.schemas import SchemaRegistry
    from streaming.settings import project_root
    from tests.helpers import transaction

    topic = unique("murmur")
    ensure_topics(servers.bootstrap, [topic], 4)
    landed: dict[bytes, int] = {}
    codec = Codec(SchemaRegistry.from_dir(project_root() / "schemas"))
    prod = EventProducer(servers.bootstrap, codec, "transaction", topic, key_fields=["card_id"], linger_ms=5,
                         on_delivery=lambda err, msg: landed.__setitem__(msg.key(), msg.partition()))
    for i in range(64):
        prod.send(transaction(unique("m"), card=f"card-{i}"))
    assert prod.close() == 0 and len(landed) == 64
    partitioner = DefaultPartitioner()
    assert {k: partitioner(k, [0, 1, 2, 3], [0, 1, 2, 3]) for k in landed} == landed
    assert len(set(landed.values())) == 4  # the keys spread over every partition
