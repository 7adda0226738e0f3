"""Drift monitors: a detector behind a state machine, and a group that turns detections into requests.

Each :class:`Monitor` feeds one signal to its detector (:mod:`streaming.online.detectors`) and
keeps a state, exported as ``streaming_drift_state`` (0 ok, 1 warning, 2 drift)::

    OK --warning--> WARNING --drift--> DRIFT
     \\______________drift______________/^
    WARNING -> OK     after ``recover`` consecutive samples at level OK
    DRIFT   -> OK     after ``cooldown`` of event time in DRIFT, then ``recover`` samples at OK

The detector is reset when the monitor enters DRIFT, so it learns the new distribution; the
way back is slower than the way in (hysteresis), so one drift is one DRIFT episode, not a
flicker of them.

A :class:`MonitorGroup` holds a pipeline's monitors for one model version and decides when a
detection becomes a :class:`~streaming.online.request.RetrainRequest`: when ``require`` monitors
(K of N) entered DRIFT within ``agree_within`` of each other, and the model is not in its
cooldown (one request per model per ``cooldown`` of event time). Across workers and monitors the
request's dedupe key is claimed in Redis by the caller (``SET NX``, see
:meth:`streaming.features.store.RedisFeatureStore.claim_drift`), so one drift yields one request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.online.detectors import Detector, FeatureDrift, Level, ReferenceSnapshot, build_detector
from streaming.online.request import RetrainRequest
from streaming.pipeline.spec import DriftSpec, MonitorSpec

__all__ = ["STATES", "Monitor", "MonitorGroup"]

STATES = {"ok": 0, "warning": 1, "drift": 2}
#: detectors that compare a window with a reference and have a threshold on their statistic
_WINDOWED = ("psi", "ks")


@dataclass
class _Episode:
    since_us: int | None = None  # event time the monitor left OK
    samples: int = 0


class Monitor:
    """One signal, one detector, one state.

    >>> from streaming.pipeline.spec import MonitorSpec
    >>> mon = Monitor(MonitorSpec("err", "adwin", "error", {"delta": 0.002}, cooldown_s=60))
    >>> fired = [i for i in range(4000) if mon.update(0.0 if i < 2000 else 1.0, i * 10_000)]
    >>> len(fired), mon.state
    (1, 'drift')
    """

    def __init__(self, spec: MonitorSpec, reference: ReferenceSnapshot | None = None,
                 names: Sequence[str] = ()) -> None:
        self.spec = spec
        self.detector: Detector | FeatureDrift
        self._cols: list[int] | None = None
        if spec.signal == "features":
            if reference is None:
                raise ValueError(f"monitor {spec.name}: feature drift needs the model's reference snapshot")
            params = dict(spec.params)
            chosen = list(params.pop("features", names))  # the features tested (default: all of the vector)
            unknown = [f for f in chosen if f not in names]
            if unknown:
                raise ValueError(f"monitor {spec.name}: features not in the vector: {', '.join(unknown)}")
            self._cols = [list(names).index(f) for f in chosen]
            self.detector = FeatureDrift(reference, chosen, **params)
        else:
            self.detector = build_detector(spec.detector, dict(spec.params), reference=reference, signal=spec.signal)
        self.state = "ok"
        self.detections = 0
        self.last_level = Level.OK
        self._ok_run = 0
        self._episode = _Episode()
        self.fired_at_us: int | None = None  # event time of the last entry into DRIFT
        #: at the last entry into DRIFT: the statistic, and the reference it was compared with
        self.fired_statistic = 0.0
        self.fired_reference = 0.0
        self._windowed = spec.signal == "features" or spec.detector in _WINDOWED
        self._ok_sum = 0.0
        self._ok_n = 0
        self._recent: deque[float] = deque(maxlen=200)

    @property
    def statistic(self) -> float:
        return float(self.detector.statistic)

    @property
    def threshold(self) -> float:
        return float(self.detector.threshold)

    @property
    def window(self) -> tuple[int | None, int]:
        """Event time the current episode began (left OK), and its samples."""
        return self._episode.since_us, self._episode.samples

    def update(self, value: float | Sequence[float], event_time_us: int) -> bool:
        """Feed one sample (a row for feature drift); True when the monitor enters DRIFT now."""
        if isinstance(self.detector, FeatureDrift):
            row: Any = value
            level = self.detector.update_row(row if self._cols is None else [row[i] for i in self._cols])
        else:
            level = self.detector.update(float(value))  # type: ignore[arg-type]
        if not self._windowed:
            v = float(value)  # type: ignore[arg-type]
            self._recent.append(v)
            if self.state == "ok":
                self._ok_sum += v
                self._ok_n += 1
        return self._step(level, event_time_us, 1)

    def update_batch(self, values: np.ndarray, event_times: np.ndarray) -> bool:
        """Feed a batch of samples (rows for feature drift) in event order; True when the monitor entered DRIFT.

        A windowed detector (PSI, KS, features) takes the batch a window at a time through numpy, with the
        same levels as one sample at a time (its level changes only when a window closes); the others take
        it sample by sample."""
        n = len(values)
        if not self._windowed:
            fired = False
            for v, t in zip(np.asarray(values, dtype=np.float64).tolist(), event_times.tolist(), strict=True):
                fired = self.update(v, int(t)) or fired
            return fired
        det: Any = self.detector
        if self._cols is not None:
            values = np.asarray(values)[:, self._cols]
        fired = False
        i = 0
        while i < n:
            take = min(int(det.remaining), n - i)
            chunk = values[i:i + take]
            level = det.update_rows(chunk) if isinstance(det, FeatureDrift) else det.update_many(chunk)
            fired = self._step(level, int(event_times[i + take - 1]), take) or fired
            i += take
        return fired

    def _step(self, level: Level, event_time_us: int, n: int) -> bool:
        """The state machine, after ``n`` samples that left the detector at ``level``."""
        self.last_level = level
        self._ok_run = self._ok_run + n if level == Level.OK else 0
        if self.state != "ok":
            self._episode.samples += n
        if self.state == "drift":
            assert self.fired_at_us is not None
            cooled = event_time_us - self.fired_at_us >= self.spec.cooldown_s * 1e6
            if cooled and self._ok_run >= self.spec.recover:
                self._to_ok()
            return False
        if level == Level.DRIFT:
            if self.state == "ok":
                self._episode = _Episode(event_time_us, n)
            self.state = "drift"
            self.detections += 1
            self.fired_at_us = event_time_us
            if self._windowed:  # the window's statistic against its threshold
                self.fired_statistic, self.fired_reference = self.statistic, self.threshold
            else:  # the signal's recent mean against its mean while OK
                self.fired_statistic = sum(self._recent) / len(self._recent)
                self.fired_reference = self._ok_sum / self._ok_n if self._ok_n else 0.0
            self.detector.reset()
            self._ok_run = 0
            return True
        if level == Level.WARNING and self.state == "ok":
            self.state = "warning"
            self._episode = _Episode(event_time_us, n)
        elif self.state == "warning" and self._ok_run >= self.spec.recover:
            self._to_ok()
        return False

    def _to_ok(self) -> None:
        self.state = "ok"
        self._episode = _Episode()
        self._ok_sum, self._ok_n = 0.0, 0  # the new normal is the reference from now on


class MonitorGroup:
    """A pipeline's monitors for one model version, and the K-of-N and cooldown rules for requests.

    >>> from streaming.pipeline.spec import DriftSpec, MonitorSpec
    >>> specs = [MonitorSpec("a", "adwin", "error", {"delta": 0.002}), MonitorSpec("b", "ddm", "error")]
    >>> group = MonitorGroup(specs, DriftSpec(require=2, agree_within_s=600), "fraud", "v1")
    >>> reqs = [group.observe("error", 0.0 if i < 3000 else 1.0, i * 10_000) for i in range(6000)]
    >>> [r.monitor for r in reqs if r is not None]
    ['a+b']
    """

    def __init__(self, specs: Sequence[MonitorSpec], drift: DriftSpec, model: str, version: str, *,
                 reference: ReferenceSnapshot | None = None, names: Sequence[str] = ()) -> None:
        self.drift = drift
        self.model = model
        self.version = version
        self.monitors = [Monitor(s, reference, names) for s in specs
                         if s.signal == "error" or reference is not None or s.detector == "page_hinkley"]
        #: monitors that need a reference snapshot the model version does not have
        self.skipped = [s.name for s in specs if all(m.spec is not s for m in self.monitors)]
        self.signals = frozenset(m.spec.signal for m in self.monitors)
        self.requests = 0
        self.suppressed = 0  # K-of-N met again inside the model's cooldown
        self._requested_at_us: int | None = None

    def by_signal(self, signal: str) -> list[Monitor]:
        return [m for m in self.monitors if m.spec.signal == signal]

    def observe(self, signal: str, value: float | Sequence[float], event_time_us: int,
                offsets: Mapping[str, int] | None = None) -> RetrainRequest | None:
        """Feed ``value`` to the monitors of ``signal``; a retrain request when the rules say so."""
        fired = False
        for mon in self.monitors:
            if mon.spec.signal == signal and mon.update(value, event_time_us):
                fired = True
        return self._decide(event_time_us, offsets) if fired else None

    def observe_batch(self, signal: str, values: np.ndarray, event_times: np.ndarray,
                      offsets: Mapping[str, int] | None = None) -> RetrainRequest | None:
        """:meth:`observe` for a batch in event order (scores, or the rows of served vectors)."""
        fired_at = [mon.fired_at_us for mon in self.monitors
                    if mon.spec.signal == signal and len(values) and mon.update_batch(values, event_times)]
        return self._decide(max(t for t in fired_at if t is not None), offsets) if fired_at else None

    def _decide(self, now_us: int, offsets: Mapping[str, int] | None) -> RetrainRequest | None:
        within = self.drift.agree_within_s * 1e6
        agreeing = [m for m in self.monitors
                    if m.state == "drift" and m.fired_at_us is not None and now_us - m.fired_at_us <= within]
        if len(agreeing) < min(self.drift.require, len(self.monitors)):
            return None
        if self._requested_at_us is not None and now_us - self._requested_at_us < self.drift.cooldown_s * 1e6:
            self.suppressed += 1
            return None
        self._requested_at_us = now_us
        self.requests += 1
        first = min(agreeing, key=lambda m: m.fired_at_us or now_us)
        starts = [s for s in (m.window[0] for m in agreeing) if s is not None]
        return RetrainRequest.new(
            dedupe_key=f"{self.model}:{self.version}:{first.fired_at_us}",
            model=self.model,
            model_version=self.version,
            monitor="+".join(m.spec.name for m in agreeing),
            signal=first.spec.signal,
            statistic=first.fired_statistic,
            threshold=first.fired_reference,
            window_start=min(starts) if starts else now_us,
            window_end=now_us,
            sample_count=sum(m.window[1] for m in agreeing),
            severity=max((m.spec.severity for m in agreeing), key=lambda s: s == "critical"),
            monitor_params={"detectors": ",".join(m.spec.detector for m in agreeing),
                            **{f"{m.spec.name}.{k}": str(v) for m in agreeing for k, v in m.spec.params.items()}},
            offsets=dict(offsets or {}),
            reference_snapshot_id=f"{self.model}:{self.version}",
        )

    def report(self) -> dict[str, Any]:
        return {m.spec.name: {"state": m.state, "statistic": m.statistic, "threshold": m.threshold,
                              "detections": m.detections} for m in self.monitors}
