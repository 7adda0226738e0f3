"""Pipelines are declared in ``pipeline.toml``, loaded and validated here."""

from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import (
    BatchingSpec,
    CompareFeature,
    EventSpec,
    Feature,
    FieldFeature,
    LearnerSpec,
    ModelSpec,
    MonitorSpec,
    Pipeline,
    WindowFeature,
    parse_duration,
)

__all__ = [
    "BatchingSpec",
    "CompareFeature",
    "EventSpec",
    "Feature",
    "FieldFeature",
    "LearnerSpec",
    "ModelSpec",
    "MonitorSpec",
    "Pipeline",
    "WindowFeature",
    "load_pipeline",
    "parse_duration",
]
