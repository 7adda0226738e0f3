"""The feature store on a local 3-node Redis Cluster (with a password) against the same batches on a plain Redis.

Every script call touches one slot: the batch's lateness is decided on the watermarks' slot, then the batch is
split by the slot of each entity key, one call per slot, together. The vectors must equal the single Redis's,
bit for bit (distinct counts too: the same HyperLogLogs get the same elements in the same order).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from streaming.errors import ConfigError
from streaming.events.schemas import SchemaRegistry
from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore, ServedVector, WindowResult, drop_namespace
from streaming.infra.processes import free_port
from streaming.infra.redis_client import check_redis, connect_redis
from streaming.online.checkpoint import CheckpointStore
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from tests.conftest import unique
from tests.features.redis_servers import RedisProcs, local_cluster, needs_redis_server

pytestmark = [pytest.mark.scaleout, pytest.mark.integration, needs_redis_server]

S = 1_000_000
PASSWORD = "cluster-Pa55"
ALLAGGS = Path(__file__).parents[1] / "fixtures" / "allaggs" / "pipeline.toml"


@dataclass(frozen=True)
class Redises:
    cluster_url: str  # one node of the cluster
    cluster_ports: tuple[int, ...]
    single_url: str
    settings: Settings  # cluster mode, with the password


@pytest.fixture(scope="module")
def redises(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redises]:
    root = tmp_path_factory.mktemp("redis-cluster")
    procs = RedisProcs(root)
    try:
        with local_cluster(3, root / "cluster", password=PASSWORD) as cluster:
            single = procs.start("single", free_port())
            yield Redises(cluster.url, cluster.ports, f"redis://127.0.0.1:{single}/0",
                          Settings(redis_cluster=True, redis_password=PASSWORD))
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def allaggs(schema_registry: SchemaRegistry) -> Pipeline:
    return load_pipeline(ALLAGGS, schema_registry)


def tx(eid: str, card: str, t_us: int, amount: float, merchant: str) -> dict:
    return {"event_id": eid, "card_id": card, "merchant_id": merchant, "amount": amount, "country": "US",
            "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": t_us}


def stream(seed: int, n: int = 600) -> list[list[dict]]:
    """Batches over many cards and merchants (spread over the slots), out of order, redelivered within and across
    batches."""
    rng = random.Random(seed)
    t0 = 1_800_000_000 * S
    events = [tx(f"ev{seed}-{i}", f"card-{rng.randrange(250)}", t0 + i * 700_000 - rng.randrange(0, 200) * S,
                 round(rng.uniform(1, 900), 2), f"mer-{rng.randrange(60)}") for i in range(n)]
    batches = [events[i:i + 150] for i in range(0, n, 150)]
    batches[1] += rng.sample(batches[0], 20) + batches[1][:5]  # redelivered: an earlier batch's, and its own
    batches.append(rng.sample(events, 40))
    return batches


def cluster_store(r: Redises, pipeline: Pipeline, prefix: str) -> RedisFeatureStore:
    return RedisFeatureStore.connect(r.settings, r.cluster_url, pipeline, prefix=prefix)


def rows(results: list[WindowResult]) -> list[tuple[list[float], bool, bool]]:
    return [(r.values, r.applied, r.late) for r in results]


@pytest.mark.parametrize("which", ["fraud", "allaggs"])
async def test_cluster_vectors_equal_a_single_redis(redises: Redises, fraud_pipeline: Pipeline, allaggs: Pipeline,
                                                    which: str) -> None:
    pipeline = fraud_pipeline if which == "fraud" else allaggs
    prefix = unique("cl") + ":"
    cl = cluster_store(redises, pipeline, prefix)
    one = RedisFeatureStore.from_url(redises.single_url, pipeline, prefix=prefix)
    ref = ReferenceStore(pipeline)
    assert cl.cluster and not one.cluster
    try:
        slots: set[int] = set()
        for k, batch in enumerate(stream(seed=3 if which == "fraud" else 4)):
            if k == 2:  # nodes that lost the scripts (a restart, a failover): loaded again, the calls sent again
                for port in redises.cluster_ports:
                    node = redis.Redis(port=port, password=PASSWORD)
                    node.script_flush()
                    node.close()
            parts = [int(ev["card_id"].split("-")[1]) % 3 for ev in batch]  # the key's partition: 3 watermarks
            got = await cl.update_and_read(batch, parts)
            want = await one.update_and_read(batch, parts)
            assert rows(got) == rows(want)
            slots |= {key_slot(cl.entity_key(s + 1, v).encode()) for ev in batch
                      for s, v in enumerate(cl.plan.entity_values(ev))}
            if k == 0:
                r = ref.results(batch, parts)  # and the reference's, for the first batch
                assert [(g.applied, g.late) for g in got] == [(w.applied, w.late) for w in r]
                assert [g.values for g in got if not g.late] == [w.values for w in r if not w.late]
        assert len(slots) > 200
        assert not any(g.applied for g in got)  # the last batch: redeliveries (some of them late)
        assert cl.round_trips == 2 * 5 and one.round_trips == 5  # lateness, then the slots' calls together
        # the state is spread over every node
        for port in redises.cluster_ports:
            node = redis.Redis(port=port, password=PASSWORD)
            try:
                assert node.dbsize() > 0
            finally:
                node.close()
    finally:
        await cl.close()
        await one.close()


async def test_late_events_and_the_clock_on_a_cluster(redises: Redises, allaggs: Pipeline) -> None:
    prefix = unique("late") + ":"
    cl = cluster_store(redises, allaggs, prefix)
    one = RedisFeatureStore.from_url(redises.single_url, allaggs, prefix=prefix)
    t0 = 1_800_000_000 * S
    batches = [
        [tx("a", "c1", t0, 5.0, "m1"), tx("b", "c2", t0 - 100 * S, 5.0, "m2"), tx("c", "c3", t0 - 200 * S, 1.0, "m1")],
        [tx("d", "c1", t0 + 400 * S, 5.0, "m3"), tx("e", "c1", t0 + 100 * S, 2.0, "m3")],  # ahead of the clock
        [tx("c", "c3", t0 - 200 * S, 1.0, "m1"), tx("f", "c2", t0 + 60 * S, 3.0, "m2")],
    ]
    try:
        for batch in batches:
            got = await cl.update_and_read(batch, clock_s=t0 // S + 120)
            assert rows(got) == rows(await one.update_and_read(batch, clock_s=t0 // S + 120))
        assert got[0].late and not got[1].late
    finally:
        await cl.close()
        await one.close()


async def test_feature_log_labels_drift_and_checkpoints_on_a_cluster(redises: Redises, fraud_pipeline: Pipeline) -> None:
    prefix = unique("log") + ":"
    cl = cluster_store(redises, fraud_pipeline, prefix)
    try:
        served = [ServedVector(f"x{i}", [float(i), 0.5], "v1", i / 100, 123 + i) for i in range(60)]
        await cl.log_served(served)
        assert await cl.read_served([s.event_id for s in served] + ["nope"]) == [*served, None]
        ids = [f"x{i}" for i in range(60)]
        assert await cl.claim_labels(ids, [f"0:{i}" for i in range(60)]) == [None] * 60
        assert await cl.claim_labels(ids[:3], ["1:9"] * 3) == ["0:0", "0:1", "0:2"]
        assert await cl.claim_drift("fraud:v1:model_error:1", "r1", 60)
        assert not await cl.claim_drift("fraud:v1:model_error:2", "r2", 60)
    finally:
        await cl.close()
    assert drop_namespace(redises.cluster_url, prefix, settings=redises.settings) == 60 * 2 + 1
    node = connect_redis(redises.settings, redises.cluster_url, asyncio=False)
    try:
        assert not list(node.scan_iter(match=prefix + "*"))
    finally:
        node.close()


async def test_checkpoints_on_a_cluster(redises: Redises) -> None:
    """The learner's checkpoints share the store's client: MULTI/EXEC and MGET on one slot (a hash tag)."""
    client = connect_redis(redises.settings, redises.cluster_url)
    ckpt = CheckpointStore(client, f"{unique('ck')}:ckpt:{{fraud}}", b"k" * 32)
    try:
        assert await ckpt.load() is None
        await ckpt.save({"n": 1}, {"labels:0": 5})
        await ckpt.save({"n": 2}, {"labels:0": 9})
        got = await ckpt.load()
        assert got is not None and got.state == {"n": 2}
    finally:
        await client.aclose()


async def test_one_unsplit_call_would_cross_slots(redises: Redises, fraud_pipeline: Pipeline) -> None:
    """Why the split: the single-Redis call (every entity of the batch in one EVALSHA) is refused by a cluster."""
    client = connect_redis(redises.settings, redises.cluster_url)
    unsplit = RedisFeatureStore(client, fraud_pipeline, prefix=unique("x") + ":", cluster=False)
    try:
        with pytest.raises(redis.RedisError, match="slot"):
            await unsplit.update_and_read([tx(f"u{i}", f"c{i}", 1_800_000_000 * S, 1.0, "m") for i in range(20)])
    finally:
        await client.aclose()


def test_cluster_mode_checks(redises: Redises, fraud_pipeline: Pipeline) -> None:
    check_redis(redises.settings, redises.cluster_url)
    with pytest.raises(ConfigError, match="not a cluster node"):
        check_redis(Settings(redis_cluster=True), redises.single_url)
    with pytest.raises(ConfigError, match="braces"):
        RedisFeatureStore(aioredis.Redis(), fraud_pipeline, prefix="a{b}:", cluster=True)
