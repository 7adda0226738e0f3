"""Everything a worker needs, built once from the settings, with one-line errors."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.events.topics import ensure_topics
from streaming.features.store import FeatureStore, RedisFeatureStore
from streaming.features.vector import VectorBuilder
from streaming.inference.batching.buckets import default_buckets
from streaming.inference.manager import ModelManager
from streaming.inference.registry import ModelRegistry
from streaming.inference.session import OnnxModel
from streaming.infra.redis_client import check_redis, redacted
from streaming.infra.stack import check_broker, resolve_endpoints
from streaming.observability.metrics import Metrics
from streaming.online.detectors import ReferenceSnapshot
from streaming.online.evaluator import OnlineEvaluator
from streaming.online.learners import OnlineLearner
from streaming.online.monitor import MonitorGroup
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings

__all__ = ["Runtime", "load_components"]

log = logging.getLogger(__name__)


def load_components(settings: Settings) -> tuple[SchemaRegistry, Codec, Pipeline]:
    registry = SchemaRegistry.from_dir(settings.path(settings.schemas_dir))
    pipeline = load_pipeline(settings.path(settings.pipeline), registry)
    return registry, Codec(registry), pipeline


def monitor_group(pipeline: Pipeline, version: str, registry: ModelRegistry | None,
                  names: list[str]) -> MonitorGroup:
    """The pipeline's monitors for ``version``, with its reference snapshot when the registry has one."""
    reference = None
    if registry is not None:
        try:
            raw = registry.get(version).read_reference()  # checked against the signature when a key is set
            reference = None if raw is None else ReferenceSnapshot.from_json(orjson.loads(raw))
        except Exception as exc:  # an unreadable snapshot: those monitors are skipped, the others run
            log.error("reference snapshot of %s %s unreadable (%s: %s)", pipeline.name, version,
                      type(exc).__name__, exc)
    group = MonitorGroup(pipeline.monitors, pipeline.drift, pipeline.name, version, reference=reference, names=names)
    if group.skipped:
        log.warning("monitors %s not running: model %s %s has no reference snapshot (reference.json); "
                    "`streaming train` writes one", ", ".join(group.skipped), pipeline.name, version)
    return group


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
    learner: OnlineLearner
    evaluator: OnlineEvaluator
    monitors: MonitorGroup
    metrics: Metrics
    registry: ModelRegistry | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: (model version, scores, vectors, event times) of the batches served, for the label-free monitors,
    #: which run off the scoring path; bounded: when they fall behind, the oldest samples are dropped
    served_samples: deque[tuple[str, Any, Any, Any]] = field(default_factory=lambda: deque(maxlen=256))

    def watch_active(self) -> None:
        """Monitors for the active model version (new ones, from scratch, when it changed)."""
        active = self.models.active.tag
        if self.monitors.version != active:
            self.monitors = monitor_group(self.pipeline, active, self.registry, self.vectors.names)
            self.served_samples.clear()

    @property
    def watches_served(self) -> bool:
        """Some monitor watches the scores or vectors served (not only the labelled error)."""
        return bool(self.monitors.signals & {"score", "features"})

    @classmethod
    def build(cls, settings: Settings, *, create_topics: bool = True) -> Runtime:
        _, codec, pipeline = load_components(settings)
        bootstrap, redis_url = resolve_endpoints(settings)
        check_broker(bootstrap)
        check_redis(settings, redis_url)
        metrics = Metrics(slo_s=pipeline.slo_p99_ms / 1000.0)

        def changed(role: str, old: OnnxModel | None, new: OnnxModel | None) -> None:
            if role == "active":
                if old is not None:
                    metrics.model_info.remove(old.name, old.tag, old.provider)
                if new is not None:
                    metrics.model_info.labels(new.name, new.tag, new.provider).set(1)
            metrics.model_changes.labels(role).inc()

        registry = ModelRegistry.from_settings(settings, pipeline.name)
        manager = ModelManager(
            registry,
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
        store = RedisFeatureStore.connect(
            settings, redis_url, pipeline, dedupe_ttl_s=settings.dedupe_ttl_s, log_ttl_s=settings.feature_log_ttl_s,
            prefix=settings.redis_prefix or None,
        )
        metrics.model_info.labels(model.name, model.tag, model.provider).set(1)
        vectors = VectorBuilder(pipeline)
        monitors = monitor_group(pipeline, model.tag, registry, vectors.names)
        for m in monitors.monitors:
            metrics.drift_state.labels(m.spec.name).set(0)
        log.info("serving %s %s on %s; broker %s; redis %s", model.name, model.tag, model.provider, bootstrap,
                 redacted(settings, redis_url))
        return cls(
            settings=settings,
            bootstrap=bootstrap,
            redis_url=redis_url,
            pipeline=pipeline,
            codec=codec,
            store=store,
            models=manager,
            vectors=vectors,
            registry=registry,
            learner=OnlineLearner.from_spec(pipeline.learner),
            evaluator=OnlineEvaluator(),
            monitors=monitors,
            metrics=metrics,
        )
