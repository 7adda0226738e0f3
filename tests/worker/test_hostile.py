"""Hostile input through the score and learn steps on a real Redis (issue 13, findings 1, 2, 3, 5 and 6):
each bad record is that record's dead letter; nothing freezes or poisons an entity's windows; labels are
never acked silently."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from streaming.events.codec import Codec
from streaming.features.store import ServedVector
from streaming.worker.learn import LabelProcessor
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import ScoreProcessor
from tests.conftest import ROOT, Servers, settings_from, unique, worker_env
from tests.helpers import transaction
from tests.worker.test_degraded import OwnRedis

pytestmark = pytest.mark.integration


@pytest.fixture
async def rt(servers: Servers, models_dir: Path) -> AsyncIterator[Runtime]:
    env = worker_env(servers, models_dir, STREAMING_REDIS_PREFIX=unique("hostile") + ":")
    runtime = Runtime.build(settings_from(env))
    yield runtime
    await runtime.store.close()


def rec(value: bytes, offset: int, partition: int = 0, key: bytes = b"c") -> InRecord:
    now = time.time_ns() // 1000
    return InRecord(key, value, "events", partition, offset, now // 1000, now)


def event(codec: Codec, card: str, **kw: object) -> bytes:
    return codec.encode("transaction", transaction(unique("ev"), card=card, **kw))


def headers(out: object) -> dict[str, bytes]:
    return dict(out.headers or [])  # type: ignore[attr-defined]


async def test_a_poison_pill_is_one_dead_letter_and_its_batch_is_scored(rt: Runtime) -> None:
    card = unique("card")
    pill = b'{"event_id": "p", "card_id": ' + b"[" * 1000 + b"]" * 1000 + b', "amount": 1}'
    batch = [rec(event(rt.codec, card), 0), rec(pill, 1), rec(event(rt.codec, card), 2), rec(b"\xff" * 10, 3)]
    prepared = await ScoreProcessor(rt).prepare(batch)
    assert [r.rec.offset for r in prepared.rows] == [0, 2]
    dead = {int(headers(o)["dlq.offset"]): headers(o)["dlq.reason"].decode() for o, _ in prepared.dead}
    assert set(dead) == {1, 3} and "max_depth" in dead[1]


async def test_an_event_in_nanoseconds_is_dead_lettered_and_moves_no_watermark(rt: Runtime) -> None:
    proc = ScoreProcessor(rt)
    card = unique("card")
    now_us = time.time_ns() // 1000
    bad = rec(event(rt.codec, card, event_time=time.time_ns()), 0)  # nanoseconds: ~56 years ahead
    prepared = await proc.prepare([bad])
    assert not prepared.rows and "max_future" in headers(prepared.dead[0][0])["dlq.reason"].decode()
    ok = await proc.prepare([rec(event(rt.codec, card, event_time=now_us), 1)])
    assert ok.rows[0].window.applied and not ok.rows[0].window.late
    wm = await rt.store.client.get(rt.store.watermark_key(0))  # type: ignore[attr-defined]
    assert wm is not None and abs(float(wm) - now_us / 1e6) < 2


async def test_the_watermark_is_per_partition(rt: Runtime) -> None:
    """A partition running an hour ahead (within the future bound of a lenient pipeline or after a replay)
    does not make another partition's events late."""
    proc = ScoreProcessor(rt)
    now_us = time.time_ns() // 1000
    ahead = [rec(event(rt.codec, unique("a"), event_time=now_us + 200 * 1_000_000), i, partition=1) for i in range(3)]
    await proc.prepare(ahead)
    behind = await proc.prepare([rec(event(rt.codec, unique("b"), event_time=now_us - 100 * 1_000_000), 0)])
    assert behind.rows[0].window.applied and not behind.rows[0].window.late  # 100 s behind, lateness 60 s: p1's
    later = await proc.prepare([rec(event(rt.codec, unique("c"), event_time=now_us - 100 * 1_000_000), 1,
                                    partition=1)])
    assert later.rows[0].window.late  # the same time in partition 1, 300 s behind its watermark: late


async def test_huge_numbers_do_not_poison_a_card(rt: Runtime) -> None:
    proc = ScoreProcessor(rt)
    card = unique("card")
    bad = [rec(event(rt.codec, card, amount=v), i) for i, v in enumerate((1e308, -1e308))]
    bad.append(rec(orjson.dumps(transaction(unique("ev"), card=card) | {"amount": 2**62}), 2))  # JSON int
    prepared = await proc.prepare(bad)
    assert not prepared.rows and len(prepared.dead) == 3
    assert all("max_abs_number" in headers(o)["dlq.reason"].decode() for o, _ in prepared.dead)
    good = await proc.prepare([rec(event(rt.codec, card, amount=30.0), 3)])
    batch = await proc.score(good.rows)
    pred = rt.codec.decode("prediction", batch.out[0].value)
    assert pred["fallback"] is None and 0.0 <= pred["score"] <= 1.0 and pred["flags"] == []


async def test_an_oversized_record_is_dead_lettered_cut_to_the_limit(rt: Runtime) -> None:
    big = orjson.dumps(transaction(unique("ev"), card="c") | {"merchant_id": "m" * 200_000})
    prepared = await ScoreProcessor(rt).prepare([rec(big, 0)])
    out = prepared.dead[0][0]
    h = headers(out)
    assert len(out.value) == rt.pipeline.limits.dead_letter_bytes < len(big)
    assert h["dlq.truncated"] == b"1" and int(h["dlq.original_size"]) == len(big)
    assert "max_value_bytes" in h["dlq.reason"].decode()


