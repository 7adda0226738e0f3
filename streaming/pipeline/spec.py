"""What a pipeline declares: its event, features, model, learner, monitors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streaming.events.limits import Limits

__all__ = [
    "EventSpec",
    "FieldFeature",
    "CompareFeature",
    "WindowFeature",
    "RatioFeature",
    "Feature",
    "AGGREGATIONS",
    "ModelSpec",
    "FallbackSpec",
    "LEARNERS",
    "LearnerSpec",
    "MonitorSpec",
    "DriftSpec",
    "RetrainSpec",
    "Pipeline",
    "BatchingSpec",
    "BATCH_POLICIES",
    "Limits",
    "parse_duration",
]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as ``90s``, ``5m``, ``1h``, ``7d`` (a number is seconds).

    >>> parse_duration("5m"), parse_duration("1h"), parse_duration(30)
    (300.0, 3600.0, 30.0)
    >>> parse_duration("5 parsecs")
    Traceback (most recent call last):
    ...
    ValueError: bad duration '5 parsecs': use a number and one of ms, s, m, h, d (e.g. 5m)
    """
    if isinstance(text, int | float):
        return float(text)
    t = text.strip()
    for unit in ("ms", "s", "m", "h", "d"):
        if t.endswith(unit):
            number = t[: -len(unit)].strip()
            try:
                return float(number) * _UNITS[unit]
            except ValueError:
                break
    raise ValueError(f"bad duration {text!r}: use a number and one of ms, s, m, h, d (e.g. 5m)")


@dataclass(frozen=True)
class EventSpec:
    schema: str  # subject in the schema registry
    id_field: str
    time_field: str  # epoch microseconds
    key: tuple[str, ...]  # entity key fields, also the Kafka key


@dataclass(frozen=True)
class FieldFeature:
    """A value of the event itself: numeric (optionally log1p), or 1.0 when it equals a constant."""

    name: str
    field: str
    transform: Literal["identity", "log1p"] = "identity"
    equals: str | None = None


@dataclass(frozen=True)
class CompareFeature:
    """1.0 when two event fields compare true (``eq`` or ``ne``), else 0.0."""

    name: str
    fields: tuple[str, str]
    op: Literal["eq", "ne"]


#: window aggregations; ``count`` and ``seconds_since_last`` take no field
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "stddev", "distinct", "last", "seconds_since_last")


@dataclass(frozen=True)
class WindowFeature:
    """An aggregate over the entity's events in the window ending at the event (see docs/features.md)."""

    name: str
    entity: tuple[str, ...]
    agg: str  # one of AGGREGATIONS
    window_s: int
    bucket_s: int
    field: str | None = None

    @property
    def n_buckets(self) -> int:
        return self.window_s // self.bucket_s


@dataclass(frozen=True)
class RatioFeature:
    """``numerator / denominator`` of two other features (0.0 when the denominator is 0)."""

    name: str
    numerator: str
    denominator: str


Feature = FieldFeature | CompareFeature | WindowFeature | RatioFeature


@dataclass(frozen=True)
class FallbackSpec:
    """Where a score comes from when the model fails: the online learner, or a rule on one input."""

    kind: str = "learner"  # or "rule": score = 1.0 if the input `feature` > `above`, else 0.0
    feature: str | None = None
    above: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    inputs: tuple[str, ...]
    train: dict[str, Any] = field(default_factory=dict)
    fallback: FallbackSpec = field(default_factory=FallbackSpec)


#: the online learner kinds (streaming.online.learners)
LEARNERS = ("logistic_regression", "hoeffding_tree", "hoeffding_adaptive_tree", "adaptive_random_forest")


@dataclass(frozen=True)
class LearnerSpec:
    """The online learner, and how long a label may wait for its event's served vector.

    A label that arrives before the vector of its event is in the feature log (labels right after
    their events) waits up to ``label_wait_s``; at most ``label_wait_max`` labels wait at once (then
    the label consumer pauses). Its offset is committed only once it is joined or dead-lettered.
    Until it has learned from ``warmup`` labels the learner abstains: no fallback or challenger score
    comes from it.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    label_wait_s: float = 30.0
    label_wait_max: int = 100_000
    warmup: int = 200  # labels learned from before its scores are used (it abstains until then)


@dataclass(frozen=True)
class MonitorSpec:
    """One drift monitor (streaming.online.monitor): a detector on one signal, and its state machine.

    ``signal``: ``error`` (|label - score| of each joined label), ``score`` (every scored event, no
    label needed) or ``features`` (every served vector, against the model's reference snapshot).
    ``cooldown_s`` of event time in DRIFT, then ``recover`` samples at level OK, before it is OK again.
    """

    name: str
    detector: str
    signal: str
    params: dict[str, Any] = field(default_factory=dict)
    cooldown_s: float = 300.0
    severity: str = "warning"
    recover: int = 100


@dataclass(frozen=True)
class DriftSpec:
    """When monitors' detections become a retrain request (the ``[drift]`` table).

    ``require`` monitors (K of N) must enter DRIFT within ``agree_within_s`` of event time; then one
    request per model version per ``cooldown_s`` (the dedupe key is claimed in Redis, across workers).
    """

    require: int = 1
    agree_within_s: float = 300.0
    cooldown_s: float = 600.0


@dataclass(frozen=True)
class RetrainSpec:
    """What ``streaming retrain`` does with a retrain request for this pipeline (docs/online.md).

    It trains on the labelled rows of the feature log whose event time lies within ``lookback`` before the
    request's ``window_end`` and after it (at least ``min_rows`` of them), keeps the most recent ``holdout``
    share to evaluate the new version against the active one on the same rows, registers the new version
    and puts it in shadow; it activates it only when ``auto_promote`` is on and the new version's ROC AUC
    beats the active one's by at least ``margin``.
    """

    auto_promote: bool = False
    margin: float = 0.01
    lookback_s: float = 600.0
    min_rows: int = 1000
    holdout: float = 0.2


BATCH_POLICIES = ("none", "static", "adaptive")


@dataclass(frozen=True)
class BatchingSpec:
    """How the worker batches rows for inference (docs/batching.md).

    ``policy`` is ``none``, ``static`` or ``adaptive``. ``budget_ms`` is the
    adaptive policy's p99 target for a row's wait in the inference queue plus
    its inference (the part of the pipeline's SLO the worker's batching
    controls); ``max_wait_ms`` is the static policy's longest wait;
    ``queue_rows`` bounds the queue (when it is full the consumer pauses; by
    default two full batches: enough to keep batches full under load, little
    enough that a backlog waits in the broker rather than in the worker).
    """

    policy: str = "adaptive"
    max_rows: int = 256
    max_wait_ms: float = 5.0
    budget_ms: float = 10.0
    queue_rows: int = 512
    buckets: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    description: str
    root: Path
    event: EventSpec
    features: tuple[Feature, ...]
    model: ModelSpec
    learner: LearnerSpec
    monitors: tuple[MonitorSpec, ...]
    threshold: float
    slo_p99_ms: float
    generator: dict[str, Any] = field(default_factory=dict)
    lateness_s: int = 60  # events older than the watermark minus this are not applied (flagged late)
    on_store_error: str = "pause"  # or "default": score with default features, flagged
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    limits: Limits = field(default_factory=Limits)
    retrain: RetrainSpec = field(default_factory=RetrainSpec)
    drift: DriftSpec = field(default_factory=DriftSpec)

    @property
    def window_features(self) -> tuple[WindowFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, WindowFeature))

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)
