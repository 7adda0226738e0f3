"""A second pipeline with a different schema runs with no code change."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.inference.registry import ModelRegistry
from streaming.pipeline.loader import load_pipeline
from streaming.training.dataset import Dataset
from streaming.training.trainer import train_mlp
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, unique, worker_env
from tests.helpers import decoded, produce_raw, read_until

pytestmark = pytest.mark.integration

PIPELINE = Path(__file__).parent.parent / "fixtures" / "sensor" / "pipeline.toml"


def test_sensor_pipeline_scores_its_own_events(servers: Servers, tmp_path: Path) -> None:
    registry = SchemaRegistry.from_dir(Path(__file__).parents[2] / "schemas")
    pipeline = load_pipeline(PIPELINE, registry)
    assert pipeline.event.schema == "reading" and registry.latest("reading").id == 101
    # a tiny model for its five inputs: hot and shaking machines fail
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5)).astype(np.float32)
    y = ((X[:, 0] + X[:, 1]) > 1.0).astype(np.int64)
    trained = train_mlp(Dataset(X, y, np.arange(2000), list(pipeline.model.inputs)), hidden=(8,), seed=0, max_iter=50)
    ModelRegistry(tmp_path, "sensor").write(trained.onnx_bytes, {"inputs": list(pipeline.model.inputs)})

    env = worker_env(servers, tmp_path, pipeline=PIPELINE)
    worker = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()
    try:
        ids = [unique("r") for _ in range(20)]
        now = time.time_ns() // 1000
        readings = [{"reading_id": rid, "machine": f"m{i % 3}", "site": "plant-a", "temperature": 60.0 + i,
                     "vibration": 0.5 * i, "ts": now + i} for i, rid in enumerate(ids)]
        produce_raw(servers.bootstrap, env["STREAMING_TOPIC_EVENTS"], [json.dumps(r).encode() for r in readings])
        codec = Codec(registry)
        msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"],
                          lambda got: len(got) >= len(ids), timeout=30)
        preds = decoded(codec, "prediction", msgs)
        assert sorted(p["event_id"] for p in preds) == sorted(ids)
        assert {p["model"] for p in preds} == {"sensor"}
        assert {p["key"] for p in preds} == {"m0", "m1", "m2"}
        assert all(p["decision"] == (p["score"] >= 0.7) for p in preds)
        assert all(p["event_time"] == r["ts"] for p, r in zip(sorted(preds, key=lambda p: p["event_time"]),
                                                              readings, strict=True))
    finally:
        worker.stop()
