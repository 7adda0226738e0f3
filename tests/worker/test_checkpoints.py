"""The learner's state survives a restart: signed checkpoints in Redis, refused when tampered, labels replayed."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest

from streaming.features.store import ServedVector
from streaming.worker.checkpoints import LearnerCheckpoints
from streaming.worker.learn import LabelProcessor
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from tests.conftest import Servers, settings_from, unique, worker_env

pytestmark = pytest.mark.integration


def build(servers: Servers, models_dir: Path, prefix: str, tmp_path: Path) -> Runtime:
    env = worker_env(servers, models_dir, STREAMING_REDIS_PREFIX=prefix,
                     STREAMING_CHECKPOINT_KEY_FILE=str(tmp_path / "checkpoint.key"))
    return Runtime.build(settings_from(env))


async def served(rt: Runtime, n: int, seed: int) -> list[ServedVector]:
    """``n`` vectors in the feature log, as the worker would have logged them (a separable concept)."""
    rng = random.Random(seed)
    tag = rt.models.active.tag
    out = []
    for i in range(n):
        x = [rng.uniform(0, 3) for _ in rt.vectors.names]
        out.append(ServedVector(unique(f"ck{i}"), x, tag, 0.5, 1_000_000 * (i + 1), rt.vectors.spec_version))
    await rt.store.log_served(out)
    return out


def labels(rt: Runtime, vectors: list[ServedVector], start: int = 0) -> list[InRecord]:
    """A label per vector on partition 0 at consecutive offsets from ``start``: 1 when x0 + x1 > 3."""
    return [InRecord(None, rt.codec.encode("label", {"event_id": v.event_id, "label": int(v.x[0] + v.x[1] > 3),
                                                     "label_time": 1}), "labels", 0, start + i, None, 0)
            for i, v in enumerate(vectors)]


def probe(rt: Runtime) -> list[float | None]:
    rng = np.random.default_rng(5)
    return [rt.learner.predict(dict(zip(rt.vectors.names, row.tolist(), strict=True)))
            for row in rng.uniform(0, 3, (20, len(rt.vectors.names)))]


async def test_a_restart_resumes_learning_where_it_left_off(servers: Servers, models_dir: Path,
                                                            tmp_path: Path) -> None:
    # run A: one worker learns 600 labels without a restart
    a = build(servers, models_dir, unique("cka") + ":", tmp_path)
    vec_a = await served(a, 600, seed=1)
    pa = LabelProcessor(a)
    await pa.process(labels(a, vec_a))
    # run B: the same labels; a checkpoint after 400, 100 more learned (their offsets committed), then a crash
    b = build(servers, models_dir, unique("ckb") + ":", tmp_path)
    vec_b = [ServedVector(unique("b"), v.x, v.model_version, v.score, v.event_time, v.feature_spec) for v in vec_a]
    await b.store.log_served(vec_b)
    recs = labels(b, vec_b)
    pb = LabelProcessor(b)
    ckb = LearnerCheckpoints(b, pb)
    await pb.process(recs[:400])
    assert await ckb.save() > 0
    await pb.process(recs[400:500])  # learned, never checkpointed: lost with the process
    # the restart: a fresh runtime restores the checkpoint, then the labels after it are delivered again
    b2 = build(servers, models_dir, b.settings.redis_prefix, tmp_path)
    pb2 = LabelProcessor(b2)
    ck2 = LearnerCheckpoints(b2, pb2)
    assert await ck2.restore() == {"0": 399}
    assert b2.learner.seen == 400
    batch = await pb2.process(recs[400:])  # 400..499 learned again (the same records), then the rest
    assert batch.joined == 200 and batch.duplicates == 0
    assert b2.learner.seen == a.learner.seen == 600
    assert probe(b2) == probe(a)  # the same state as the run without a restart
    assert b2.evaluator.report()["learner"]["n"] == a.evaluator.report()["learner"]["n"]
    # a second label for an event already learned stays a duplicate, from any record
    again = labels(b2, vec_b[:3], start=1000)
    assert (await pb2.process(again)).duplicates == 3
    for rt in (a, b, b2):
        await rt.store.close()


async def test_a_tampered_checkpoint_is_refused_and_the_learner_starts_fresh(
        servers: Servers, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prefix = unique("ckt") + ":"
    rt = build(servers, models_dir, prefix, tmp_path)
    proc = LabelProcessor(rt)
    ck = LearnerCheckpoints(rt, proc)
    await proc.process(labels(rt, await served(rt, 300, seed=2)))
    await ck.save()
    await ck.save()  # a previous one too
    client = rt.store.client  # type: ignore[attr-defined]
    for name in (ck.store.name, ck.store.name + ":prev"):
        blob = bytearray(await client.get(name))
        blob[-10] ^= 0xFF  # one byte of the pickled state
        await client.set(name, bytes(blob))
    fresh = build(servers, models_dir, prefix, tmp_path)
    ck2 = LearnerCheckpoints(fresh, LabelProcessor(fresh))
    with caplog.at_level(logging.WARNING):
        assert await ck2.restore() is None
    assert fresh.learner.seen == 0 and not fresh.learner.ready
    assert "HMAC" in caplog.text and "starting fresh" in caplog.text
    assert fresh.metrics.checkpoints.labels("refused")._value.get() == 2
    # under another key, an intact checkpoint is refused the same way
    await ck.save()
    other = build(servers, models_dir, prefix, tmp_path / "other")
    assert await LearnerCheckpoints(other, LabelProcessor(other)).restore() is None
    for r in (rt, fresh, other):
        await r.store.close()


class Consumer:
    """The Faust consumer's position and seek (a double: the seek logic is what is tested here)."""

    def __init__(self, positions: dict[int, int]) -> None:
        self.positions = positions
        self.seeks: dict[int, int] = {}

    async def position(self, tp: object) -> int:
        return self.positions[tp.partition]  # type: ignore[attr-defined]

    async def seek(self, tp: object, offset: int) -> None:
        self.seeks[tp.partition] = offset  # type: ignore[attr-defined]


