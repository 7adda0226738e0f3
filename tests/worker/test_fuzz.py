"""Fuzzing decode -> check -> features -> vector (issue 13).

In process (no Kafka): hypothesis draws 10,000+ payloads of both formats, valid, mutated and built from
arbitrary bytes and JSON values; the codec with the pipeline's limits either returns a record that meets the
schema and every limit, or refuses it with a ``DecodeError``, never anything else.

Through the real worker: 10,420 seeded payloads (:mod:`tests.fuzzing`) go to the events topic; every input
is accounted for (one prediction or one dead letter, nothing twice), each one's fate is the one expected,
the worker survives, every served vector is the one the reference features give, and afterwards every
entity's windows still move (fresh events are scored by the model, on time, with the reference's features).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.events.codec import Codec, DecodeError
from streaming.events.limits import Limits
from streaming.events.reader import TopicReader
from streaming.events.schemas import SchemaRegistry
from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore, ServedVector
from streaming.features.vector import VectorBuilder
from streaming.pipeline.spec import Pipeline
from streaming.worker.process import WorkerProcess
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import ScoreProcessor
from tests.conftest import Servers, settings_from, unique, worker_env
from tests.fuzzing import DEAD, FIELDS, ORACLE, SCORED, Oracle, Payload, make_payloads, mutate_bytes

pytestmark = pytest.mark.integration

S = 1_000_000
SEED = 13
CARDS = [f"fz-card-{i}" for i in range(12)]
MERCHANTS = [f"fz-merchant-{i}" for i in range(6)]


@pytest.fixture(scope="module")
def codec(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


# -- in process: the codec and the limits on 10,000+ hypothesis payloads ------------------------------------------

_PY_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "double": (int, float), "long": int}


def _meets_schema_and_limits(rec: dict[str, Any], pipeline: Pipeline, codec: Codec) -> None:
    """What a record the codec returned must be: every schema field of its type, every value within the limits."""
    limits = pipeline.limits
    for f in codec.registry.latest(pipeline.event.schema).raw["fields"]:
        v = rec[f["name"]]
        assert isinstance(v, _PY_TYPES[f["type"]]) and not isinstance(v, bool), (f["name"], v)
    stack: list[tuple[Any, int]] = [(rec, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            assert depth <= limits.max_depth
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
            if isinstance(v, dict):
                assert all(len(str(k)) <= limits.max_string_chars for k in v)
        elif isinstance(v, str):
            assert len(v) <= limits.max_string_chars
        elif isinstance(v, float):
            assert math.isfinite(v)
        elif isinstance(v, int):
            assert -2**63 <= v < 2**63


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_event = st.fixed_dictionaries({
    "event_id": _text, "card_id": _text, "merchant_id": _text,
    "amount": st.floats(-1e12, 1e12, allow_nan=False), "country": _text, "card_country": _text,
    "channel": st.sampled_from(["pos", "online", ""]), "mcc": _text,
    "event_time": st.integers(1, 2**62),
})
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def _hostile(draw: st.DrawFn, ev: dict[str, Any]) -> bytes:
    """A reshaped or deeply nested JSON event, a Confluent frame of any id and body, or arbitrary bytes."""
    kind = draw(st.sampled_from(["json_shape", "json_deep", "framed", "bytes"]))
    if kind == "json_shape":
        rec: dict[str, Any] = dict(ev)
        for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
            if draw(st.booleans()):
                rec.pop(name, None)
            else:
                rec[name] = draw(_json_value)
        rec.update(draw(st.dictionaries(_text, _json_value, max_size=3)))
        value: Any = rec if draw(st.integers(0, 9)) else [rec]
        try:
            return orjson.dumps(value)
        except TypeError:  # an integer beyond 64 bits
            return json.dumps(value).encode()
    if kind == "json_deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        field = draw(st.sampled_from(FIELDS))
        return orjson.dumps(ev)[:-1] + b',"' + field.encode() + b'":' + opener * depth + b"1" + closer * depth + b"}"
    if kind == "framed":
        sid = draw(st.integers(0, 2**32 - 1) | st.just(1))
        return struct.pack(">bI", 0, sid) + draw(st.binary(max_size=120))
    return draw(st.binary(max_size=200))


@st.composite
def _payloads(draw: st.DrawFn, codec: Codec) -> list[bytes]:
    """Five payloads of one drawn event: valid Avro and JSON, a mutation of each (a drawn seed), and a hostile one."""
    ev = draw(_event)
    avro, text = codec.encode("transaction", ev), orjson.dumps(ev)
    rng = random.Random(draw(st.integers(0, 2**32)))
    mutated = []
    for data in (avro, text):
        for _ in range(rng.randint(1, 3)):
            _, data = mutate_bytes(rng, data)
        mutated.append(data)
    return [avro, text, *mutated, draw(_hostile(ev))]


@pytest.mark.timeout(120)
def test_the_codec_returns_a_record_within_the_limits_or_a_decode_error(codec: Codec, fraud_pipeline: Pipeline) -> None:
    oracle = Oracle(codec, fraud_pipeline)
    outcomes: Counter[str] = Counter()

    @settings(max_examples=2_100, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=_payloads(codec))
    def check(batch: list[bytes]) -> None:
        for data in batch:
            try:
                rec = codec.decode("transaction", data, fraud_pipeline.limits)
            except DecodeError:
                outcomes["refused"] += 1
                continue
            _meets_schema_and_limits(rec, fraud_pipeline, codec)
            # the checks after the decode: a reason, never an exception
            decided = oracle.decide(data, time.time_ns() // 1000)
            outcomes["accepted" if isinstance(decided, dict) else "refused_by_check"] += 1

    check()
    assert sum(outcomes.values()) >= 10_000, outcomes
    assert outcomes["refused"] > 2000 and outcomes["accepted"] > 2000, outcomes  # both sides were exercised


@settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(ev=_event)
def test_a_valid_event_round_trips_in_both_formats(ev: dict[str, Any], schema_registry: SchemaRegistry) -> None:
    codec = Codec(schema_registry)
    assert codec.decode("transaction", codec.encode("transaction", ev), Limits()) == ev
    assert codec.decode("transaction", orjson.dumps(ev), Limits()) == ev


# -- through the real worker --------------------------------------------------------------------------------------

def _produce(bootstrap: str, topic: str, payloads: list[Payload]) -> list[int]:
    """Each payload's offset (one partition), in payload order."""
    offsets: list[int | None] = [None] * len(payloads)
    errors: list[str] = []

    def delivered(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{payloads[i].describe()}: {err}")
            else:
                assert msg.partition() == 0
                offsets[i] = msg.offset()
        return cb

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
                  "message.max.bytes": 1_000_000})
    for i, pl in enumerate(payloads):
        while True:
            try:
                p.produce(topic, value=pl.value, key=pl.key, on_delivery=delivered(i))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors[:5]
    assert None not in offsets
    return [o for o in offsets if o is not None]


