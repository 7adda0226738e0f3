"""When the model fails or returns NaN, the score comes from the pipeline's fallback, flagged and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streaming.worker.runtime import Runtime
from streaming.worker.score import ScoreProcessor
from tests.conftest import ROOT, Servers, settings_from, unique, worker_env
from tests.worker.test_degraded import records

pytestmark = pytest.mark.integration


class BrokenModel:
    """A stand-in for the ONNX session (unit double): NaN for odd rows, or an exception."""

    def __init__(self, real, fail: bool) -> None:  # type: ignore[no-untyped-def]
        self.real, self.fail = real, fail
        self.tag, self.name, self.provider = real.tag, real.name, real.provider
        self.runs_inline = real.runs_inline

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("CUDA error: device lost")
        out = self.real.predict(X).astype(np.float64)
        out[1::2] = np.nan
        return out


def build(servers: Servers, models_dir: Path, pipeline: Path) -> Runtime:
    return Runtime.build(settings_from(worker_env(servers, models_dir, pipeline=pipeline)))


def warm(rt: Runtime) -> None:
    """Teach the online learner its warmup's worth of labels (random vectors)."""
    rng = np.random.default_rng(3)
    for _ in range(rt.learner.warmup):
        rt.learner.learn(dict(zip(rt.vectors.names, rng.random(len(rt.vectors.names)).tolist(), strict=True)),
                         bool(rng.random() < 0.3))
    assert rt.learner.ready


async def test_nan_rows_fall_back_to_the_learner(servers: Servers, models_dir: Path) -> None:
    rt = build(servers, models_dir, ROOT / "models" / "fraud" / "pipeline.toml")
    rt.models.active = BrokenModel(rt.models.active, fail=False)  # type: ignore[assignment]
    warm(rt)
    batch = await ScoreProcessor(rt).process(records(rt.codec, 6))
    preds = [rt.codec.decode("prediction", r.value) for r in batch.out]
    assert [p["fallback"] for p in preds] == [None, "nan_score"] * 3
    for p in preds[1::2]:
        assert p["score"] == pytest.approx(p["challenger_score"])  # the learner's score
    assert rt.metrics.fallback.labels("nan_score")._value.get() == 3
    await rt.store.close()


async def test_a_cold_learner_abstains_and_the_rows_become_dead_letters(servers: Servers, models_dir: Path) -> None:
    rt = build(servers, models_dir, ROOT / "models" / "fraud" / "pipeline.toml")
    rt.models.active = BrokenModel(rt.models.active, fail=False)  # type: ignore[assignment]
    assert not rt.learner.ready and rt.learner.warmup > 0
    batch = await ScoreProcessor(rt).process(records(rt.codec, 6))
    preds = [rt.codec.decode("prediction", r.value) for r in batch.out if r.topic == rt.settings.topic_predictions]
    dead = [r for r in batch.out if r.topic == rt.settings.topic_dlq]
    assert len(preds) == 3 and all(p["fallback"] is None and p["challenger_score"] is None for p in preds)
    assert len(dead) == 3 and batch.scored == 3 and batch.deadletters == 3
    headers = dict(dead[0].headers or [])
    assert headers["dlq.stage"] == b"inference" and b"abstains" in headers["dlq.reason"]
    assert rt.metrics.fallback.labels("abstained")._value.get() == 3
    await rt.store.close()


async def test_a_failing_model_falls_back_to_the_rule(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    text = (ROOT / "models" / "fraud" / "pipeline.toml").read_text()
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(text.replace('fallback = "learner"', 'fallback = { kind = "rule", feature = "card_count_1m", above = 2 }'))
    rt = build(servers, models_dir, pipeline)
    rt.models.active = BrokenModel(rt.models.active, fail=True)  # type: ignore[assignment]
    batch = await ScoreProcessor(rt).process(records(rt.codec, 5, card=unique("card")))  # counts 1..5
    preds = [rt.codec.decode("prediction", r.value) for r in batch.out]
    assert all(p["fallback"] == "inference_error" for p in preds)
    assert [p["score"] for p in preds] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [p["decision"] for p in preds] == [False, False, True, True, True]
    await rt.store.close()