def label(codec: Codec, eid: str, y: int = 1) -> bytes:
    return codec.encode("label", {"event_id": eid, "label": y, "label_time": time.time_ns() // 1000})


async def test_labels_that_cannot_be_learned_are_dead_letters_with_their_reason(rt: Runtime) -> None:
    proc = ScoreProcessor(rt)
    card = unique("card")
    good = await proc.prepare([rec(event(rt.codec, card), i) for i in range(2)])
    scored = await proc.score(good.rows)
    ids = [rt.codec.decode("prediction", o.value)["event_id"] for o in scored.out]
    log = rt.store
    # a null in one entry, another feature spec in the other
    await log.client.set(log._log_key("null-x"), orjson.dumps({"x": [None] * 3, "v": "v1", "s": 0.1, "t": 1}))  # type: ignore[attr-defined]
    old = ServedVector("old-spec", [0.0] * 3, "v1", 0.1, 1, "0123456789ab")
    await log.log_served([old])
    learner = LabelProcessor(rt)
    learner.wait_s = 0.0  # no wait for vectors: "never-scored" is dead-lettered at once
    batch = await learner.process([rec(label(rt.codec, e), i) for i, e in enumerate(
        [ids[0], ids[1], "null-x", "old-spec", "never-scored"])] + [rec(b"garbage", 5)])
    assert batch.joined == 2
    stages = sorted((headers(o)["dlq.stage"].decode(), int(headers(o)["dlq.offset"])) for o in batch.out
                    if o.topic == rt.settings.topic_dlq)
    assert stages == [("label_decode", 5), ("label_join", 4), ("label_learn", 2), ("label_learn", 3)]


async def test_the_label_path_waits_for_redis_instead_of_dropping(servers: Servers, models_dir: Path,
                                                                  tmp_path: Path) -> None:
    import asyncio

    rds = OwnRedis(tmp_path)
    rds.start()
    try:
        env = worker_env(servers, models_dir, pipeline=ROOT / "models" / "fraud" / "pipeline.toml",
                         STREAMING_REDIS_URL=rds.url)
        rt = Runtime.build(settings_from(env))
        learner = LabelProcessor(rt)
        learner.max_backoff_s = 0.2
        learner.wait_s = 0.0
        rds.stop()
        task = asyncio.create_task(learner.process([rec(label(rt.codec, "e-down"), 0)]))
        await asyncio.sleep(1.5)
        assert not task.done()  # paused: the consumer waits, nothing is acked
        rds.start()
        batch = await asyncio.wait_for(task, 15)
        assert batch.unjoined == 1 and len(batch.out) == 1  # then accounted for: a dead letter, not silence
        await rt.store.close()
    finally:
        rds.stop()


async def test_a_feature_log_write_that_fails_is_retried_until_redis_is_back(servers: Servers, models_dir: Path,
                                                                             tmp_path: Path) -> None:
    """A vector never logged makes its label a dead letter: the write waits for Redis instead of giving up
    (``streaming chaos`` lost 128 labels to writes that failed once on connections from before a Redis restart)."""
    import asyncio

    rds = OwnRedis(tmp_path)
    rds.start()
    try:
        env = worker_env(servers, models_dir, STREAMING_REDIS_URL=rds.url)
        rt = Runtime.build(settings_from(env))
        proc = ScoreProcessor(rt)
        proc.max_backoff_s = 0.2
        prepared = await proc.prepare([rec(event(rt.codec, unique("card")), 0)])
        rds.stop()
        scored = asyncio.create_task(proc.score(prepared.rows))  # waits for its log write
        await asyncio.sleep(1.0)
        assert not scored.done()
        rds.start()
        batch = await asyncio.wait_for(scored, 15)
        eid = rt.codec.decode("prediction", batch.out[0].value)["event_id"]
        [sv] = await rt.store.read_served([eid])
        assert isinstance(sv, ServedVector) and sv.event_id == eid
        await rt.store.close()
    finally:
        rds.stop()


async def test_a_label_before_its_vector_waits_and_joins_and_a_duplicate_is_not_learned_twice(rt: Runtime) -> None:
    """Issue 14: labels right after their events found no vector yet (the log is written after scoring) and were
    lost; now they wait, bounded by [learner] label_wait."""
    proc = ScoreProcessor(rt)
    learner = LabelProcessor(rt)
    prepared = await proc.prepare([rec(event(rt.codec, unique("card")), 0)])
    eid = prepared.rows[0].ev["event_id"]
    early = await learner.process([rec(label(rt.codec, eid), 0)], ["tok-1"])
    assert early.done == [] and early.waiting == 1 and not early.out  # waiting: not acked, not dead-lettered
    await proc.score(prepared.rows)  # the vector is logged now
    joined = await learner.retry()
    assert joined.joined == 1 and joined.done == ["tok-1"] and not learner.waiting
    again = await learner.process([rec(label(rt.codec, eid), 1)], ["tok-2"])
    assert again.duplicates == 1 and again.joined == 0 and again.done == ["tok-2"] and not again.out
    learner.wait_s = 0.05
    late = await learner.process([rec(label(rt.codec, unique("never")), 2)], ["tok-3"])
    assert late.done == [] and late.waiting == 1
    import asyncio

    await asyncio.sleep(0.1)
    expired = await learner.retry()
    assert expired.done == ["tok-3"] and expired.unjoined == 1
    assert "not scored within" in headers(expired.out[0])["dlq.reason"].decode()
