"""The retrain job: the logged dataset's accounting, each decision on a real Redis with real ONNX models, and
one run of ``run_retrain`` against the session's broker and Redis on drifted data."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Producer

from streaming.errors import UnreachableError
from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.events.topics import ensure_topics
from streaming.features.store import RedisFeatureStore, ServedVector
from streaming.features.vector import VectorBuilder
from streaming.inference.registry import ModelRegistry
from streaming.online.request import RetrainRequest
from streaming.online.retrain import DEDUPE_TTL_S, RetrainJob, dedupe_redis_key, run_retrain
from streaming.pipeline.spec import Pipeline, RetrainSpec
from streaming.settings import Settings
from streaming.training.dataset import Dataset
from streaming.training.logged import LabelValues, logged_dataset
from streaming.training.trainer import train_mlp
from tests.conftest import ROOT, Servers, settings_from, unique, worker_env

S = 1_000_000
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def rule(X: np.ndarray, drifted: bool, rng: np.random.Generator) -> np.ndarray:
    """The label: before the drift it follows columns 0 and 1, after it columns 2 and 3 (against 0)."""
    noise = rng.normal(0, 0.3, len(X))
    z = (X[:, 2] - X[:, 3] - 0.5 * X[:, 0]) if drifted else (X[:, 0] + 0.5 * X[:, 1])
    return (z + noise > 0.8).astype(np.int64)


def active_model(registry: ModelRegistry, names: list[str]) -> str:
    """A first version, trained on the rule before the drift, activated."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, len(names)))
    ds = Dataset(X, rule(X, False, rng), np.arange(1500, dtype=np.int64), names)
    trained = train_mlp(ds, hidden=(8,), seed=1, max_iter=150)
    mv = registry.write(trained.onnx_bytes, {"pipeline": registry.name, "inputs": names, "metrics": trained.metrics})
    registry.activate(mv.version)
    return mv.version


