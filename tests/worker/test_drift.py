"""Label-free drift: the scores and vectors served, watched off the scoring path; one request per drift,
across workers."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from streaming.synthetic.registry import generator_for
from streaming.worker.learn import LabelProcessor
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import ScoreProcessor
from tests.conftest import Servers, settings_from, unique, worker_env

pytestmark = pytest.mark.integration


def events(rt: Runtime, n: int, *, seed: int, start_us: int, amount_factor: float = 1.0) -> list[InRecord]:
    """``n`` of the generator's events (no drift switch), amounts multiplied by ``amount_factor``."""
    gen = generator_for(rt.pipeline, rate=200, seed=seed, start_us=start_us, id_prefix=unique("lf") + "-")
    out = []
    for i, lab in enumerate(itertools.islice(gen, n)):
        ev = dict(lab.event)
        ev["amount"] = round(ev["amount"] * amount_factor, 2)
        out.append(InRecord(ev["card_id"].encode(), rt.codec.encode("transaction", ev), "events", 0, i,
                            ev["event_time"] // 1000, time.time_ns() // 1000))
    return out


async def serve(rt: Runtime, records: list[InRecord], others: list[Runtime]) -> None:
    """Score the records; the other workers' monitors see the same served samples (as if they had scored them)."""
    proc = ScoreProcessor(rt)
    for i in range(0, len(records), 256):
        await proc.process(records[i:i + 256])
    for other in others:
        other.served_samples.extend(rt.served_samples)


async def test_a_shift_in_the_served_traffic_gives_one_request_across_two_workers(
        servers: Servers, models_dir: Path) -> None:
    env = worker_env(servers, models_dir)  # both workers share the namespace, as two workers of one group do
    one, two = (Runtime.build(settings_from(env)) for _ in range(2))
    assert one.watches_served and {m.spec.signal for m in one.monitors.monitors} == {"error", "score", "features"}
    p1, p2 = LabelProcessor(one), LabelProcessor(two)
    start = time.time_ns() // 1000 - 120_000_000  # 2 minutes of events, all in the past
    await serve(one, events(one, 8000, seed=21, start_us=start), [two])
    quiet = [await p.watch_served() for p in (p1, p2)]
    assert [b.requests for b in quiet] == [[], []], "no request on the generator's own traffic"
    assert [m.state for m in one.monitors.monitors] == ["ok", "ok", "ok"]
    # then every amount is 30 times larger: the vectors and the scores move
    await serve(one, events(one, 6000, seed=22, start_us=start + 40_000_000, amount_factor=30.0), [two])
    b1, b2 = await p1.watch_served(), await p2.watch_served()
    assert len(b1.requests) == 1 and b2.requests == [], "one request for the drift, whichever worker saw it first"
    req = b1.requests[0]
    assert req.model_version == "v1" and req.signal in ("score", "features")
    assert [o.topic for o in b1.out] == [one.settings.topic_retrain]
    assert two.metrics.retrain_deduplicated.labels("fraud")._value.get() >= 1
    states = {m.spec.name: m.state for m in one.monitors.monitors}
    assert states["model_error"] == "ok" and "drift" in (states["score_psi"], states["features"])
    for rt in (one, two):
        await rt.store.close()
