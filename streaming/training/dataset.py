"""Training sets built with the serving path's own feature semantics."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from streaming.features.reference import ReferenceStore
from streaming.features.vector import VectorBuilder
from streaming.pipeline.spec import Pipeline
from streaming.synthetic.fraud import Labelled
from streaming.synthetic.registry import generator_for

__all__ = ["Dataset", "build_dataset", "featurize"]


@dataclass(frozen=True)
class Dataset:
    X: np.ndarray
    y: np.ndarray
    event_time: np.ndarray  # epoch micros
    feature_names: list[str]


def featurize(pipeline: Pipeline, stream: list[Labelled]) -> Dataset:
    """Vectors exactly as the worker would serve them, in arrival order."""
    store = ReferenceStore(pipeline)
    builder = VectorBuilder(pipeline)
    events = [x.event for x in stream]
    windows = store.update_and_read(events)
    X = builder.matrix(events, windows)
    y = np.array([x.label for x in stream], dtype=np.int64)
    t = np.array([e[pipeline.event.time_field] for e in events], dtype=np.int64)
    return Dataset(X, y, t, builder.names)


def build_dataset(pipeline: Pipeline, *, rate: float, duration_s: float, seed: int, start_us: int = 0) -> Dataset:
    gen = generator_for(pipeline, rate=rate, seed=seed, start_us=start_us)
    end = start_us + int(duration_s * 1e6)
    stream = list(itertools.takewhile(lambda x: x.event[pipeline.event.time_field] < end, gen))
    return featurize(pipeline, stream)