def served(pipeline: Pipeline, n: int, *, drifted: bool, start_us: int, seed: int = 2,
           prefix: str = "e") -> tuple[list[ServedVector], list[int]]:
    """``n`` served vectors of the pipeline's width, one every 0.5 s from ``start_us``, and their labels."""
    b = VectorBuilder(pipeline)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, b.width))
    y = rule(X, drifted, rng)
    vecs = [ServedVector(f"{prefix}{i}", X[i].tolist(), "v1", 0.5, start_us + i * S // 2, b.spec_version)
            for i in range(n)]
    return vecs, y.tolist()


def label_values(codec: Codec, ids: list[str], labels: list[int]) -> list[bytes | None]:
    return [codec.encode("label", {"event_id": e, "label": int(v), "label_time": 1}) for e, v in zip(ids, labels, strict=True)]


def request(version: str = "v1", key: str | None = None, window_end: int | None = None) -> RetrainRequest:
    return RetrainRequest.new(model="fraud", model_version=version, monitor="model_error", signal="error",
                              statistic=0.4, threshold=0.1, window_start=0,
                              window_end=time.time_ns() // 1000 if window_end is None else window_end,
                              sample_count=500, dedupe_key=key or f"fraud:{version}:model_error:{uuid.uuid4().hex[:6]}")


def with_retrain(toml: str, table: str) -> str:
    """The pipeline file with its ``[retrain]`` table (if any) replaced by ``table``."""
    kept: list[str] = []
    inside = False
    for line in toml.splitlines():
        if line.startswith("["):
            inside = line.strip() == "[retrain]"
        if not inside:
            kept.append(line)
    return "\n".join(kept) + "\n\n[retrain]\n" + table


async def drop(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.unlink(*keys)


@pytest.fixture
async def store(fraud_pipeline: Pipeline) -> AsyncIterator[RedisFeatureStore]:
    """A store on the local Redis under a prefix of its own, its keys deleted afterwards."""
    s = RedisFeatureStore(aioredis.Redis.from_url(LOCAL_REDIS), fraud_pipeline, prefix=f"{unique('retrain')}:")
    try:
        yield s
    finally:
        await drop(s.client, s.prefix)
        await s.close()


@pytest.fixture
def codec(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


# -- the logged dataset ----------------------------------------------------------------------------------------
async def test_every_label_is_accounted_for_and_the_last_label_wins(store: RedisFeatureStore, codec: Codec,
                                                                     fraud_pipeline: Pipeline) -> None:
    vecs, labels = served(fraud_pipeline, 1200, drifted=False, start_us=1_000 * S)
    vecs.reverse()  # logged out of event-time order: the rows come back in it
    labels.reverse()
    odd = [dataclasses.replace(vecs[0], event_id="spec", feature_spec="000000000000"),
           dataclasses.replace(vecs[0], event_id="narrow", x=vecs[0].x[:3]),
           dataclasses.replace(vecs[0], event_id="early", event_time=10 * S),
           dataclasses.replace(vecs[0], event_id="late", event_time=10_000 * S)]
    await store.log_served(vecs + odd)
    await store.client.set(f"{store.prefix}flog:{{broken}}", b"not json")
    ids = [v.event_id for v in vecs]
    values = label_values(codec, ids, labels)
    values += label_values(codec, ["spec", "narrow", "early", "late", "broken", "nowhere"], [1] * 6)
    values += [b"\xff garbage", codec.encode_json({"event_id": "x", "label": 2, "label_time": 0})]
    flipped = [labels[0], 1 - labels[0]]  # labelled three times: the last label wins
    values += label_values(codec, [ids[0], ids[0]], flipped)
    ds, stats = await logged_dataset(values, store, codec, fraud_pipeline, since_us=500 * S, until_us=5_000 * S,
                                     batch=97)
    assert stats.accounted and stats.labels_read == len(values) == 1210
    assert (stats.rows, stats.duplicates, stats.invalid, stats.missing_vector, stats.unreadable_vector) == (
        1200, 2, 2, 1, 1)
    assert (stats.other_spec, stats.wrong_width, stats.outside_window) == (1, 1, 2)
    assert ds.X.shape == (1200, 10) and ds.X.dtype == np.float64 and ds.y.dtype == np.int64
    assert np.all(np.diff(ds.event_time) > 0)  # ordered by event time
    assert ds.feature_names == list(fraud_pipeline.model.inputs)
    first = int(np.argmin(ds.event_time))
    assert ds.event_time[first] == vecs[-1].event_time and ds.X[first].tolist() == vecs[-1].x
    assert stats.positives == int(ds.y.sum())
    by_time = {v.event_time: lab for v, lab in zip(vecs, labels, strict=True)}
    by_time[vecs[0].event_time] = flipped[-1]
    assert ds.y.tolist() == [by_time[int(t)] for t in ds.event_time]


# -- the decisions ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Env:
    pipeline: Pipeline
    registry: ModelRegistry
    store: RedisFeatureStore
    codec: Codec
    labels: list[bytes | None]

    def job(self, labels: Callable[[], Awaitable[LabelValues]] | None = None, **retrain: Any) -> RetrainJob:
        pipeline = dataclasses.replace(self.pipeline, retrain=dataclasses.replace(self.pipeline.retrain, **retrain))

        async def source() -> LabelValues:
            return LabelValues(list(self.labels), {0: len(self.labels)})

        return RetrainJob(Settings.from_env({}), pipeline, self.registry, self.store, self.codec, "",
                          labels=labels or source)

    async def log(self, n: int, *, drifted: bool, seed: int = 2) -> None:
        vecs, labels = served(self.pipeline, n, drifted=drifted, start_us=time.time_ns() // 1000 - 2_000 * S,
                              seed=seed, prefix=f"s{seed}-")
        await self.store.log_served(vecs)
        self.labels += label_values(self.codec, [v.event_id for v in vecs], labels)


@pytest.fixture
def env(tmp_path: Path, fraud_pipeline: Pipeline, store: RedisFeatureStore, codec: Codec) -> Env:
    pipeline = dataclasses.replace(
        fraud_pipeline,
        retrain=RetrainSpec(auto_promote=True, margin=0.05, lookback_s=3600, min_rows=500, holdout=0.25),
        model=dataclasses.replace(fraud_pipeline.model, train={"hidden": [8], "seed": 1, "max_iter": 150}),
    )
    registry = ModelRegistry(tmp_path / "models", "fraud")
    active_model(registry, list(pipeline.model.inputs))
    return Env(pipeline, registry, store, codec, [])


async def test_a_better_candidate_is_promoted_by_the_margin(env: Env) -> None:
    await env.log(1600, drifted=True)
    req = request()
    out = await env.job().handle(req)
    assert out.outcome == "promoted" and out.version == "v2", out
    assert out.candidate_auc is not None and out.active_auc is not None
    assert out.candidate_auc >= out.active_auc + 0.05 and out.active_auc < 0.75 < out.candidate_auc
    assert out.rows == 1600 and out.eval_rows == 400 and out.stats["rows"] == 1600
    assert env.registry.active_name() == "v2" and env.registry.pointers() == ("v2", None)  # promoted: no shadow
    meta = env.registry.get("v2").metadata
    td, ev = meta["training_data"], meta["evaluation"]
    assert td["source"] == "feature_log" and td["request_id"] == req.request_id and td["dedupe_key"] == req.dedupe_key
    assert td["rows"] == 1200 and td["labels"]["labels_read"] == 1600 and meta["parent"] == "v1"
    assert td["event_time_end"] < ev["event_time_start"]  # evaluated on the most recent rows
    assert ev["rows"] == 400 and ev["active"]["version"] == "v1"
    assert ev["candidate"]["roc_auc"] == pytest.approx(out.candidate_auc, abs=1e-6)
    assert ev["active"]["log_loss"] > ev["candidate"]["log_loss"]
    assert meta["inputs"] == list(env.pipeline.model.inputs)
    holder = await env.store.client.get(dedupe_redis_key(env.store.prefix, req.dedupe_key))
    assert holder == req.request_id.encode()
    assert DEDUPE_TTL_S - 60 < await env.store.client.ttl(dedupe_redis_key(env.store.prefix, req.dedupe_key))


@pytest.mark.parametrize(("drifted", "auto", "reason"), [
    (False, True, "+ margin 0.05"),  # no drift: the candidate is no better than the active version
    (True, False, "auto_promote is off"),
])
async def test_a_candidate_that_is_not_promoted_stays_in_shadow(env: Env, drifted: bool, auto: bool,
                                                                  reason: str) -> None:
    await env.log(1600, drifted=drifted)
    out = await env.job(auto_promote=auto).handle(request())
    assert out.outcome == "shadowed" and reason in out.reason, out
    assert env.registry.pointers() == ("v1", "v2")
    assert env.registry.get("v2").metadata["evaluation"]["auto_promote"] is auto


async def test_too_few_rows_release_the_key_so_a_later_request_can_act(env: Env) -> None:
    await env.log(300, drifted=True)
    req = request()
    out = await env.job().handle(req)
    assert out.outcome == "insufficient_data" and "fewer than min_rows 500" in out.reason and out.rows == 300
    assert out.version is None and env.registry.names() == ["v1"]
    assert await env.store.client.get(dedupe_redis_key(env.store.prefix, req.dedupe_key)) is None
    await env.log(1300, drifted=True, seed=3)
    again = await env.job().handle(request(key=req.dedupe_key))
    assert again.outcome == "promoted" and again.rows == 1600


async def test_a_single_class_is_insufficient(env: Env) -> None:
    await env.log(800, drifted=True)
    env.labels = [env.codec.encode("label", {**env.codec.decode("label", v), "label": 0}) for v in env.labels]
    out = await env.job().handle(request())
    assert out.outcome == "insufficient_data" and "single class" in out.reason
    assert env.registry.names() == ["v1"]


async def test_a_request_about_a_replaced_version_is_stale(env: Env) -> None:
    await env.log(800, drifted=True)
    out = await env.job().handle(request(version="v0"))
    assert out.outcome == "stale" and out.reason == "v1 is active, the request is about v0"
    assert env.registry.names() == ["v1"] and out.active_version == "v1"
    other = await env.job().handle(dataclasses.replace(request(), model="payments"))
    assert other.outcome == "other_model" and env.registry.names() == ["v1"]


async def test_one_request_acts_per_dedupe_key(env: Env) -> None:
    await env.log(1000, drifted=True)
    first = request()
    out = await env.job().handle(first)
    assert out.outcome == "promoted"
    second = await env.job().handle(request(key=first.dedupe_key))  # another monitor, the same drift
    assert second.outcome == "duplicate" and first.request_id in second.reason and second.version is None
    redelivered = await env.job().handle(first)  # the same record again (its offset was not committed)
    assert redelivered.outcome == "duplicate" and "v2 was registered for it" in redelivered.reason
    assert env.registry.names() == ["v1", "v2"]


async def test_concurrent_requests_for_one_drift_act_once(env: Env) -> None:
    await env.log(1000, drifted=True)
    key = f"fraud:v1:model_error:{uuid.uuid4().hex[:6]}"
    outs = await asyncio.gather(*(env.job().handle(request(key=key)) for _ in range(3)))
    assert sorted(o.outcome for o in outs) == ["duplicate", "duplicate", "promoted"]
    assert env.registry.names() == ["v1", "v2"]


async def test_a_failure_releases_the_key_and_propagates(env: Env) -> None:
    async def unreachable() -> LabelValues:
        raise UnreachableError("the broker is gone")

    req = request()
    with pytest.raises(UnreachableError, match="the broker is gone"):
        await env.job(labels=unreachable).handle(req)
    assert await env.store.client.get(dedupe_redis_key(env.store.prefix, req.dedupe_key)) is None


async def test_an_active_version_that_cannot_score_the_vector_is_not_replaced_automatically(env: Env) -> None:
    meta_path = env.registry.get("v1").path / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "inputs": meta["inputs"][::-1]}))
    await env.log(1000, drifted=True)
    out = await env.job().handle(request())
    assert out.outcome == "shadowed" and "takes other inputs" in out.reason and out.active_auc is None
    assert env.registry.pointers() == ("v1", "v2")