def _read_both(bootstrap: str, env: dict[str, str], want: int, timeout: float) -> tuple[list[Any], list[Any]]:
    """Read the predictions and the dead letters until there are ``want`` of them together, then 1 s more."""
    preds = TopicReader(bootstrap, env["STREAMING_TOPIC_PREDICTIONS"])
    dlq = TopicReader(bootstrap, env["STREAMING_TOPIC_DLQ"])
    got_p: list[Any] = []
    got_d: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got_p) + len(got_d) < want:
            got_p.extend(preds.poll(0.05, 5000))
            got_d.extend(dlq.poll(0.05, 5000))
        settle = time.monotonic() + 1.0  # anything beyond the inputs (a duplicate) shows up here
        while time.monotonic() < settle:
            got_p.extend(preds.poll(0.05, 5000))
            got_d.extend(dlq.poll(0.05, 5000))
        return got_p, got_d
    finally:
        preds.close()
        dlq.close()


def _log_problems(log: Path, since: int) -> list[str]:
    with open(log, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [line[:300] for line in text.splitlines()
            if "[CRITICAL]" in line or "[ERROR]" in line or "Traceback" in line or "RecursionError" in line]


async def _served(store: RedisFeatureStore, ids: list[str], timeout: float = 10.0) -> dict[str, ServedVector]:
    """The feature log of ``ids`` (written in the background, just after the predictions)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await store.read_served(ids)
        if all(g is not None for g in got) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    out = {}
    for eid, g in zip(ids, got, strict=True):
        assert not isinstance(g, ValueError), g
        if g is not None:
            out[eid] = g
    return out


def _vector_mismatches(ids: list[str], events: dict[str, dict[str, Any]], ref_values: dict[str, list[float]],
                       served: dict[str, ServedVector], vectors: VectorBuilder) -> list[str]:
    bad = []
    for eid in ids:
        want = np.asarray(vectors.row(events[eid], ref_values[eid]), dtype=np.float32)
        got = np.asarray(served[eid].x, dtype=np.float32)
        if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            diff = {n: (float(g), float(w)) for n, g, w in zip(vectors.names, got, want, strict=True) if g != w}
            bad.append(f"{eid}: served != reference {diff}")
    return bad


@pytest.mark.timeout(240)
async def test_fuzzed_payloads_through_the_worker_are_each_accounted_for_and_poison_no_window(
        servers: Servers, models_dir: Path, codec: Codec, fraud_pipeline: Pipeline) -> None:
    prefix = unique("fuzz") + ":"
    env = worker_env(servers, models_dir, STREAMING_TOPIC_PARTITIONS="1", STREAMING_REDIS_PREFIX=prefix)
    log = servers.run_dir / f"{env['STREAMING_APP_ID']}.log"
    topic = env["STREAMING_TOPIC_EVENTS"]
    log_start = log.stat().st_size if log.exists() else 0
    worker = WorkerProcess(env, log).start()
    store = RedisFeatureStore(aioredis.Redis.from_url(servers.redis_url), fraud_pipeline, prefix=prefix)
    try:
        now_us = time.time_ns() // 1000
        payloads = make_payloads(codec, seed=SEED, tag="fz", cards=CARDS, merchants=MERCHANTS, now_us=now_us)
        n = len(payloads)
        assert n >= 10_000
        offsets = _produce(servers.bootstrap, topic, payloads)
        assert sorted(offsets) == list(range(n)), "one partition, nothing else on it"
        by_offset = dict(zip(offsets, payloads, strict=True))

        pred_msgs, dead_msgs = _read_both(servers.bootstrap, env, n, timeout=90)
        problems = _log_problems(log, log_start)
        assert worker.alive, f"the worker died: {worker.tail(20)}"
        assert not problems, problems[:10]
        summary = f"{len(pred_msgs)} predictions + {len(dead_msgs)} dead letters for {n} inputs"

        # what the decode and check stages should have decided for each input (the oracle's clock: production)
        oracle = Oracle(codec, fraud_pipeline)
        decided = {off: oracle.decide(p.value, now_us) for off, p in by_offset.items()}
        ambiguous = {off for off, p in by_offset.items() if oracle.near_the_future_bound(p.value, now_us)}
        accepted_ids: dict[str, int] = {}
        for off, d in decided.items():
            if isinstance(d, dict):
                assert str(d["event_id"]) not in accepted_ids, "the generator made two events of one id"
                accepted_ids[str(d["event_id"])] = off

        # every input accounted for: one dead letter (by its offset) or one prediction (by its event id)
        near_bound = {str(codec.decode("transaction", by_offset[o].value)["event_id"]): o for o in ambiguous}
        dead: dict[int, tuple[Any, dict[str, bytes]]] = {}
        for m in dead_msgs:
            h = dict(m.headers())
            off = int(h["dlq.offset"])
            assert off not in dead, f"two dead letters of offset {off}: {by_offset[off].describe()}"
            assert off in by_offset, f"a dead letter of offset {off}, which was never produced"
            assert h["dlq.topic"].decode() == topic and h["dlq.partition"] == b"0"
            assert h["dlq.stage"] in (b"decode", b"features") and h["dlq.reason"] and h["dlq.error_class"]
            dead[off] = (m, h)
        preds: dict[str, tuple[Any, dict[str, Any]]] = {}
        offset_of: dict[str, int] = {}
        for m in pred_msgs:
            p = codec.decode("prediction", m.value())
            eid = p["event_id"]
            assert eid not in preds, (f"two predictions of {eid} (flags {preds[eid][1]['flags']} and {p['flags']}): "
                                      f"{summary}")
            source = accepted_ids.get(eid, near_bound.get(eid))
            assert source is not None, f"a prediction of {eid!r}, which no input should have produced"
            preds[eid] = (m, p)
            offset_of[eid] = source
        pred_offsets = {off: eid for eid, off in offset_of.items()}
        assert not set(pred_offsets) & set(dead), "an input both scored and dead-lettered"
        missing = set(range(n)) - set(pred_offsets) - set(dead)
        assert not missing, (f"{len(missing)} inputs lost ({summary}), e.g. "
                             + "; ".join(by_offset[o].describe() for o in sorted(missing)[:5]))
        assert len(pred_msgs) + len(dead_msgs) == n, summary

        # each input's fate is the one expected
        def reason(off: int) -> str:
            return dead[off][1]["dlq.reason"].decode() if off in dead else "a prediction"

        wrong = []
        for off, pl in by_offset.items():
            if off in ambiguous:
                continue
            scored = off in pred_offsets
            if pl.expect == SCORED and not (scored and pred_offsets[off] == pl.event_id):
                wrong.append(f"a valid input got {reason(off)!r}: {pl.describe()}")
            elif pl.expect == DEAD and (scored or pl.reason not in reason(off)):
                wrong.append(f"expected a dead letter with {pl.reason!r}, got {reason(off)!r}: {pl.describe()}")
            elif pl.expect == ORACLE and scored != isinstance(decided[off], dict):
                wrong.append(f"the worker gave {reason(off)!r}, the codec and limits say "
                             f"{'accept' if scored else decided[off]!r}: {pl.describe()}")
        assert not wrong, f"{len(wrong)} inputs met the wrong fate: " + " | ".join(wrong[:8])

        # a dead letter is its input: the same key and value (cut at the limit, with its size and hash)
        cut = fraud_pipeline.limits.dead_letter_bytes
        for off, (m, h) in dead.items():
            pl = by_offset[off]
            value = pl.value or b""
            if len(value) > cut or len(pl.key or b"") > cut:
                assert h["dlq.truncated"] == b"1" and int(h["dlq.original_size"]) == len(value)
                assert h["dlq.original_sha256"].decode() == hashlib.sha256(value).hexdigest()
                assert (m.value() or b"") == value[:cut]
            else:
                assert "dlq.truncated" not in h and (m.value() or b"") == value, pl.describe()
            assert (m.key() or b"") == (pl.key or b"")

        # the predictions, against the reference store fed with the scored events in input order
        scored_ids = [pred_offsets[o] for o in sorted(pred_offsets)]
        events = {eid: codec.decode("transaction", by_offset[offset_of[eid]].value) for eid in scored_ids}
        # the worker caps each partition's watermark at its clock when it scored the batch: somewhere between
        # the production start and now; an event whose flags differ between the two bounds may have either
        ordered = [events[eid] for eid in scored_ids]
        ref = ReferenceStore(fraud_pipeline)
        ref_results = dict(zip(scored_ids, ref.results(ordered, clock_s=now_us / S), strict=True))
        ref_late_clock = dict(zip(scored_ids, ReferenceStore(fraud_pipeline).results(ordered, clock_s=time.time()),
                                  strict=True))

        def flags_of(r: Any) -> list[str]:
            return ["late"] if r.late else ([] if r.applied else ["redelivered"])

        bad_preds = []
        for eid, (m, p) in preds.items():
            r = ref_results[eid]
            flags = flags_of(r)
            if p["flags"] == flags_of(ref_late_clock[eid]):
                flags = p["flags"]
            ev = events[eid]
            if not (math.isfinite(p["score"]) and 0.0 <= p["score"] <= 1.0) or p["fallback"] is not None \
                    or p["flags"] != flags or p["event_time"] != ev["event_time"] or p["key"] != ev["card_id"] \
                    or (m.key() or b"") != (by_offset[offset_of[eid]].key or b""):
                bad_preds.append(f"{eid}: score {p['score']} fallback {p['fallback']} flags {p['flags']} "
                                 f"(reference: {flags}) key {m.key()!r}")
        assert not bad_preds, f"{len(bad_preds)} bad predictions: " + " | ".join(bad_preds[:8])
        late = sum(r.late for r in ref_results.values())
        print(f"\nfuzz: {summary}; {late} scored late; watermark {ref.watermark - now_us / S:+.0f} s from the "
              f"production clock; {len(ambiguous)} near the future bound; stages "
              f"{Counter(h['dlq.stage'].decode() for _, h in dead.values())}; "
              f"{sum(1 for _, h in dead.values() if 'dlq.truncated' in h)} truncated")

        vectors = VectorBuilder(fraud_pipeline)
        on_time = [eid for eid in preds if not ref_results[eid].late]
        served = await _served(store, list(preds))
        assert set(served) == set(preds), f"{len(set(preds) - set(served))} served vectors missing from the feature log"
        assert all(np.isfinite(s.x).all() for s in served.values())
        # an event the two clock bounds judge differently may match either bound's reference
        mismatches = [m for eid in on_time
                      for m in _vector_mismatches([eid], events, {eid: ref_results[eid].values}, served, vectors)
                      if _vector_mismatches([eid], events, {eid: ref_late_clock[eid].values}, served, vectors)]
        assert not mismatches, f"{len(mismatches)} served vectors differ from the reference: " + " | ".join(mismatches[:5])

        # afterwards no entity's window is frozen or poisoned: a fresh event of every card (and every merchant) at
        # the current time is scored by the model, applied to its windows (not late), with the reference's features
        probe_time = time.time_ns() // 1000
        probes: list[dict[str, Any]] = [
            {"event_id": f"probe-{i}", "card_id": card, "merchant_id": MERCHANTS[i % len(MERCHANTS)],
             "amount": 20.0 + i, "country": "US", "card_country": "US", "channel": "pos", "mcc": "grocery",
             "event_time": probe_time} for i, card in enumerate(CARDS)]
        _produce(servers.bootstrap, topic, [Payload("probe", ev["card_id"].encode(), codec.encode("transaction", ev),
                                                    SCORED, event_id=ev["event_id"]) for ev in probes])
        want = {ev["event_id"] for ev in probes}
        reader = TopicReader(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"])
        got: dict[str, dict[str, Any]] = {}
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not want <= set(got):
                for m in reader.poll(0.05, 5000):
                    pr = codec.decode("prediction", m.value())
                    if pr["event_id"] in want:
                        assert pr["event_id"] not in got
                        got[pr["event_id"]] = pr
        finally:
            reader.close()
        assert set(got) == want, f"probes without a prediction: {sorted(want - set(got))}"
        ref_probe = dict(zip((ev["event_id"] for ev in probes), ref.results(probes), strict=True))
        for eid, pr in got.items():
            assert pr["fallback"] is None and "redelivered" not in pr["flags"], pr
            assert math.isfinite(pr["score"]) and 0.0 <= pr["score"] <= 1.0
            assert ("late" in pr["flags"]) == ref_probe[eid].late
        late_probes = sorted(eid for eid, pr in got.items() if pr["flags"])
        ids = sorted(want - set(late_probes))  # a late event reads what its window still has (docs/features.md)
        probe_served = await _served(store, ids)
        assert set(probe_served) == set(ids)
        mismatches = _vector_mismatches(ids, {ev["event_id"]: ev for ev in probes},
                                        {e: ref_probe[e].values for e in ids}, probe_served, vectors)
        assert not mismatches, " | ".join(mismatches)
        assert worker.alive and not _log_problems(log, log_start)
        if late_probes:
            lateness = fraud_pipeline.lateness_s * S
            first = next(o for o in sorted(pred_offsets) if events[pred_offsets[o]]["event_time"] > now_us + lateness)
            ahead_s = (events[pred_offsets[first]]["event_time"] - now_us) / S
            pytest.fail(f"frozen windows: {len(late_probes)} of {len(probes)} fresh events (one per card) are flagged "
                        f"{got[late_probes[0]]['flags']} and not applied, the partition's watermark being "
                        f"{ref.watermark - probe_time / S:+.0f} s from the clock; the first accepted input beyond "
                        f"the lateness ({ahead_s:+.0f} s ahead), at offset {first} of {n}: "
                        f"{by_offset[first].describe(300)}; after it {late} of the {len(preds)} scored inputs were "
                        "late. See test_an_event_ahead_within_max_future_does_not_make_every_later_event_late.")
        count_1m = vectors.names.index("card_count_1m")
        assert all(probe_served[e].x[count_1m] >= 1 for e in ids)  # each probe counted in its own window
    finally:
        await store.close()
        worker.stop()


async def test_an_event_ahead_within_max_future_does_not_make_every_later_event_late(
        servers: Servers, models_dir: Path, codec: Codec) -> None:
    """One valid event stamped 200 s ahead (within ``max_future_s`` = 300 s) once moved its partition's watermark
    200 s ahead; with ``lateness`` 60 s every on-time event after it, of every card, was then late for 140 s, and
    its card's present buckets were evicted. The watermark and the eviction now stop at the worker's clock."""
    rt = Runtime.build(settings_from(worker_env(servers, models_dir, STREAMING_REDIS_PREFIX=unique("ahead") + ":")))
    proc = ScoreProcessor(rt)
    now_us = time.time_ns() // 1000

    def rec(card: str, event_time: int, offset: int) -> InRecord:
        ev = {"event_id": f"{card}-{offset}", "card_id": card, "merchant_id": "m1", "amount": 10.0, "country": "US",
              "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": event_time}
        return InRecord(card.encode(), codec.encode("transaction", ev), "events", 0, offset, now_us // 1000, now_us)

    try:
        ahead = await proc.prepare([rec("card-a", now_us + 200 * S, 0)])
        assert ahead.rows and not ahead.dead, "within max_future_s: accepted"
        later = await proc.prepare([rec("card-b", now_us, 1)])
        assert later.rows[0].window.applied and not later.rows[0].window.late, \
            "an on-time event of another card is late: the watermark ran 200 s ahead of the clock"
    finally:
        await rt.store.close()
        proc.executor.shutdown()
