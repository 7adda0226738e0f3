from __future__ import annotations

import itertools
from collections import Counter

from streaming.synthetic.fraud import FraudGenerator


def take(gen: FraudGenerator, n: int) -> list:
    return list(itertools.islice(gen, n))


def test_same_seed_same_stream_and_time_ordered() -> None:
    a = take(FraudGenerator(rate=300, seed=5), 3000)
    b = take(FraudGenerator(rate=300, seed=5), 3000)
    assert [x.event for x in a] == [x.event for x in b]
    times = [x.event["event_time"] for x in a]
    assert times == sorted(times)
    assert len({x.event["event_id"] for x in a}) == 3000


def test_fraud_share_and_the_drift_switch() -> None:
    gen = FraudGenerator(rate=500, seed=2, drift_at_us=60_000_000, fraud_rate=0.02)
    stream = take(gen, 120_000)  # ~240 s
    before = [x for x in stream if x.event["event_time"] < 60_000_000]
    after = [x for x in stream if x.event["event_time"] >= 200_000_000]  # episodes started before may finish
    share = sum(x.label for x in before) / len(before)
    assert 0.01 < share < 0.03
    assert Counter(x.pattern for x in before if x.label) == Counter({"card_testing": sum(x.label for x in before)})
    assert {x.pattern for x in after if x.label} == {"account_takeover"}


def test_card_testing_is_foreign_small_and_fast() -> None:
    fraud = [x.event for x in take(FraudGenerator(rate=500, seed=3), 50_000) if x.pattern == "card_testing"]
    assert fraud and all(e["country"] != e["card_country"] for e in fraud)
    small = [e for e in fraud if e["mcc"] == "online_services"]
    assert small and all(e["amount"] <= 5.0 for e in small)
