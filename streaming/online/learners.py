"""Online learners built from the pipeline's ``[learner]`` table (River), and their cold start.

Kinds: ``logistic_regression`` (StandardScaler + LogisticRegression), ``hoeffding_tree``
(HoeffdingTreeClassifier), and River's adaptive ones, which replace what drift made stale by
themselves: ``hoeffding_adaptive_tree`` (HoeffdingAdaptiveTreeClassifier: ADWIN in every node,
subtrees swapped when their error drifts) and ``adaptive_random_forest`` (ARFClassifier: a
forest whose members have drift and warning detectors and background trees). Their cost per
label is measured by ``streaming bench learners`` (docs/benchmarks.md).

A learner that has seen fewer than ``[learner] warmup`` labels **abstains**:
:meth:`OnlineLearner.predict` returns None instead of a score, so a fallback or challenger score
never comes from a model that has not learned anything (an untrained logistic regression says
0.5 for everything, which is the fraud pipeline's threshold).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from river import compose, forest, linear_model, optim, preprocessing, tree

from streaming.pipeline.spec import LEARNERS, LearnerSpec

__all__ = ["LEARNERS", "OnlineLearner", "build_learner"]

def build_learner(spec: LearnerSpec) -> Any:
    """A River binary classifier with ``learn_one`` and ``predict_proba_one``.

    >>> from streaming.pipeline.spec import LEARNERS, LearnerSpec
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
    if spec.kind == "hoeffding_adaptive_tree":
        params.setdefault("seed", 7)
        return tree.HoeffdingAdaptiveTreeClassifier(**params)
    if spec.kind == "adaptive_random_forest":
        params.setdefault("seed", 7)
        params.setdefault("n_models", 5)
        return forest.ARFClassifier(**params)
    raise ValueError(f"unknown learner kind {spec.kind!r} ({', '.join(LEARNERS)})")


class OnlineLearner:
    """A River classifier that learns from every joined label and abstains while cold.

    >>> from streaming.pipeline.spec import LEARNERS, LearnerSpec
    >>> learner = OnlineLearner(build_learner(LearnerSpec("logistic_regression")), warmup=2)
    >>> learner.predict({"x": 1.0}) is None  # cold: no score
    True
    >>> learner.learn({"x": 1.0}, True); learner.learn({"x": -1.0}, False)
    >>> learner.ready, 0.0 <= learner.predict({"x": 1.0}) <= 1.0
    (True, True)
    """

    def __init__(self, model: Any, warmup: int = 0) -> None:
        self.model = model
        self.warmup = warmup
        self.seen = 0  # labels learned from

    @classmethod
    def from_spec(cls, spec: LearnerSpec) -> OnlineLearner:
        return cls(build_learner(spec), spec.warmup)

    @property
    def ready(self) -> bool:
        """It has learned from ``warmup`` labels: its scores may be used."""
        return self.seen >= self.warmup

    def predict(self, x: Mapping[str, float]) -> float | None:
        """P(positive) for ``x``, or None while the learner is cold (it abstains)."""
        if self.seen < self.warmup:
            return None
        return float(self.model.predict_proba_one(x).get(True, 0.0))

    def learn(self, x: Mapping[str, float], y: bool) -> None:
        self.model.learn_one(x, bool(y))
        self.seen += 1
