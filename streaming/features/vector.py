"""Turning an event and its window aggregates into the model's input vector."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streaming.pipeline.spec import CompareFeature, FieldFeature, Pipeline, RatioFeature, WindowFeature

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

        def source(name: str) -> tuple[_Extract | None, int]:
            feat = pipeline.feature(name)
            if isinstance(feat, WindowFeature):
                return None, window_pos[name]
            if isinstance(feat, FieldFeature):
                return _field_extractor(feat), -1
            if isinstance(feat, CompareFeature):
                return _compare_extractor(feat), -1
            raise TypeError(name)

        # each input: (extractor, window index) or, for a ratio, the sources of its two parts
        self._plan: list[tuple[_Extract | None, int] | tuple[tuple[_Extract | None, int], ...]] = []
        for name in self.names:
            feat = pipeline.feature(name)
            if isinstance(feat, RatioFeature):
                self._plan.append((source(feat.numerator), source(feat.denominator)))
            else:
                self._plan.append(source(name))

    @property
    def spec_version(self) -> str:
        """A short hash of the feature declarations and the input order (kept in the feature log)."""
        text = repr((self.pipeline.features, self.names, self.pipeline.lateness_s))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def width(self) -> int:
        return len(self.names)

    @staticmethod
    def _value(src: tuple[_Extract | None, int], event: dict[str, Any], window_values: Sequence[float]) -> float:
        fn, i = src
        return fn(event) if fn is not None else float(window_values[i])

    def row(self, event: dict[str, Any], window_values: Sequence[float]) -> list[float]:
        out = []
        for item in self._plan:
            if isinstance(item[0], tuple):
                num = self._value(item[0], event, window_values)
                den = self._value(item[1], event, window_values)  # type: ignore[arg-type]
                out.append(num / den if den else 0.0)
            else:
                out.append(self._value(item, event, window_values))  # type: ignore[arg-type]
        return out

    def matrix(self, events: Sequence[dict[str, Any]], window_values: Sequence[Sequence[float]]) -> np.ndarray:
        out = np.empty((len(events), self.width), dtype=np.float32)
        for r, (ev, wv) in enumerate(zip(events, window_values, strict=True)):
            out[r] = self.row(ev, wv)
        return out