# -- the consumer, on the session's broker and Redis -----------------------------------------------------------
@pytest.mark.integration
async def test_run_retrain_promotes_a_model_trained_on_drifted_labels(servers: Servers, tmp_path: Path,
                                                                       fraud_pipeline: Pipeline, codec: Codec) -> None:
    (tmp_path / "pipeline.toml").write_text(with_retrain((ROOT / "models" / "fraud" / "pipeline.toml").read_text(), (
        'auto_promote = true\nmargin = 0.05\nlookback = "1h"\nmin_rows = 1000\nholdout = 0.2\n')))
    prefix = f"{unique('retrain')}:"
    env = worker_env(servers, tmp_path / "models", pipeline=tmp_path / "pipeline.toml", STREAMING_REDIS_PREFIX=prefix)
    settings = settings_from(env)
    registry = ModelRegistry(tmp_path / "models", "fraud")
    active_model(registry, list(fraud_pipeline.model.inputs))
    now = time.time_ns() // 1000
    vecs, labels = served(fraud_pipeline, 3000, drifted=True, start_us=now - 1_600 * S)
    old, old_labels = served(fraud_pipeline, 20, drifted=False, start_us=now - 7_200 * S, prefix="old")
    store = RedisFeatureStore.from_url(servers.redis_url, fraud_pipeline, prefix=prefix)
    try:
        for i in range(0, len(vecs), 500):
            await store.log_served(vecs[i:i + 500])
        await store.log_served(old)
        ids = [v.event_id for v in vecs]
        values = label_values(codec, ids, labels) + label_values(codec, [v.event_id for v in old], old_labels)
        values += label_values(codec, ids[:50], labels[:50])  # labelled twice
        values += label_values(codec, [f"gone{i}" for i in range(30)], [1] * 30)  # never served here
        values.append(b"not a label")
        ensure_topics(servers.bootstrap, [settings.topic_labels, settings.topic_retrain], 1)
        prod = Producer({"bootstrap.servers": servers.bootstrap, "linger.ms": 20})
        for v in values:
            prod.produce(settings.topic_labels, value=v)
        req = request(window_end=now - 600 * S)
        prod.produce(settings.topic_retrain, key=b"fraud", value=codec.encode("retrain_request", req.to_record()))
        assert prod.flush(10) == 0
        seen: list[str] = []

        [out] = await run_retrain(settings, once=True, timeout_s=60, progress=seen.append)
        assert out.outcome == "promoted" and out.version == "v2", out
        assert out.request_id == req.request_id and out.rows == 3000 and out.eval_rows == 600
        assert out.active_auc is not None and out.candidate_auc is not None
        assert out.candidate_auc >= out.active_auc + 0.05
        assert out.stats == {"labels_read": 3101, "rows": 3000, "invalid": 1, "duplicates": 50, "missing_vector": 30,
                             "unreadable_vector": 0, "other_spec": 0, "wrong_width": 0, "outside_window": 20,
                             "after_start": 0, "positives": out.stats["positives"]}
        assert 0 < out.stats["positives"] < 3000
        assert registry.pointers() == ("v2", None) and registry.names() == ["v1", "v2"]
        meta = registry.get("v2").metadata
        assert meta["training_data"]["request_id"] == req.request_id and meta["evaluation"]["rows"] == 600
        assert any("registered v2" in m for m in seen) and any("v2 is the shadow version" in m for m in seen)

        # the same request again, and another request for the same drift: both duplicates; the first request's
        # offset was committed, so it is not handled a second time
        again = RetrainRequest.new(**{**req.to_record(), "request_id": str(uuid.uuid4())})
        for r in (req, again):
            prod.produce(settings.topic_retrain, key=b"fraud", value=codec.encode("retrain_request", r.to_record()))
        prod.produce(settings.topic_retrain, key=b"fraud", value=b"\x00\x00\x00\x00\x63broken")
        assert prod.flush(10) == 0
        outs = await run_retrain(settings, once=True, timeout_s=60)
        assert [(o.request_id, o.outcome) for o in outs] == [
            (req.request_id, "duplicate"), (again.request_id, "duplicate"), ("", "invalid")]
        assert registry.names() == ["v1", "v2"]
        assert await run_retrain(settings, once=True, timeout_s=30) == []
        assert await run_retrain(settings, once=False, timeout_s=1.0) == []  # runs until its time is up
        task = asyncio.create_task(run_retrain(settings, once=False, timeout_s=None))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await drop(store.client, prefix)
        await store.close()
