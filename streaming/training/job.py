"""``streaming train``: generate data, fit, export, register."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from streaming.inference.registry import ModelRegistry, ModelVersion
from streaming.online.detectors import ReferenceSnapshot
from streaming.pipeline.spec import Pipeline, parse_duration
from streaming.training.dataset import build_dataset
from streaming.training.trainer import train_mlp

__all__ = ["train_pipeline"]


def train_pipeline(
    pipeline: Pipeline,
    registry: ModelRegistry,
    *,
    seed: int | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    activate: bool = True,
) -> ModelVersion:
    cfg = pipeline.model.train
    seed = int(cfg.get("seed", 7)) if seed is None else seed
    rate = float(cfg.get("rate", 200))
    duration_s = parse_duration(cfg.get("duration", "10m"))
    t0 = time.monotonic()
    progress(f"generating {duration_s:.0f}s of synthetic events at {rate:g}/s (seed {seed})")
    ds = build_dataset(pipeline, rate=rate, duration_s=duration_s, seed=seed)
    progress(f"{len(ds.y):,} events, {int(ds.y.sum()):,} positive, features computed in {time.monotonic() - t0:.1f}s")
    trained = train_mlp(
        ds,
        hidden=tuple(int(h) for h in cfg.get("hidden", (32, 16))),
        seed=seed,
        max_iter=int(cfg.get("max_iter", 60)),
        threshold=pipeline.threshold,
        progress=progress,
    )
    meta = {
        "pipeline": pipeline.name,
        "inputs": ds.feature_names,
        "input_name": "features",
        "output_name": "probabilities",
        "metrics": trained.metrics,
        "params": trained.params,
        "training_data": {
            "generator": pipeline.generator,
            "rate": rate,
            "duration_s": duration_s,
            "rows": len(ds.y),
            "event_time_start": int(ds.event_time.min()),
            "event_time_end": int(ds.event_time.max()),
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # what the label-free drift monitors compare the served traffic with: a sample of the training rows and scores;
    # written with the version (and covered by its signature when the registry signs)
    reference = ReferenceSnapshot.from_arrays(ds.X, trained.estimator.predict_proba(ds.X)[:, 1], ds.feature_names)
    mv = registry.write(trained.onnx_bytes, meta, reference=orjson.dumps(reference.to_json()))
    if activate:
        registry.activate(mv.version)
    m = trained.metrics
    progress(
        f"wrote {mv.onnx_path} (sha256 {mv.metadata['sha256'][:12]}): holdout ROC AUC {m['roc_auc']:.3f}, "
        f"precision {m['precision']:.2f}, recall {m['recall']:.2f} in {time.monotonic() - t0:.1f}s"
    )
    return mv
