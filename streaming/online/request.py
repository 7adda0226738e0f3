"""The retrain request a drift monitor emits: one typed record per drift (``schemas/retrain_request.avsc``)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RetrainRequest"]


@dataclass(frozen=True)
class RetrainRequest:
    """What drifted, when, and over which window of event time (microseconds); the retrain job's input.

    >>> r = RetrainRequest.new(model="fraud", model_version="v1", monitor="model_error", signal="error",
    ...                        statistic=0.3, threshold=0.1, window_start=0, window_end=10, sample_count=5,
    ...                        dedupe_key="fraud:v1:0")
    >>> RetrainRequest.from_record(r.to_record()) == r
    True
    """

    request_id: str
    dedupe_key: str  # the same drift seen by several monitors or workers has one key: one request acts
    model: str
    model_version: str
    monitor: str  # the monitor that fired, or "a+b" when several agreed (K of N)
    signal: str  # "error", "score", or "feature:<name>"
    statistic: float  # the monitored statistic at detection
    threshold: float  # the reference it is compared with (the calibrated threshold or the mean before)
    window_start: int  # event time of the first sample since the monitor was last OK
    window_end: int  # event time of the sample that confirmed the drift
    sample_count: int
    severity: str = "warning"
    monitor_params: dict[str, str] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # labels partition -> last offset seen
    reference_snapshot_id: str | None = None
    detected_at: int = 0  # wall clock, epoch microseconds

    @classmethod
    def new(cls, **kwargs: Any) -> RetrainRequest:
        kwargs.setdefault("request_id", str(uuid.uuid4()))
        kwargs.setdefault("detected_at", time.time_ns() // 1000)
        return cls(**kwargs)

    def to_record(self) -> dict[str, Any]:
        """The Avro record (``retrain_request`` subject)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> RetrainRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in names})