async def test_labels_committed_after_the_checkpoint_are_replayed(servers: Servers, models_dir: Path,
                                                                 tmp_path: Path) -> None:
    from faust.types import TP

    rt = build(servers, models_dir, unique("cks") + ":", tmp_path)
    proc = LabelProcessor(rt)
    proc.learned = {"0": 99, "1": 40}
    await LearnerCheckpoints(rt, proc).save()
    fresh = build(servers, models_dir, rt.settings.redis_prefix, tmp_path)
    ck = LearnerCheckpoints(fresh, LabelProcessor(fresh))
    topic = fresh.settings.topic_labels
    consumer = Consumer({0: 150, 1: 41, 2: 7})
    await ck.seek_labels(consumer, {TP(topic, 0), TP(topic, 1), TP(topic, 2), TP("events", 0)})
    assert consumer.seeks == {0: 100}  # partition 1 is at the checkpoint already; 2 has no checkpointed labels
    for r in (rt, fresh):
        await r.store.close()


async def test_each_worker_of_a_group_gets_its_own_learner_back(servers: Servers, models_dir: Path,
                                                                tmp_path: Path) -> None:
    """Two workers of one pipeline learn from different labels; with STREAMING_WORKER_ID each restores its own."""
    prefix = unique("ckw") + ":"

    def worker(name: str) -> Runtime:
        env = worker_env(servers, models_dir, STREAMING_REDIS_PREFIX=prefix, STREAMING_WORKER_ID=name,
                         STREAMING_CHECKPOINT_KEY_FILE=str(tmp_path / "checkpoint.key"))
        return Runtime.build(settings_from(env))

    runtimes = []
    for name, n in (("pod-1", 300), ("pod-2", 500)):
        rt = worker(name)
        vecs = await served(rt, n, seed=n)
        p = LabelProcessor(rt)
        await p.process(labels(rt, vecs))
        assert await LearnerCheckpoints(rt, p).save() > 0
        runtimes.append(rt)
    for name, n in (("pod-1", 300), ("pod-2", 500)):  # both restart
        rt = worker(name)
        ck = LearnerCheckpoints(rt, LabelProcessor(rt))
        assert await ck.restore() == {"0": n - 1}
        assert rt.learner.seen == n  # its own learner, not the last writer's
        runtimes.append(rt)
    for rt in runtimes:
        await rt.store.close()
