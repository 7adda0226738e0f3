"""Drift monitors: a River detector, a state machine and retrain requests.

States: ``ok`` until the detector fires, then ``drift`` (a retrain request is
emitted) for ``cooldown_s`` of event time, during which further detections
are counted but emit nothing; then back to ``ok``. The dedupe key names the
episode, so a retrain job acts once per episode even if requests repeat.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from river import drift

from streaming.pipeline.spec import MonitorSpec

__all__ = ["DriftMonitor", "build_detector", "STATES"]

STATES = {"ok": 0, "drift": 1}


def build_detector(spec: MonitorSpec) -> Any:
    if spec.detector == "adwin":
        return drift.ADWIN(**spec.params)
    if spec.detector == "page_hinkley":
        return drift.PageHinkley(**spec.params)
    raise ValueError(f"unknown detector {spec.detector!r}")


@dataclass
class _Window:
    start_us: int | None = None
    count: int = 0
    total: float = 0.0

    def add(self, value: float, t_us: int) -> None:
        if self.start_us is None:
            self.start_us = t_us
        self.count += 1
        self.total += value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class DriftMonitor:
    """Feeds one signal to a detector; returns a retrain request on drift.

    >>> from streaming.pipeline.spec import MonitorSpec
    >>> mon = DriftMonitor(MonitorSpec("m", "adwin", "error", {"delta": 0.002}, cooldown_s=60), "fraud", "v1")
    >>> reqs = [mon.update(0.0 if i < 1000 else 1.0, i * 10_000) for i in range(2000)]
    >>> fired = [r for r in reqs if r is not None]
    >>> len(fired), mon.state, fired[0]["signal"]
    (1, 'drift', 'error')
    """

    def __init__(self, spec: MonitorSpec, model: str, model_version: str) -> None:
        self.spec = spec
        self.model = model
        self.model_version = model_version
        self.detector = build_detector(spec)
        self.state = "ok"
        self.detections = 0
        self.requests = 0
        self._drift_since_us: int | None = None
        self._reference = _Window()
        self._last_value = 0.0

    @property
    def statistic(self) -> float:
        est = getattr(self.detector, "estimation", None)
        return float(est) if est is not None else self._last_value

    def update(self, value: float, event_time_us: int, offsets: dict[str, int] | None = None) -> dict[str, Any] | None:
        self._last_value = value
        if self.state == "drift" and self._drift_since_us is not None:
            if event_time_us - self._drift_since_us >= self.spec.cooldown_s * 1e6:
                self.state = "ok"
                self._drift_since_us = None
                self._reference = _Window()
        self.detector.update(value)
        if not self.detector.drift_detected:
            if self.state == "ok":
                self._reference.add(value, event_time_us)
            return None
        self.detections += 1
        if self.state == "drift":
            return None
        self.state = "drift"
        self._drift_since_us = event_time_us
        self.requests += 1
        episode = int(event_time_us // (self.spec.cooldown_s * 1e6))
        return {
            "request_id": str(uuid.uuid4()),
            "dedupe_key": f"{self.model}:{self.model_version}:{self.spec.name}:{episode}",
            "model": self.model,
            "model_version": self.model_version,
            "monitor": self.spec.name,
            "monitor_params": {"detector": self.spec.detector, **{k: str(v) for k, v in self.spec.params.items()}},
            "signal": self.spec.signal,
            "statistic": self.statistic,
            "threshold": self._reference.mean,
            "severity": self.spec.severity,
            "window_start": self._reference.start_us or event_time_us,
            "window_end": event_time_us,
            "sample_count": self._reference.count,
            "offsets": dict(offsets or {}),
            "reference_snapshot_id": f"{self.model}:{self.model_version}",
            "detected_at": int(time.time() * 1e6),
        }
