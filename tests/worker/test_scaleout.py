"""Two workers in one consumer group on a topic of four partitions (issue 15).

The second worker joins a running one and they split the partitions; together they score every
event. Then the first one stops (SIGTERM) while events keep flowing: the other takes over every
partition and scores the rest, nothing lost, and an event scored twice is flagged ``redelivered``
in all but one of its predictions (its features moved once). The feature store keeps one
watermark per input partition: a partition whose events run minutes behind another's is not
late, and each partition's watermark is its own latest event time.

A rebalance commits what the worker acknowledged before its partitions go
(:meth:`streaming.worker.intake.BatchDrain.on_partitions_revoked`); without that, the partitions' next
owner scores again everything since the last periodic commit (the last test checks the order of the steps).

What the run measured (the rebalance and takeover times, the duplicates) is written to the test's output
(``pytest -s``) and quoted in docs/scaling.md. The workers start one after the other, from the test's
own thread: a child started from a thread that then ends gets SIGTERM (``WorkerProcess`` ties its
children to their parent with ``PR_SET_PDEATHSIG``, which follows the creating thread).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2

from streaming.demo import scrape
from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.events.reader import TopicReader
from streaming.events.schemas import SchemaRegistry
from streaming.events.topics import ensure_topics
from streaming.features.store import RedisFeatureStore
from streaming.infra.processes import free_port
from streaming.pipeline.spec import Pipeline
from streaming.worker.intake import BatchDrain
from streaming.worker.logwatch import LogWatch
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, pipeline_variant, worker_env
from tests.helpers import S, transaction

pytestmark = pytest.mark.scaleout

PARTITIONS = 4
ALL = frozenset(range(PARTITIONS))
#: each partition's event time against the wall clock (s): partition 0 runs ahead (within the pipeline's
#: max_future of 5 minutes), partitions 2 and 3 replay a backlog minutes old (beyond the lateness of 1 minute)
AHEAD_S = {0: 120, 1: 0, 2: -300, 3: -900}
CARDS_PER_PARTITION = 6
SESSION_TIMEOUT_S = 3.0  # the join on Tansu takes half of it; the default 6 s doubles every rebalance
#: longer than the whole second phase: whatever a worker acknowledged and did not commit before the rebalance
#: would be scored again by the partitions' next owner (hundreds of events here) unless the revocation commits
COMMIT_INTERVAL_S = 5.0
RATE = 200  # events/s while the first worker stops
STEP = 20  # events sent at once (about one consumer fetch)
#: duplicates a rebalance may still cause: a fetch that was being taken when the flow stopped, per worker
MAX_DUPLICATES = 2 * STEP

_ASSIGNED = "Setting newly assigned partitions"
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def partition_of(key: str) -> int:
    """Where every producer of the project puts ``key`` (murmur2, Kafka's default partitioner)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def assignments(log: Path, topic: str) -> list[tuple[float, frozenset[int]]]:
    """Every assignment a worker's consumer logged (aiokafka, at INFO): (epoch s, its partitions of ``topic``)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for i, line in enumerate(lines):
        if _ASSIGNED not in line or (stamp := _STAMP.match(line)) is None:
            continue
        t = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        parts: frozenset[int] = frozenset()
        if "for group" not in line:  # a table of topics and partitions follows, ending with "for group ..."
            for row in lines[i + 1:i + 20]:
                cells = [c.strip() for c in row.split("|")]
                if len(cells) >= 3 and cells[1] == topic:
                    parts = frozenset(p for lo, hi in re.findall(r"(\d+)(?:-(\d+))?", cells[2])  # {0-2, 5}
                                      for p in range(int(lo), int(hi or lo) + 1))
                if "for group" in row:
                    break
        out.append((t, parts))
    return out


def logged_at(log: Path, text: str) -> list[float]:
    """When (epoch s) a worker logged each line holding ``text``."""
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in log.read_text(errors="replace").splitlines() if text in line and (m := _STAMP.match(line))]


def current(worker: WorkerProcess, topic: str) -> frozenset[int]:
    found = assignments(worker.log_path, topic)
    return found[-1][1] if found else frozenset()


def wait_for(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


class Traffic:
    """Events spread evenly over the partitions (cards chosen by where their key lands), each partition
    with its own merchant and its own event time (``AHEAD_S``)."""

    def __init__(self, bootstrap: str, codec: Codec, topic: str, tag: str) -> None:
        self.tag = tag
        self.cards: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
        i = 0
        while min(len(c) for c in self.cards.values()) < CARDS_PER_PARTITION:
            card = f"c{i}-{tag}"
            i += 1
            if len(own := self.cards[partition_of(card)]) < CARDS_PER_PARTITION:
                own.append(card)
        self.producer = EventProducer(bootstrap, codec, "transaction", topic, key_fields=["card_id"], linger_ms=5)
        self.sent: dict[str, tuple[int, int, float]] = {}  # event id -> (partition, event time µs, sent at epoch s)
        self.n = 0

    def send(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            p = self.n % PARTITIONS
            eid = f"{self.tag}-{self.n}"
            now = time.time()
            t_us = int((now + AHEAD_S[p]) * S)
            card = self.cards[p][(self.n // PARTITIONS) % CARDS_PER_PARTITION]
            self.producer.send(transaction(eid, card=card, merchant_id=f"m{p}-{self.tag}",
                                           amount=5.0 + self.n % 17, event_time=t_us))
            self.sent[eid] = (p, t_us, now)
            ids.append(eid)
            self.n += 1
        return ids

    def stream(self, stop: threading.Event, ids: list[str]) -> None:
        """``RATE`` events a second, ``STEP`` at a time, until ``stop`` is set (run in a thread)."""
        t0 = time.monotonic()
        while not stop.is_set():
            ids.extend(self.send(STEP))
            self.producer.poll(0)
            time.sleep(max(0.0, t0 + len(ids) / RATE - time.monotonic()))


class Predictions:
    """The predictions topic read from the beginning, decoded once as they come."""

    def __init__(self, bootstrap: str, topic: str, codec: Codec) -> None:
        self.reader = TopicReader(bootstrap, topic)
        self.codec = codec
        self.got: list[tuple[int, dict[str, Any]]] = []  # (Kafka partition, prediction)
        self.ids: set[str] = set()

    def until(self, want: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not want <= self.ids and time.monotonic() < deadline:
            for m in self.reader.poll(0.1):
                p = self.codec.decode("prediction", m.value())
                self.got.append((m.partition() or 0, p))
                self.ids.add(p["event_id"])
        missing = want - self.ids
        assert not missing, f"{len(missing)} of {len(want)} events never scored, e.g. {sorted(missing)[:5]}"

    def close(self) -> None:
        self.reader.close()


def scored(worker: WorkerProcess) -> float:
    samples = scrape(f"http://127.0.0.1:{worker.env['STREAMING_METRICS_PORT']}/metrics")
    return samples.get(("streaming_events_total", (("outcome", "scored"),)), 0.0)


@pytest.mark.integration
async def test_two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops(
        servers: Servers, models_dir: Path, schema_registry: SchemaRegistry, fraud_pipeline: Pipeline,
        tmp_path: Path) -> None:
    t_test = time.monotonic()
    codec = Codec(schema_registry)
    pipeline = pipeline_variant(tmp_path / "pipeline.toml", monitors=("model_error",))  # no label-free monitors
    env = worker_env(servers, models_dir, pipeline=pipeline, STREAMING_TOPIC_PARTITIONS=str(PARTITIONS),
                     STREAMING_SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_S),
                     STREAMING_COMMIT_INTERVAL_S=str(COMMIT_INTERVAL_S))
    tag = env["STREAMING_APP_ID"].removeprefix("worker-")
    events_topic = env["STREAMING_TOPIC_EVENTS"]
    ensure_topics(servers.bootstrap, [env[f"STREAMING_TOPIC_{t}"] for t in
                                      ("EVENTS", "PREDICTIONS", "LABELS", "RETRAIN", "DLQ")], PARTITIONS)
    one, two = (WorkerProcess({**env, "STREAMING_METRICS_PORT": str(free_port())}, tmp_path / f"worker-{name}.log")
                for name in ("one", "two"))
    traffic = Traffic(servers.bootstrap, codec, events_topic, tag)
    preds = Predictions(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"], codec)
    stop_traffic = threading.Event()
    streamer: threading.Thread | None = None
    try:
        # (a) a second worker joins a running one: the group splits the partitions between them
        one.start()
        wait_for("the first worker gets every partition", lambda: current(one, events_topic) == ALL, 30)
        t_join = time.time()
        two.start()
        wait_for("the two workers split the partitions",
                 lambda: (current(one, events_topic) | current(two, events_topic)) == ALL
                 and current(one, events_topic).isdisjoint(current(two, events_topic))
                 and current(one, events_topic) and current(two, events_topic), 30)
        # the rebalance: from the second worker's join request to the first worker's smaller assignment
        rebalance_s = assignments(one.log_path, events_topic)[-1][0] - logged_at(two.log_path, "joining group")[0]
        started_s = logged_at(two.log_path, "[^Worker]: Ready")[0] - t_join
        mine = {"one": current(one, events_topic), "two": current(two, events_topic)}

        # (b) together they score every event of the first phase
        first = traffic.send(400)
        assert traffic.producer.flush(10) == 0
        preds.until(set(first), timeout=30)
        on = Counter(traffic.sent[e][0] for e in first)
        counts = {"one": scored(one), "two": scored(two)}
        for name, parts in mine.items():
            assert counts[name] >= sum(on[p] for p in parts) > 0, (name, parts, counts)

        # (c) the first worker stops while events keep flowing; the second takes every partition over
        second: list[str] = []
        streamer = threading.Thread(target=traffic.stream, args=(stop_traffic, second), daemon=True)
        streamer.start()
        time.sleep(1.0)
        t_stop = time.time()
        assert one.stop() == 0, one.tail(5)
        stopped_s = time.time() - t_stop
        wait_for("the second worker takes every partition",
                 lambda: any(t >= t_stop and parts == ALL for t, parts in assignments(two.log_path, events_topic)),
                 30)
        takeover_s = min(t for t, parts in assignments(two.log_path, events_topic)
                         if t >= t_stop and parts == ALL) - t_stop
        time.sleep(1.0)  # events after the takeover too
        stop_traffic.set()
        streamer.join(10)
        assert traffic.producer.flush(10) == 0
        preds.until(set(second), timeout=30)
        assert two.alive
    finally:
        stop_traffic.set()
        if streamer is not None:
            streamer.join(10)
        one.stop()
        two.stop()
        preds.close()
        traffic.producer.close()

    # every event scored; an event with more than one prediction moved its features once: every other
    # prediction of it is flagged redelivered; none is late (the backlog partitions have their own watermark)
    everything = [p for _, p in preds.got if p["event_id"] in traffic.sent]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in everything:
        by_id[p["event_id"]].append(p)
    assert set(by_id) == set(traffic.sent)
    assert {f for p in everything for f in p["flags"]} <= {"redelivered"}, "no event late, none on default features"
    for eid, ps in by_id.items():
        assert sum(1 for p in ps if not p["flags"]) <= 1, (eid, ps)
    for part, p in preds.got:  # a prediction goes where its event came from: the same key, the same partitioner
        if p["event_id"] in traffic.sent:
            assert part == traffic.sent[p["event_id"]][0], p
    duplicated = sorted(e for e, ps in by_id.items() if len(ps) > 1)
    flagged_alone = sorted(e for e, ps in by_id.items() if len(ps) == 1 and ps[0]["flags"])
    # each rebalance commits what was acknowledged before the partitions go (streaming/worker/intake.py)
    assert len(duplicated) <= MAX_DUPLICATES, f"{len(duplicated)} events scored twice: the rebalance re-read them"
    # the longest an event of the stopped worker's partitions waited for its prediction (the takeover)
    moved, later = ALL - mine["two"], set(second)
    waits = [(p["predicted_at"] - p["produced_at"]) / S for p in everything
             if p["event_id"] in later and traffic.sent[p["event_id"]][0] in moved]

    # (d) one watermark per input partition: its own latest event time (partition 0, ahead of the clock,
    # stops at the worker's clock)
    store = RedisFeatureStore(aioredis.Redis.from_url(servers.redis_url), fraud_pipeline,
                              prefix=env["STREAMING_REDIS_PREFIX"])
    wm: dict[int, float] = {}
    try:
        for part in range(PARTITIONS):
            raw = await store.client.get(store.watermark_key(part))
            assert raw is not None, f"no watermark for partition {part}"
            wm[part] = float(raw)
    finally:
        await store.close()
    latest = {part: max(t for q, t, _ in traffic.sent.values() if q == part) // S for part in range(PARTITIONS)}
    last_sent = {part: max(s for q, _, s in traffic.sent.values() if q == part) for part in range(PARTITIONS)}
    for part in (1, 2, 3):
        assert wm[part] == latest[part], (part, wm, latest)
    assert int(last_sent[0]) <= wm[0] <= time.time() < latest[0], (wm[0], last_sent[0], latest[0])
    assert wm[1] - wm[3] > 10 * 60, "partition 3 runs 15 minutes behind partition 1, and none of its events is late"

    print(f"\nscale-out: second worker ready after {started_s:.1f}s, rebalance {rebalance_s:.1f}s, first phase {len(first)} events (scored: {counts}), "
          f"partitions {dict(mine)}; stop took {stopped_s:.1f}s, takeover {takeover_s:.1f}s after SIGTERM; "
          f"second phase {len(second)} events; predictions {len(everything)} for {len(by_id)} events, "
          f"{len(duplicated)} duplicated, {len(flagged_alone)} flagged without a duplicate; longest wait of a moved "
          f"partition's event {max(waits):.2f}s; whole test {time.monotonic() - t_test:.1f}s")


class _TP(NamedTuple):
    topic: str
    partition: int


class _FaustConsumer:
    """What :class:`BatchDrain` needs of Faust's consumer, recording the order of the calls."""

    def __init__(self, *, stopping: bool = False, watch: LogWatch | None = None, ends: int = 1000) -> None:
        self.calls: list[str] = []
        self.ends = ends

        async def drain() -> None:
            self.calls.append("drain")

        self.app = SimpleNamespace(should_stop=stopping, drains=[drain], logwatch=watch)

    def assignment(self) -> set[_TP]:
        return {_TP("events", 0)}

    def stop_flow(self) -> None:
        self.calls.append("stop_flow")

    async def maybe_wait_for_commit_to_finish(self) -> bool:
        self.calls.append("wait_commit")
        return False

    async def highwaters(self, *partitions: _TP) -> dict[_TP, int]:
        self.calls.append("log_ends")
        return {tp: self.ends for tp in partitions}

    async def commit(self) -> bool:
        self.calls.append("commit")
        return True

    async def on_partitions_revoked(self, revoked: set[_TP]) -> None:
        self.calls.append("faust_revoked")  # Faust forgets the revoked partitions' acknowledgements here


class _Consumer(BatchDrain, _FaustConsumer):
    pass


async def test_a_revocation_drains_and_commits_before_faust_forgets_the_acknowledgements() -> None:
    consumer = _Consumer()
    await consumer.on_partitions_revoked({_TP("events", 0)})
    assert consumer.calls == ["stop_flow", "drain", "wait_commit", "commit", "faust_revoked"]
    stopping = _Consumer(stopping=True)  # a stop commits on its own (Faust's Consumer.on_stop)
    await stopping.on_partitions_revoked({_TP("events", 0)})
    assert stopping.calls == ["faust_revoked"]


async def test_a_revocation_after_the_broker_lost_its_logs_commits_nothing() -> None:
    """A broker restarted without storage: old offsets committed there would skip its new records."""
    watch = LogWatch(["events", "labels"])
    assert watch.check_highwaters({_TP("events", 0): 2107}) is None  # what the worker saw before
    kept = _Consumer(watch=watch, ends=2200)
    await kept.on_partitions_revoked({_TP("events", 0)})
    assert kept.calls == ["stop_flow", "drain", "wait_commit", "log_ends", "commit", "faust_revoked"]
    lost = _Consumer(watch=watch, ends=12)
    await lost.on_partitions_revoked({_TP("events", 0)})
    assert lost.calls == ["stop_flow", "drain", "wait_commit", "log_ends", "faust_revoked"]
