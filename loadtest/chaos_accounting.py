"""What came out of a chaos run, read back and compared with what went in.

* :class:`EpochReader`: a child process that reads one broker epoch's predictions and dead letters
  from the beginning (a broker restart forgets the topics, so each epoch gets its own reader) and
  tallies, per event id, every prediction and its flags, and every dead letter by what it was (a
  valid event, a hostile record, a label); the parent sees live counts for progress and for the
  quiet moment before the broker restart.
* :func:`committed`: the worker group's committed offsets (a label is acknowledged only once
  processed, so the labels below the committed offset were all joined or dead-lettered).
* :func:`check_aggregates`: the window features Redis holds after the run, read with probe events
  (one per entity value seen), against :class:`~streaming.features.reference.ReferenceStore` fed with
  every valid event once: a redelivered event applied twice, or a lost update, shows as a difference.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventT
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from loadtest.chaos_traffic import HOSTILE_PREFIX
from streaming.errors import UserError
from streaming.events.codec import Codec
from streaming.events.reader import TopicReader
from streaming.events.security import client_config
from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore
from streaming.pipeline.spec import Pipeline

__all__ = ["EpochReader", "EpochTally", "check_aggregates", "committed"]

# prediction tally slots: how many predictions, without a flag, "redelivered", "late", "default_features"
TOTAL, PLAIN, REDELIVERED, LATE, DEGRADED = range(5)
# live counters: valid events predicted, valid events dead-lettered, hostile records dead-lettered,
# label dead letters, records read, hostile records predicted
_COUNTERS = 6


@dataclass
class EpochTally:
    """One broker epoch's output. Keys are event ids (hostile records: their key)."""

    predictions: dict[str, list[int]] = field(default_factory=dict)  # id -> [total, plain, redelivered, late, degraded]
    hostile_predicted: list[str] = field(default_factory=list)
    dead_events: dict[str, list[str]] = field(default_factory=dict)  # valid event id -> stage: reason, per copy
    dead_hostile: dict[str, list[str]] = field(default_factory=dict)  # hostile key -> stage: reason, per copy
    dead_labels: dict[str, list[str]] = field(default_factory=dict)  # label's event id -> stage: reason, per copy
    unidentified: list[str] = field(default_factory=list)  # dead letters of nothing the run sent (the first few)
    unidentified_count: int = 0
    records: int = 0
    undecodable_predictions: int = 0


def _classify(codec: Codec, subject: str, events_topic: str, labels_topic: str, msg: Any, out: EpochTally) -> int:
    """File one dead letter; returns the live counter it adds to (-1: none)."""
    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
    why = f"{headers.get('dlq.stage', '?')}: {headers.get('dlq.reason', '?')[:300]}"
    key = (msg.key() or b"").decode("utf-8", "replace")
    source = headers.get("dlq.topic", "")
    if key.startswith(HOSTILE_PREFIX):
        first = key not in out.dead_hostile
        out.dead_hostile.setdefault(key, []).append(why)
        return 2 if first else -1
    try:
        if source == labels_topic:
            eid = str(codec.decode("label", msg.value())["event_id"])
            first = eid not in out.dead_labels
            out.dead_labels.setdefault(eid, []).append(why)
            return 3 if first else -1
        if source == events_topic:
            eid = str(codec.decode(subject, msg.value())["event_id"])
            first = eid not in out.dead_events
            out.dead_events.setdefault(eid, []).append(why)
            return 1 if first else -1
    except Exception:  # an undecodable dead letter of a valid record: counted as unidentified below
        pass
    out.unidentified_count += 1
    if len(out.unidentified) < 5:
        out.unidentified.append(f"{source}@{headers.get('dlq.offset', '?')} key={key[:40]!r} {why}")
    return -1


def _read(bootstrap: str, topics: tuple[str, str, str, str], codec: Codec, subject: str, id_prefix: str,
          ready: EventT, stop: EventT, counters: Any, conn: Connection) -> None:
    """The child's main: tally until ``stop``, read what is left, send the :class:`EpochTally` back."""
    events_topic, labels_topic, predictions_topic, dlq_topic = topics
    preds = TopicReader(bootstrap, predictions_topic, from_beginning=True)
    dlq = TopicReader(bootstrap, dlq_topic, from_beginning=True)
    ready.set()
    out = EpochTally()
    tally = out.predictions
    stop_at = 0.0
    last_data = time.monotonic()
    while True:
        msgs = preds.poll(0.01, 2000)
        dead = dlq.poll(0.01 if msgs else 0.05, 500)
        for m in msgs:
            out.records += 1
            try:
                p = codec.decode("prediction", m.value())
            except Exception:
                out.undecodable_predictions += 1
                continue
            eid = str(p["event_id"])
            if not eid.startswith(id_prefix):
                if eid.startswith(HOSTILE_PREFIX):
                    out.hostile_predicted.append(eid)
                    counters[5] += 1
                continue
            t = tally.get(eid)
            if t is None:
                t = tally[eid] = [0, 0, 0, 0, 0]
                counters[0] += 1
            flags = p.get("flags") or ()
            t[TOTAL] += 1
            t[PLAIN] += not flags
            t[REDELIVERED] += "redelivered" in flags
            t[LATE] += "late" in flags
            t[DEGRADED] += "default_features" in flags
        for m in dead:
            out.records += 1
            slot = _classify(codec, subject, events_topic, labels_topic, m, out)
            if slot >= 0:
                counters[slot] += 1
        counters[4] = out.records
        now = time.monotonic()
        if msgs or dead:
            last_data = now
        if stop.is_set():  # read what is left: until half a second without a record (at most 10 s)
            stop_at = stop_at or now
            if now - last_data > 0.5 or now - stop_at > 10:
                break
    preds.close()
    dlq.close()
    conn.send(out)
    conn.close()


