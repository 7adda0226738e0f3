"""``streaming bench learners``: what one label costs each online learner, against what one event costs.

For every learner kind (:data:`streaming.pipeline.spec.LEARNERS`) the bench replays the same labelled
vectors (the pipeline's generator, featurized with the serving path's code) through the label step's
in-process work: the label decoded (Avro), its served vector parsed from the feature log's bytes, the
learner's prediction before learning (prequential), ``learn``, the evaluator and the pipeline's error
monitors: CPU time per label (``time.process_time``). The baseline in the same run is the scoring step's
in-process work per event: the event decoded, its vector built from its window values, the ONNX model in
batches of 256, the prediction encoded and the served vector serialised for the feature log. Neither side
counts the Kafka client or the Redis round trips (one per batch on both paths, alike for every kind).
The learn path must stay within the score path's cost per event: the ratio ``learn / score`` is the
figure, per kind, with the learner's prequential accuracy beside it.
"""

from __future__ import annotations

import itertools
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streaming.events.codec import Codec
from streaming.features.reference import ReferenceStore
from streaming.features.store import ServedVector
from streaming.features.vector import VectorBuilder
from streaming.inference.registry import ModelRegistry
from streaming.online.evaluator import OnlineEvaluator
from streaming.online.learners import OnlineLearner, build_learner
from streaming.online.monitor import MonitorGroup
from streaming.pipeline.spec import LEARNERS, LearnerSpec, Pipeline
from streaming.synthetic.registry import generator_for
from streaming.training.dataset import featurize

__all__ = ["run_learners_bench"]


def _score_cpu_us(pipeline: Pipeline, model: Any, codec: Codec, raw: list[bytes], windows: list[list[float]],
                  batch: int = 256) -> float:
    """CPU µs per event of the scoring step's in-process work (see the module's text)."""
    vectors = VectorBuilder(pipeline)
    t0 = time.process_time()
    n = 0
    for i in range(0, len(raw), batch):
        events = [codec.decode(pipeline.event.schema, b) for b in raw[i:i + batch]]
        X = np.asarray([vectors.row(ev, w) for ev, w in zip(events, windows[i:i + batch], strict=True)],
                       dtype=np.float32)
        scores = model.predict(X)
        for j, s in enumerate(scores.tolist()):
            ServedVector(f"e{i + j}", X[j].tolist(), "v1", float(s), 1, vectors.spec_version).to_bytes()
            codec.encode("prediction", {
                "event_id": f"e{i + j}", "key": "k", "model": "bench", "model_version": "v1", "score": float(s),
                "decision": s >= 0.5, "challenger_score": None, "fallback": None, "flags": [], "event_time": 1,
                "produced_at": 1, "received_at": 1, "features_at": 1, "inference_started_at": 1, "predicted_at": 1,
                "batch_size": batch})
            n += 1
    return (time.process_time() - t0) / n * 1e6


def _learn_cpu_us(pipeline: Pipeline, codec: Codec, kind: str, names: list[str], X: np.ndarray, y: np.ndarray,
                  scores: np.ndarray) -> tuple[float, float]:
    """CPU µs per label of the label step's in-process work with ``kind``, and its prequential accuracy."""
    spec = LearnerSpec(kind, {} if kind != pipeline.learner.kind else dict(pipeline.learner.params), warmup=0)
    learner = OnlineLearner(build_learner(spec), warmup=0)
    evaluator = OnlineEvaluator()
    group = MonitorGroup([m for m in pipeline.monitors if m.signal == "error"], pipeline.drift, pipeline.name, "v1")
    spec_version = VectorBuilder(pipeline).spec_version
    logged = [ServedVector(f"e{i}", r, "v1", float(scores[i]), 1, spec_version).to_bytes()
              for i, r in enumerate(X.tolist())]
    labels = [codec.encode("label", {"event_id": f"e{i}", "label": int(v), "label_time": 1}) for i, v in enumerate(y)]
    t0 = time.process_time()
    for i in range(len(labels)):
        lab = codec.decode("label", labels[i])
        sv = ServedVector.from_bytes(str(lab["event_id"]), logged[i])
        x = dict(zip(names, sv.x, strict=True))
        label = int(lab["label"])
        p = learner.predict(x)
        learner.learn(x, bool(label))
        evaluator.update("model", label, float(scores[i]))
        if p is not None:
            evaluator.update("learner", label, p)
        group.observe("error", abs(label - float(scores[i])), i * 2_500)
    cpu = (time.process_time() - t0) / len(labels) * 1e6
    return cpu, evaluator.report()["learner"]["accuracy"]


def run_learners_bench(pipeline: Pipeline, registry: ModelRegistry, codec: Codec, *, quick: bool,
                       progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    from streaming.inference.session import OnnxModel

    n = 2_000 if quick else 10_000
    gen = generator_for(pipeline, rate=float(pipeline.model.train.get("rate", 200)), seed=77, start_us=0)
    progress(f"featurizing {n:,} labelled events of the {pipeline.name} generator")
    stream = list(itertools.islice(gen, n))
    ds = featurize(pipeline, stream)
    raw = [codec.encode(pipeline.event.schema, x.event) for x in stream]
    windows = ReferenceStore(pipeline).update_and_read([x.event for x in stream])
    model = OnnxModel(registry.active(), provider="cpu")
    scores = model.predict(ds.X.astype(np.float32)).astype(np.float64)
    names = list(pipeline.model.inputs)
    score_us = min(_score_cpu_us(pipeline, model, codec, raw, windows) for _ in range(3))
    progress(f"score step: {score_us:.1f} CPU µs per event (decode, vector, inference in batches of 256, "
             "prediction and feature-log entry encoded)")
    kinds = {}
    for kind in LEARNERS:
        us, acc = min(_learn_cpu_us(pipeline, codec, kind, names, ds.X, ds.y, scores) for _ in range(2))
        kinds[kind] = {"cpu_us_per_label": round(us, 1), "ratio_to_score_step": round(us / score_us, 2),
                       "prequential_accuracy": round(acc, 4), "within_score_cost": us <= score_us}
        progress(f"{kind:24} {us:8.1f} CPU µs per label ({us / score_us:.2f}x the score step), "
                 f"prequential accuracy {acc:.4f}")
    return {
        "bench": "learners",
        "labels": n,
        "score_step_cpu_us_per_event": round(score_us, 1),
        "learners": kinds,
        "pipeline_learner": pipeline.learner.kind,
        "targets": {"pipeline_learner_within_score_cost": kinds[pipeline.learner.kind]["within_score_cost"]},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }
