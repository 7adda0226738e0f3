"""The Redis store against the reference, on a real Redis."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.events.schemas import SchemaRegistry
from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore, ServedVector
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import Pipeline
from tests.conftest import Servers, unique

pytestmark = pytest.mark.integration
S = 1_000_000


def tx(eid: str, card: str, t_us: int, amount: float, merchant: str) -> dict:
    return {"event_id": eid, "card_id": card, "merchant_id": merchant, "amount": amount, "country": "US",
            "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": t_us}


def store_for(servers: Servers, pipeline: Pipeline) -> RedisFeatureStore:
    client = aioredis.Redis.from_url(servers.redis_url)
    return RedisFeatureStore(client, pipeline, prefix=unique("test") + ":")


async def test_batch_is_one_round_trip_and_equals_the_reference(servers: Servers, fraud_pipeline: Pipeline) -> None:
    rng = random.Random(4)
    events = [tx(f"e{i}", f"c{rng.randrange(5)}", (10_000 + i * rng.randrange(1, 20)) * S // 2,
                 round(rng.uniform(1, 500), 2), f"m{rng.randrange(3)}") for i in range(300)]
    store = store_for(servers, fraud_pipeline)
    got = await store.update_and_read(events)
    assert store.round_trips == 1
    want = ReferenceStore(fraud_pipeline).results(events)
    assert sum(w.late for w in want) > 10  # the times jump back and forth: some are late
    for g, w in zip(got, want, strict=True):
        assert (g.applied, g.late) == (w.applied, w.late)
        if not w.late:
            assert g.values == w.values
    await store.close()


ALLAGGS = Path(__file__).parents[1] / "fixtures" / "allaggs" / "pipeline.toml"


@pytest.fixture(scope="module")
def allaggs(schema_registry: SchemaRegistry) -> Pipeline:
    return load_pipeline(ALLAGGS, schema_registry)


def assert_same(pipeline: Pipeline, got: list, want: list) -> None:
    """Exact aggregates equal exactly; distinct counts (HyperLogLog) within 2% or 1."""
    assert [(g.applied, g.late) for g in got] == [(w.applied, w.late) for w in want]
    distinct = [i for i, f in enumerate(pipeline.window_features) if f.agg == "distinct"]
    for g, w in zip(got, want, strict=True):
        if w.late:
            continue  # not applied; its window may reach buckets already forgotten (docs/features.md)
        for i, (a, b) in enumerate(zip(g.values, w.values, strict=True)):
            if i in distinct:
                assert abs(a - b) <= max(1.0, 0.02 * b)
            else:
                assert a == b, pipeline.window_features[i].name


@pytest.mark.parametrize("which", ["fraud", "allaggs"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_out_of_order_and_redelivered_streams(servers: Servers, fraud_pipeline: Pipeline, allaggs: Pipeline,
                                                    which: str, data: st.DataObject) -> None:
    pipeline = fraud_pipeline if which == "fraud" else allaggs
    n = data.draw(st.integers(1, 80))
    base = 1_800_000_000
    events = [
        tx(f"e{i}", f"c{data.draw(st.integers(0, 3))}", base * S + data.draw(st.integers(0, 900 * S)),
           data.draw(st.floats(0.01, 1000).map(lambda x: round(x, 2))), f"m{data.draw(st.integers(0, 2))}")
        for i in range(n)
    ]
    # redeliveries: some events come again, in later batches
    again = data.draw(st.lists(st.sampled_from(events), max_size=10))
    stream = events + again
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if b > a]
    store = store_for(servers, pipeline)
    ref = ReferenceStore(pipeline)
    for batch in batches:
        assert_same(pipeline, await store.update_and_read(batch), ref.results(batch))
    assert store.round_trips == len(batches)
    await store.close()


async def test_redelivery_is_flagged_and_moves_nothing(servers: Servers, fraud_pipeline: Pipeline) -> None:
    store = store_for(servers, fraud_pipeline)
    batch = [tx("a", "c1", 1_800_000_000 * S, 10.0, "m1"), tx("b", "c1", 1_800_000_001 * S, 5.0, "m1")]
    first = await store.update_and_read(batch)
    second = await store.update_and_read(batch)
    assert [r.applied for r in first] == [True, True]
    assert [r.applied for r in second] == [False, False]
    # nothing moved: both replays read the state left by the first delivery of the whole batch
    assert second[0].values == second[1].values == first[1].values
    await store.close()


async def test_feature_log_round_trip(servers: Servers, fraud_pipeline: Pipeline) -> None:
    store = store_for(servers, fraud_pipeline)
    served = [ServedVector("x1", [1.0, 2.5], "v3", 0.75, 123), ServedVector("x2", [0.0], "v3", 0.1, 456)]
    await store.log_served(served)
    got = await store.read_served(["x1", "nope", "x2"])
    assert got == [served[0], None, served[1]]
    assert store.round_trips == 2
    await store.close()


async def test_distinct_counts_within_two_percent(servers: Servers, allaggs: Pipeline) -> None:
    col = [f.name for f in allaggs.window_features].index("card_merchants_1h")
    t0 = 1_800_000_000 * S
    events = [tx(f"d{i}", "c-many", t0 + i * 1000, 1.0, f"merchant-{i % 5000}") for i in range(6000)]
    store = store_for(servers, allaggs)
    got = []
    for i in range(0, len(events), 500):
        got += await store.update_and_read(events[i : i + 500])
    want = ReferenceStore(allaggs).results(events)
    for i in (999, 2999, 4999, 5999):
        exact = want[i].values[col]
        assert exact >= 1000
        assert abs(got[i].values[col] - exact) <= 0.02 * exact
    await store.close()


async def test_late_events_are_scored_flagged_and_not_applied(servers: Servers, allaggs: Pipeline) -> None:
    store = store_for(servers, allaggs)
    count = [f.name for f in allaggs.window_features].index("card_count_5m")
    t0 = 1_800_000_000 * S
    now = await store.update_and_read([tx("a", "c1", t0, 5.0, "m1")])
    within = await store.update_and_read([tx("b", "c1", t0 - 100 * S, 5.0, "m1")])  # 100 s < 2 min lateness
    beyond = await store.update_and_read([tx("c", "c1", t0 - 200 * S, 5.0, "m1")])  # 200 s > 2 min
    again = await store.update_and_read([tx("c", "c1", t0 - 200 * S, 5.0, "m1")])
    after = await store.update_and_read([tx("d", "c1", t0, 5.0, "m1")])
    assert now[0].applied and within[0].applied and not within[0].late
    assert beyond[0].late and not beyond[0].applied and again[0].late
    assert after[0].values[count] == 3  # a, b and d: the late one moved nothing
    await store.close()


async def test_a_large_batch_equals_the_reference(servers: Servers, allaggs: Pipeline) -> None:
    # over 1,000 events and keys: the script reads, unpacks and answers in slices
    rng = random.Random(7)
    t0 = 1_800_000_000 * S
    events = [tx(f"L{i}", f"c{rng.randrange(900)}", t0 + i * 200_000, round(rng.uniform(1, 500), 2),
                 f"m{rng.randrange(400)}") for i in range(1500)]
    events += events[:50]  # redeliveries inside the batch
    store = store_for(servers, allaggs)
    assert_same(allaggs, await store.update_and_read(events), ReferenceStore(allaggs).results(events))
    await store.close()


async def test_applied_ids_are_remembered_for_one_to_two_dedupe_periods(servers: Servers,
                                                                       fraud_pipeline: Pipeline) -> None:
    client = aioredis.Redis.from_url(servers.redis_url)
    store = RedisFeatureStore(client, fraud_pipeline, prefix=unique("test") + ":", dedupe_ttl_s=1)
    ev = [tx("once", "c1", 1_800_000_000 * S, 10.0, "m1")]
    assert (await store.update_and_read(ev))[0].applied
    # an id applied during period k is looked up until period k + 2 starts: for more than one period
    await asyncio.sleep(0.9)
    assert not (await store.update_and_read(ev))[0].applied
    await asyncio.sleep(1.2)  # two periods after it was applied: forgotten
    assert (await store.update_and_read(ev))[0].applied
    await store.close()


async def test_every_key_of_an_entity_is_hash_tagged(servers: Servers, allaggs: Pipeline) -> None:
    store = store_for(servers, allaggs)
    await store.update_and_read([tx("k1", "c9", 1_800_000_000 * S, 3.0, "m9")])
    keys = sorted([k.decode() async for k in store.client.scan_iter(match=store.prefix + "e2:*")])
    assert keys and all(k.startswith(store.prefix + "e2:{") for k in keys)
    tags = {k[k.index("{") : k.index("}") + 1] for k in keys}
    assert tags == {"{card_id=c9}", "{card_id+merchant_id=c9|m9}"}
    await store.close()
