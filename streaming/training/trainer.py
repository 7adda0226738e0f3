"""Training the first model: a seeded scikit-learn MLP exported to ONNX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline as SkPipeline
from sklearn.preprocessing import StandardScaler

from streaming.training.dataset import Dataset

__all__ = ["TrainedModel", "train_mlp"]


@dataclass(frozen=True)
class TrainedModel:
    onnx_bytes: bytes
    metrics: dict[str, float]
    params: dict[str, Any]
    estimator: Any  # the fitted scikit-learn pipeline the ONNX graph was exported from


def _split(ds: Dataset, holdout: float) -> tuple[np.ndarray, ...]:
    """Time-ordered split: the last ``holdout`` share is the test set."""
    cut = int(len(ds.y) * (1 - holdout))
    return ds.X[:cut], ds.y[:cut], ds.X[cut:], ds.y[cut:]


def train_mlp(
    ds: Dataset,
    *,
    hidden: tuple[int, ...] = (32, 16),
    seed: int = 7,
    max_iter: int = 60,
    threshold: float = 0.5,
    holdout: float = 0.2,
    progress: Callable[[str], None] | None = None,
) -> TrainedModel:
    """Fit StandardScaler + MLPClassifier, evaluate on the time holdout, export ONNX.

    The ONNX model takes ``float32[N, n_features]`` named ``features`` and
    returns ``probabilities`` ``float32[N, 2]`` (no ZipMap).
    """
    if len(np.unique(ds.y)) < 2:
        raise ValueError("the training data has a single class; generate more events")
    X_tr, y_tr, X_te, y_te = _split(ds, holdout)
    model = SkPipeline(
        [
            ("scale", StandardScaler()),
            ("mlp", MLPClassifier(hidden_layer_sizes=hidden, random_state=seed, max_iter=max_iter,
                                  early_stopping=False, alpha=1e-4)),
        ]
    )
    if progress:
        progress(f"fitting MLP {hidden} on {len(y_tr):,} rows ({int(y_tr.sum()):,} positive)")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_tr, y_tr)
    proba = model.predict_proba(X_te)[:, 1]
    pred = proba >= threshold
    metrics = {
        "roc_auc": float(roc_auc_score(y_te, proba)) if len(np.unique(y_te)) > 1 else float("nan"),
        "average_precision": float(average_precision_score(y_te, proba)) if y_te.any() else float("nan"),
        "precision": float(precision_score(y_te, pred, zero_division=0)),
        "recall": float(recall_score(y_te, pred, zero_division=0)),
        "train_rows": float(len(y_tr)),
        "test_rows": float(len(y_te)),
        "positive_rate": float(ds.y.mean()),
    }
    onx = to_onnx(
        model,
        X_tr[:1].astype(np.float32),
        options={MLPClassifier: {"zipmap": False}},
        target_opset=17,
        final_types=None,
    )
    # rename the input and output for a stable contract
    onx.graph.input[0].name, old_in = "features", onx.graph.input[0].name
    for node in onx.graph.node:
        node.input[:] = ["features" if i == old_in else i for i in node.input]
    onx.graph.doc_string = "streaming fraud MLP"
    return TrainedModel(
        onnx_bytes=onx.SerializeToString(),
        metrics=metrics,
        params={"hidden": list(hidden), "seed": seed, "max_iter": max_iter, "holdout": holdout},
        estimator=model,
    )
