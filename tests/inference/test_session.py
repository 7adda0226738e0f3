"""OnnxModel: batch-size buckets, padding, warm-up, and scores that do not depend on the batch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from streaming.inference.registry import ModelVersion
from streaming.inference.session import OnnxModel


def _rows(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def test_every_bucket_is_warmed_and_padding_does_not_change_a_score(fraud_model: ModelVersion) -> None:
    model = OnnxModel(fraud_model, provider="cpu", buckets=(1, 2, 4, 8, 16))
    assert sorted(model.warmup_s) == [1, 2, 4, 8, 16] and all(len(t) == 2 for t in model.warmup_s.values())
    X = _rows(11, model.width)
    one_by_one = np.array([model.predict(X[i:i + 1])[0] for i in range(11)])
    together = model.predict(X)  # 11 rows run as bucket 16, padded with zeros
    assert together.shape == (11,)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)
    assert ((together >= 0) & (together <= 1)).all()


def test_more_rows_than_the_largest_bucket_run_in_chunks(fraud_model: ModelVersion) -> None:
    model = OnnxModel(fraud_model, provider="cpu", buckets=(1, 4))
    X = _rows(10, model.width, seed=1)
    plain = ort.InferenceSession(fraud_model.onnx_path.read_bytes(), providers=["CPUExecutionProvider"])
    want = plain.run([model.output_name], {model.input_name: X})[0]
    want = want[:, 1] if want.ndim == 2 and want.shape[1] == 2 else want.reshape(-1)
    np.testing.assert_allclose(model.predict(X), want, rtol=1e-5, atol=1e-6)
    assert model.predict(X[:0]).shape == (0,)


def test_cpu_sessions_do_not_use_io_binding(fraud_model: ModelVersion) -> None:
    model = OnnxModel(fraud_model, provider="cpu")
    assert model.provider == "CPUExecutionProvider" and not model.io_binding
    assert model.buckets[0] == 1 and model.buckets[-1] == 512
