"""The Redis store against the reference, on a real Redis."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore, ServedVector
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
    want = ReferenceStore(fraud_pipeline).update_and_read(events)
    for g, w in zip(got, want, strict=True):
        assert g.applied
        assert g.values == pytest.approx(w, rel=1e-9, abs=1e-9)
    await store.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
async def test_out_of_order_and_redelivered_streams(servers: Servers, fraud_pipeline: Pipeline, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 60))
    base = 1_800_000_000
    events = [
        tx(f"e{i}", f"c{data.draw(st.integers(0, 3))}", (base + data.draw(st.integers(0, 900))) * S,
           data.draw(st.floats(0.01, 1000).map(lambda x: round(x, 2))), f"m{data.draw(st.integers(0, 2))}")
        for i in range(n)
    ]
    # redeliveries: some events come again, in later batches
    again = data.draw(st.lists(st.sampled_from(events), max_size=10))
    stream = events + again
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if b > a]
    store = store_for(servers, fraud_pipeline)
    ref = ReferenceStore(fraud_pipeline)
    for batch in batches:
        got = await store.update_and_read(batch)
        want = ref.update_and_read(batch)
        assert [g.values for g in got] == [pytest.approx(w, rel=1e-9, abs=1e-6) for w in want]
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
