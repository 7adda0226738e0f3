"""Everything a worker needs, built once from the settings, with one-line errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from streaming.drift.monitor import DriftMonitor
from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.events.topics import ensure_topics
from streaming.features.store import FeatureStore, RedisFeatureStore
from streaming.features.vector import VectorBuilder
from streaming.inference.batching.buckets import default_buckets
from streaming.inference.manager import ModelManager
from streaming.inference.registry import ModelRegistry
from streaming.inference.session import OnnxModel
from streaming.infra.stack import check_broker, check_redis, resolve_endpoints
from streaming.learning.evaluator import OnlineEvaluator
from streaming.learning.learners import build_learner
from streaming.observability.metrics import Metrics
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings

__all__ = ["Runtime", "load_components"]

log = logging.getLogger(__name__)


def load_components(settings: Settings) -> tuple[SchemaRegistry, Codec, Pipeline]:
    registry = SchemaRegistry.from_dir(settings.path(settings.schemas_dir))
    pipeline = load_pipeline(settings.path(settings.pipeline), registry)
    return registry, Codec(registry), pipeline


@dataclass
class Runtime:
    settings: Settings
    bootstrap: str
    redis_url: str
    pipeline: Pipeline
    codec: Codec
    store: FeatureStore
    models: ModelManager
    vectors: VectorBuilder
    learner: Any
    evaluator: OnlineEvaluator
    monitors: list[DriftMonitor]
    metrics: Metrics
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, *, create_topics: bool = True) -> Runtime:
        _, codec, pipeline = load_components(settings)
        bootstrap, redis_url = resolve_endpoints(settings)
        check_broker(bootstrap)
        check_redis(redis_url)
        metrics = Metrics(slo_s=pipeline.slo_p99_ms / 1000.0)

        def changed(role: str, old: OnnxModel | None, new: OnnxModel | None) -> None:
            if role == "active":
                if old is not None:
                    metrics.model_info.remove(old.name, old.tag, old.provider)
                if new is not None:
                    metrics.model_info.labels(new.name, new.tag, new.provider).set(1)
            metrics.model_changes.labels(role).inc()

        manager = ModelManager(
            ModelRegistry(settings.path(settings.models_dir), pipeline.name),
            pipeline.model.inputs,
            provider=settings.onnx_provider,
            threads=settings.onnx_threads,
            buckets=pipeline.batching.buckets or default_buckets(pipeline.batching.max_rows),
            on_change=changed,
            on_refused=lambda role, _v, _r: metrics.model_refused.labels(role).inc(),
        )
        model = manager.active
        if create_topics:
            ensure_topics(bootstrap, settings.topics.values(), settings.topic_partitions)
        store = RedisFeatureStore.from_url(
            redis_url, pipeline, dedupe_ttl_s=settings.dedupe_ttl_s, log_ttl_s=settings.feature_log_ttl_s,
            prefix=settings.redis_prefix or None,
        )
        metrics.model_info.labels(model.name, model.tag, model.provider).set(1)
        monitors = [DriftMonitor(spec, pipeline.name, model.tag) for spec in pipeline.monitors]
        for m in monitors:
            metrics.drift_state.labels(m.spec.name).set(0)
        log.info("serving %s %s on %s; broker %s; redis %s", model.name, model.tag, model.provider, bootstrap, redis_url)
        return cls(
            settings=settings,
            bootstrap=bootstrap,
            redis_url=redis_url,
            pipeline=pipeline,
            codec=codec,
            store=store,
            models=manager,
            vectors=VectorBuilder(pipeline),
            learner=build_learner(pipeline.learner),
            evaluator=OnlineEvaluator(),
            monitors=monitors,
            metrics=metrics,
        )
