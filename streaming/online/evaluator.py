"""Prequential (test-then-train) evaluation of the scorers against labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from river import metrics

__all__ = ["OnlineEvaluator"]


@dataclass
class _Scorer:
    rocauc: metrics.RollingROCAUC
    logloss: metrics.LogLoss = field(default_factory=metrics.LogLoss)
    n: int = 0


class OnlineEvaluator:
    """Rolling ROC AUC and cumulative log loss per scorer ("model", "learner").

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
        s.n += 1

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {"rocauc": float(s.rocauc.get()), "logloss": float(s.logloss.get()), "n": float(s.n)}
            for name, s in self._scorers.items()
        }