class EpochReader:
    """The child that tallies one broker epoch (``spawn``: nothing inherited from the producers)."""

    def __init__(self, bootstrap: str, topics: tuple[str, str, str, str], codec: Codec, subject: str,
                 id_prefix: str) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._counters = ctx.Array("q", _COUNTERS, lock=False)
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_read, name="chaos-reader", daemon=True,
                                 args=(bootstrap, topics, codec, subject, id_prefix, self._ready, self._stop,
                                       self._counters, send))
        self._proc.start()
        send.close()
        deadline = time.monotonic() + 60
        while not self._ready.wait(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self._proc.kill()
                raise UserError(f"the chaos run's reader did not start (exit code {self._proc.exitcode})")

    @property
    def accounted(self) -> int:
        """Records of the run accounted for: valid events predicted or dead-lettered, hostile records dead-lettered."""
        c = self._counters
        return int(c[0] + c[1] + c[2] + c[5])

    @property
    def predicted(self) -> int:
        return int(self._counters[0])

    @property
    def dead(self) -> int:
        c = self._counters
        return int(c[1] + c[2] + c[3])

    def stop(self, timeout: float = 60.0) -> EpochTally:
        self._stop.set()
        try:
            if not self._recv.poll(timeout):
                raise UserError("the chaos run's reader did not report back")
            result: EpochTally = self._recv.recv()
        except EOFError:
            raise UserError(f"the chaos run's reader died (exit code {self._proc.exitcode})") from None
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        return result


def committed(bootstrap: str, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The group's committed offset of each partition (-1: none), read without joining the group."""
    consumer = Consumer(client_config(bootstrap, {"group.id": group, "enable.auto.commit": False,
                                                    "log.connection.close": False}))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def _probes(pipeline: Pipeline, events: Sequence[dict[str, Any]], ts_us: int) -> list[dict[str, Any]]:
    """One probe event per entity value seen; a probe's other entities are its own, so they read only itself."""
    plan = ReferenceStore(pipeline).plan
    spec = pipeline.event
    template = dict(events[-1])
    probes: list[dict[str, Any]] = []
    for slot, fields in enumerate(plan.entities):
        seen = dict.fromkeys(tuple(ev[f] for f in fields) for ev in events)
        for values in seen:
            n = len(probes)
            probe = {**template, spec.id_field: f"probe-{n}", spec.time_field: ts_us}
            for other, ofields in enumerate(plan.entities):
                if other != slot:
                    probe.update({f: f"probe-{n}-{f}" for f in ofields if f not in fields})
            probe.update(zip(fields, values, strict=True))
            probes.append(probe)
    return probes


async def _read_store(redis_url: str, prefix: str, pipeline: Pipeline, probes: list[dict[str, Any]]) -> list[list[float]]:
    store = RedisFeatureStore.from_url(redis_url, pipeline, prefix=prefix)
    try:
        out: list[list[float]] = []
        for i in range(0, len(probes), 500):
            out += [r.values for r in await store.update_and_read(probes[i:i + 500])]
        return out
    finally:
        await store.close()


def check_aggregates(redis_url: str, prefix: str, pipeline: Pipeline, events: Sequence[dict[str, Any]],
                     ts_us: int) -> dict[str, Any]:
    """Every window feature of every entity value seen, Redis against the reference; ``ts_us``: the probes' time.

    Distinct counts (HyperLogLog in Redis, ~0.8% error) may differ by 3%; every other value must agree.
    """
    if not events:
        return {"aggregates_checked": 0, "aggregates_off_reference": 0, "aggregate_examples": []}
    probes = _probes(pipeline, events, ts_us)
    ref = ReferenceStore(pipeline)
    ref.update_and_read(events)
    want = ref.update_and_read(probes)
    got = asyncio.run(_read_store(redis_url, prefix, pipeline, probes))
    reads = ref.plan.reads
    off = 0
    examples: list[str] = []
    for probe, g, w in zip(probes, got, want, strict=True):
        bad = [(r.name, gv, wv) for r, gv, wv in zip(reads, g, w, strict=True)
               if not math.isclose(gv, wv, rel_tol=0.03 if r.code == "d" else 1e-7, abs_tol=1e-6)]
        if bad:
            off += 1
            if len(examples) < 5:
                ents = {f: probe[f] for fields in ref.plan.entities for f in fields}
                examples.append(f"{ents}: " + ", ".join(f"{n} redis {gv:g} vs reference {wv:g}" for n, gv, wv in bad))
    return {"aggregates_checked": len(probes), "aggregates_off_reference": off, "aggregate_examples": examples}
