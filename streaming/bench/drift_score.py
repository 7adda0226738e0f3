"""Scoring ``streaming bench drift``: requests to delays and false alarms, the baselines, River's own accuracy, targets.

**Where a request lies.** A retrain request's ``window_end`` is the event time of the label's event that
confirmed the drift; events are paced at a fixed rate, so it names one event of the stream
(:func:`request_counts`: River's 1-based sample count of that event). **Delay** = that count minus the drift
position (River's ``ConceptDriftStream`` position, where half the events come from the new concept), for the
first request at or after the drift's onset (``position - width``: before it, fewer than 2 % of the events
follow the new concept); a request before the onset, or any request on a stationary stream, is a **false
alarm**. A drift run with no request after the onset has no delay (missed).

**Baselines** replay a run's error sequence (``|label - v1 score|`` per event, in stream order) through the
pipeline's error monitors under the same rules (:class:`~streaming.online.monitor.MonitorGroup`: the monitor's
state machine and cooldown, K of N, the group's cooldown) with a scripted detector that always says DRIFT, or
never does (:func:`replay`); with the real detectors the same replay is what the worker should do when it
learns the labels in stream order (``offline``). An always-firing detector fires on the first label: under the
group's cooldown that is its only request, a false alarm on every stream.

**Targets** (:func:`targets`): every drift run detected within :data:`MAX_DELAY` events, exactly one request
per drift run and none before its onset, no request on a stationary run, every run with at least
:data:`MIN_JOINED` of its labels joined, and the learner's prequential accuracy through the pipeline within
:data:`MAX_ACCURACY_GAP_POINTS` of River's ``progressive_val_score`` on every run.

>>> request_counts([2_000, 6_000], start_us=0, rate=500)
[2, 4]
>>> score_requests([5_300], drift_position=5_000, width=50)
{'requests': 1, 'false_alarms': 0, 'delay': 300, 'at': [5300]}
>>> score_requests([100, 5_010], drift_position=5_000, width=50)
{'requests': 2, 'false_alarms': 1, 'delay': 10, 'at': [100, 5010]}
>>> score_requests([800], drift_position=None, width=50)
{'requests': 1, 'false_alarms': 1, 'delay': None, 'at': [800]}
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from river import evaluate, metrics

from streaming.online.detectors import Level
from streaming.online.learners import build_learner
from streaming.online.monitor import MonitorGroup
from streaming.pipeline.spec import DriftSpec, LearnerSpec, MonitorSpec

__all__ = ["MAX_ACCURACY_GAP_POINTS", "MAX_DELAY", "MIN_JOINED", "ScriptedDetector", "detection_targets",
           "replay", "request_counts", "river_accuracy", "score_requests", "summarise", "targets"]

#: the targets: detection delay (events), labels joined (share), learner accuracy gap to River's (points)
MAX_DELAY = 1_000
MIN_JOINED = 0.999
MAX_ACCURACY_GAP_POINTS = 0.5


def request_counts(window_ends: Iterable[int], *, start_us: int, rate: float) -> list[int]:
    """River's 1-based sample count of the event each ``window_end`` (event time, µs) names, sorted."""
    return sorted(round((w - start_us) * rate / 1e6) + 1 for w in window_ends)


def score_requests(counts: Sequence[int], *, drift_position: int | None, width: int) -> dict[str, Any]:
    """Requests, false alarms and the delay of a run whose requests lie at ``counts`` (see the module's text)."""
    at = sorted(counts)
    if drift_position is None:
        return {"requests": len(at), "false_alarms": len(at), "delay": None, "at": at}
    onset = drift_position - width
    after = [c for c in at if c >= onset]
    return {"requests": len(at), "false_alarms": len(at) - len(after),
            "delay": after[0] - drift_position if after else None, "at": at}


class ScriptedDetector:
    """A detector that answers the same level to every sample (the always- and never-fire baselines)."""

    kind = "scripted"

    def __init__(self, level: Level) -> None:
        self.level = level

    def update(self, value: float) -> Level:
        return self.level

    @property
    def statistic(self) -> float:
        return 0.0

    @property
    def threshold(self) -> float:
        return 0.0

    def reset(self) -> None:
        """Nothing to forget."""


