"""Turning an event and its window aggregates into the model's input vector."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streaming.pipeline.spec import CompareFeature, FieldFeature, Pipeline, WindowFeature

__all__ = ["VectorBuilder"]

_Extract = Callable[[dict[str, Any]], float]


def _field_extractor(f: FieldFeature) -> _Extract:
    name = f.field
    if f.equals is not None:
        target = f.equals
        return lambda e: 1.0 if str(e[name]) == target else 0.0
    if f.transform == "log1p":
        return lambda e: math.log1p(max(float(e[name] or 0.0), 0.0))
    return lambda e: float(e[name] or 0.0)


def _compare_extractor(f: CompareFeature) -> _Extract:
    a, b = f.fields
    if f.op == "eq":
        return lambda e: 1.0 if e[a] == e[b] else 0.0
    return lambda e: 1.0 if e[a] != e[b] else 0.0


class VectorBuilder:
    """Builds float32 rows in the model's input order.

    Event features are computed here; window features come from the feature
    store in the order of ``pipeline.window_features``.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.names = list(pipeline.model.inputs)
        window_pos = {f.name: i for i, f in enumerate(pipeline.window_features)}
        # each input is either ("event", extractor) or ("window", index)
        self._plan: list[tuple[_Extract | None, int]] = []
        for name in self.names:
            feat = pipeline.feature(name)
            if isinstance(feat, WindowFeature):
                self._plan.append((None, window_pos[name]))
            elif isinstance(feat, FieldFeature):
                self._plan.append((_field_extractor(feat), -1))
            else:
                self._plan.append((_compare_extractor(feat), -1))

    @property
    def width(self) -> int:
        return len(self.names)

    def row(self, event: dict[str, Any], window_values: Sequence[float]) -> list[float]:
        return [fn(event) if fn is not None else float(window_values[i]) for fn, i in self._plan]

    def matrix(self, events: Sequence[dict[str, Any]], window_values: Sequence[Sequence[float]]) -> np.ndarray:
        out = np.empty((len(events), self.width), dtype=np.float32)
        for r, (ev, wv) in enumerate(zip(events, window_values, strict=True)):
            out[r] = self.row(ev, wv)
        return out
