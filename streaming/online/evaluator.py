"""Prequential (test-then-train) evaluation of the scorers against labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from river import metrics

__all__ = ["OnlineEvaluator"]


@dataclass
class _Scorer:
    rocauc: metrics.RollingROCAUC
    logloss: metrics.LogLoss = field(default_factory=metrics.LogLoss)
    accuracy: metrics.Accuracy = field(default_factory=metrics.Accuracy)
    n: int = 0


class OnlineEvaluator:
    """Rolling ROC AUC, cumulative log loss and accuracy (decision at 0.5) per scorer ("model", "learner").

    Every update is a prediction made before the label was learned from (prequential), so the learner's
    accuracy here is what River's ``evaluate.progressive_val_score`` reports for the same stream.

    >>> ev = OnlineEvaluator(window=100)
    >>> for y, p in [(1, 0.9), (0, 0.2), (1, 0.7), (0, 0.4)]:
    ...     ev.update("model", y, p)
    >>> ev.report()["model"]["rocauc"]
    1.0
    """

    def __init__(self, window: int = 5000) -> None:
        self.window = window
        self._scorers: dict[str, _Scorer] = {}

    def update(self, scorer: str, label: int, score: float) -> None:
        s = self._scorers.get(scorer)
        if s is None:
            s = self._scorers[scorer] = _Scorer(metrics.RollingROCAUC(window_size=self.window))
        y = bool(label)
        s.rocauc.update(y, score)
        s.logloss.update(y, min(max(score, 1e-7), 1 - 1e-7))
        s.accuracy.update(y, score >= 0.5)
        s.n += 1

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {"rocauc": float(s.rocauc.get()), "logloss": float(s.logloss.get()),
                   "accuracy": float(s.accuracy.get()), "n": float(s.n)}
            for name, s in self._scorers.items()
        }
