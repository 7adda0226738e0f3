"""Online learners built from the pipeline's ``[learner]`` table (River)."""

from __future__ import annotations

from typing import Any

from river import compose, linear_model, optim, preprocessing, tree

from streaming.pipeline.spec import LearnerSpec

__all__ = ["build_learner"]


def build_learner(spec: LearnerSpec) -> Any:
    """A River binary classifier with ``learn_one`` and ``predict_proba_one``.

    >>> from streaming.pipeline.spec import LearnerSpec
    >>> model = build_learner(LearnerSpec("logistic_regression", {"lr": 0.1}))
    >>> model.learn_one({"x": 1.0}, True)
    >>> 0.0 <= model.predict_proba_one({"x": 1.0}).get(True, 0.0) <= 1.0
    True
    """
    params = dict(spec.params)
    if spec.kind == "logistic_regression":
        lr = float(params.pop("lr", 0.05))
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(lr), **params),
        )
    if spec.kind == "hoeffding_tree":
        return tree.HoeffdingTreeClassifier(**params)
    raise ValueError(f"unknown learner kind {spec.kind!r}")