def replay(errors: Sequence[float], times: Sequence[int], monitors: Sequence[MonitorSpec], drift: DriftSpec, *,
           scripted: Level | None = None) -> list[int]:
    """Event times (µs) at which the pipeline's error monitors, fed ``errors`` in order, make a request.

    ``scripted``: every monitor's detector replaced by :class:`ScriptedDetector` at that level.

    >>> from streaming.pipeline.spec import DriftSpec, MonitorSpec
    >>> mon = [MonitorSpec("e", "adwin", "error", {"delta": 0.002}, cooldown_s=600)]
    >>> errs, times = [0.0] * 3000 + [1.0] * 3000, [i * 2000 for i in range(6000)]
    >>> len(replay(errs, times, mon, DriftSpec(cooldown_s=3600)))
    1
    >>> replay(errs, times, mon, DriftSpec(cooldown_s=3600), scripted=Level.DRIFT)
    [0]
    >>> replay(errs, times, mon, DriftSpec(cooldown_s=3600), scripted=Level.OK)
    []
    """
    specs = [m for m in monitors if m.signal == "error"]
    group = MonitorGroup(specs, drift, "replay", "v1")
    if scripted is not None:
        for mon in group.monitors:
            mon.detector = ScriptedDetector(scripted)
    return [int(t) for e, t in zip(errors, times, strict=True)
            if group.observe("error", float(e), int(t)) is not None]


def river_accuracy(spec: LearnerSpec, xs: Sequence[Mapping[str, float]], ys: Sequence[int]) -> float:
    """River's ``progressive_val_score`` (accuracy) of the pipeline's learner on ``xs``/``ys`` in order.

    >>> from streaming.pipeline.spec import LearnerSpec
    >>> xs = [{"a": float(i % 10)} for i in range(400)]
    >>> river_accuracy(LearnerSpec("logistic_regression"), xs, [int(x["a"] > 4) for x in xs]) > 0.9
    True
    """
    data = [(dict[Hashable, Any](x.items()), bool(y)) for x, y in zip(xs, ys, strict=True)]
    return float(evaluate.progressive_val_score(data, build_learner(spec), metrics.Accuracy()).get())


def _all(values: Iterable[bool]) -> bool:
    seen = list(values)
    return bool(seen) and all(seen)


def detection_targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """The three detection targets over runs with ``stationary``, ``delay``, ``requests`` and ``false_alarms``.

    >>> drift = {"stationary": False, "delay": 300, "requests": 1, "false_alarms": 0}
    >>> quiet = {"stationary": True, "delay": None, "requests": 0, "false_alarms": 0}
    >>> detection_targets([drift, quiet])
    {'delay_le_1000': True, 'one_request_per_drift': True, 'no_false_alarms': True}
    >>> detection_targets([{**drift, "delay": 1200, "requests": 2}, {**quiet, "requests": 1, "false_alarms": 1}])
    {'delay_le_1000': False, 'one_request_per_drift': False, 'no_false_alarms': False}
    """
    drifts = [r for r in rows if not r["stationary"]]
    return {
        "delay_le_1000": _all(r["delay"] is not None and r["delay"] <= MAX_DELAY for r in drifts),
        "one_request_per_drift": _all(r["requests"] == 1 and r["false_alarms"] == 0 for r in drifts),
        "no_false_alarms": _all(r["false_alarms"] == 0 for r in rows if r["stationary"]),
    }


def targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Every target over the runs through the pipeline (:func:`detection_targets` plus labels and accuracy).

    >>> row = {"stationary": False, "delay": 300, "requests": 1, "false_alarms": 0, "labels_published": 1000,
    ...        "labels_joined": 999, "accuracy_gap_points": 0.2}
    >>> targets([row])["labels_joined_999"], targets([{**row, "labels_joined": 998}])["labels_joined_999"]
    (True, False)
    >>> targets([row])["accuracy_within_05"], targets([{**row, "accuracy_gap_points": -0.6}])["accuracy_within_05"]
    (True, False)
    """
    return {
        **detection_targets(rows),
        "labels_joined_999": _all(r["labels_published"] > 0 and r["labels_joined"] >= MIN_JOINED * r["labels_published"]
                                  for r in rows),
        "accuracy_within_05": _all(r["accuracy_gap_points"] is not None
                                   and abs(r["accuracy_gap_points"]) <= MAX_ACCURACY_GAP_POINTS for r in rows),
    }


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregates of the detection rows: delays, requests per drift run, false alarms.

    >>> summarise([{"stationary": False, "delay": 300, "requests": 1, "false_alarms": 0},
    ...            {"stationary": False, "delay": None, "requests": 0, "false_alarms": 0},
    ...            {"stationary": True, "delay": None, "requests": 0, "false_alarms": 0}])["missed"]
    1
    """
    drifts = [r for r in rows if not r["stationary"]]
    delays = [r["delay"] for r in drifts if r["delay"] is not None]
    return {
        "drift_runs": len(drifts),
        "delays": [r["delay"] for r in drifts],
        "delay_max": max(delays) if delays else None,
        "delay_mean": round(sum(delays) / len(delays), 1) if delays else None,
        "missed": len(drifts) - len(delays),
        "requests_per_drift": [r["requests"] for r in drifts],
        "false_alarms_before_drift": sum(r["false_alarms"] for r in drifts),
        "stationary_runs": len(rows) - len(drifts),
        "false_alarms_stationary": sum(r["false_alarms"] for r in rows if r["stationary"]),
    }
