from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streaming.errors import ModelError
from streaming.inference.registry import ModelRegistry, ModelVersion
from streaming.inference.session import OnnxModel
from streaming.pipeline.spec import Pipeline
from streaming.training.dataset import build_dataset
from streaming.training.trainer import train_mlp


def test_the_session_model_is_registered_with_metadata(fraud_model: ModelVersion, fraud_pipeline: Pipeline) -> None:
    meta = fraud_model.metadata
    assert meta["inputs"] == list(fraud_pipeline.model.inputs)
    assert len(meta["sha256"]) == 64 and fraud_model.verify()
    assert meta["metrics"]["roc_auc"] > 0.9  # pattern A is learnable from these features
    assert meta["training_data"]["rows"] > 10_000


def test_training_is_reproducible(fraud_pipeline: Pipeline) -> None:
    ds = build_dataset(fraud_pipeline, rate=100, duration_s=120, seed=9)
    a = train_mlp(ds, hidden=(8,), seed=1, max_iter=20)
    b = train_mlp(ds, hidden=(8,), seed=1, max_iter=20)
    assert a.onnx_bytes == b.onnx_bytes
    assert a.metrics == b.metrics


def test_onnx_scores_match_scikit_learn(fraud_pipeline: Pipeline, tmp_path: Path) -> None:
    ds = build_dataset(fraud_pipeline, rate=100, duration_s=120, seed=9)
    trained = train_mlp(ds, hidden=(8,), seed=1, max_iter=20)
    mv = ModelRegistry(tmp_path, "fraud").write(trained.onnx_bytes, {"inputs": ds.feature_names})
    scores = OnnxModel(mv, provider="cpu").predict(ds.X[:500])
    assert scores.shape == (500,)
    assert np.all((scores >= 0) & (scores <= 1))
    # the exported graph computes what scikit-learn computes
    expected = trained.estimator.predict_proba(ds.X[:500])[:, 1]
    assert float(np.abs(scores - expected).max()) < 1e-4


def test_a_corrupt_model_is_refused(fraud_model: ModelVersion, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    mv = reg.write(fraud_model.onnx_path.read_bytes(), {"inputs": fraud_model.inputs})
    data = bytearray(mv.onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    mv.onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its recorded sha256"):
        OnnxModel(mv)
    # garbage with a matching checksum is refused by ONNX Runtime, with a clear message
    bad = reg.write(b"not an onnx model", {"inputs": ["a"]})
    with pytest.raises(ModelError, match="cannot be loaded by ONNX Runtime"):
        OnnxModel(bad)


def test_missing_model_says_run_train(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="streaming train"):
        ModelRegistry(tmp_path, "fraud").active()
