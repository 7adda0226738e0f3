"""Calibrate a detector's sensitivity on stationary streams: thresholds are measured, not guessed.

:func:`calibrate` replays streams of a signal that hold NO drift (e.g. the errors or scores of a holdout
set, in event order, cut into streams as long as the span a monitor should stay quiet over) through fresh
detectors and returns the most sensitive setting of the kind's sensitivity parameter whose false-alarm
rate is at most ``target_false_alarms``.

**False-alarm rate**: DRIFT firings per stream, averaged over the streams (so a target of 0.05 on
streams of 10,000 samples means at most one false DRIFT per 200,000 samples; :attr:`Calibration.per_10k`
gives the rate per 10,000 samples). A firing is one DRIFT decision: one sample for River's detectors (they
start over after a detection, so every DRIFT counts) and one full window for ``psi``/``ks``/feature drift.
Streams should have the length the target is meant for: the rate grows with the length.

**Sensitivity parameter** per kind (:data:`SENSITIVITY`), searched on a grid from most to least sensitive
(:func:`default_grid`, or ``grid=``):

* ``adwin``: ``delta``, 1e-1 down to 1e-8, four steps a decade (smaller is less sensitive);
* ``page_hinkley``: ``threshold``, 1e-2 up to 1e4, eight steps a decade;
* ``ddm``: ``drift_threshold``, 1.5 up to 10 by 0.25 (``warning_threshold`` keeps its ratio to it);
* ``hddm_w``: ``drift_confidence``, 1e-1 down to 1e-12, four steps a decade (``warning_confidence`` keeps its
  ratio to it in log scale);
* ``psi``/``ks``: ``threshold``, not searched but computed: every full window's statistic is computed once;
  with ``k = floor(target * streams)`` windows allowed to fire, the threshold is the ``(k + 1)``-th largest
  statistic times ``safety`` (default 1.1, a margin for fresh data; at least just above that statistic). An explicit ``warning`` keeps its ratio.

The grid search is a bisection on the grid index: it assumes the false-alarm rate falls as the setting
gets less sensitive (true in expectation, nearly so on one replay), finds the first grid point that meets
the target, then steps ``margin_steps`` (default 1) further towards less sensitive as a margin for fresh
streams (and on, if that point does not meet the target). When even the least sensitive grid point misses
the target, the result says so (``met=False``) and holds that point.

:func:`calibrate_features` does the same for :class:`~streaming.online.detectors.FeatureDrift`'s ``alpha``.
Bonferroni's ``alpha`` already is a per-window false-alarm bound; without a target the function verifies
it (the value stays ``alpha``, the target is the bound ``alpha`` x windows per stream, the observed rate is
reported); with a target it picks ``alpha`` as the ``(k + 1)``-th smallest corrected p-value divided by
``safety`` (at most 0.25, so that the WARNING band ``2 alpha`` stays below 1/2).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> streams = [(rng.random(2000) < 0.1).astype(float) for _ in range(10)]
>>> cal = calibrate("adwin", {}, streams, target_false_alarms=0.1)
>>> cal.param, cal.false_alarms <= 0.1, cal.params()["delta"] == cal.value
('delta', True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streaming.online.detectors import (
    KINDS,
    FeatureDrift,
    Level,
    ReferenceSnapshot,
    WindowDetector,
    build_detector,
)

__all__ = ["SENSITIVITY", "Calibration", "calibrate", "calibrate_features", "default_grid"]

#: the parameter that sets each kind's sensitivity
SENSITIVITY: dict[str, str] = {
    "adwin": "delta",
    "page_hinkley": "threshold",
    "ddm": "drift_threshold",
    "hddm_w": "drift_confidence",
    "psi": "threshold",
    "ks": "threshold",
    "feature_ks": "alpha",
}

# River 0.26's defaults for the companion warning settings, and the window detectors' threshold defaults
_DDM_DEFAULTS = (2.0, 3.0)  # warning_threshold, drift_threshold
_HDDM_W_DEFAULTS = (0.005, 0.001)  # warning_confidence, drift_confidence
_WINDOW_DEFAULTS = {"psi": 0.2, "ks": 0.1}


def default_grid(kind: str) -> tuple[float, ...]:
    """The grid of the kind's sensitivity parameter, most sensitive first."""
    if kind == "adwin":
        return tuple(float(v) for v in np.logspace(-1, -8, 29))
    if kind == "page_hinkley":
        return tuple(float(v) for v in np.logspace(-2, 4, 49))
    if kind == "ddm":
        return tuple(float(v) for v in np.arange(1.5, 10.0001, 0.25))
    if kind == "hddm_w":
        return tuple(float(v) for v in np.logspace(-1, -12, 45))
    raise ValueError(f"no grid for {kind!r}: psi/ks thresholds and feature alpha are computed, not searched")


def _with_value(kind: str, params: Mapping[str, Any], value: float) -> dict[str, Any]:
    """``params`` with the sensitivity parameter set to ``value`` and its warning companion moved along."""
    out = dict(params)
    if kind == "ddm":
        w0 = float(params.get("warning_threshold", _DDM_DEFAULTS[0]))
        d0 = float(params.get("drift_threshold", _DDM_DEFAULTS[1]))
        out["warning_threshold"] = value * w0 / d0
    elif kind == "hddm_w":
        w0 = float(params.get("warning_confidence", _HDDM_W_DEFAULTS[0]))
        d0 = float(params.get("drift_confidence", _HDDM_W_DEFAULTS[1]))
        if not (0 < w0 < 1 and 0 < d0 < 1):
            raise ValueError("hddm_w confidences must lie in (0, 1)")
        out["warning_confidence"] = value ** (math.log(w0) / math.log(d0))
    elif kind in _WINDOW_DEFAULTS and "warning" in params:
        t0 = float(params.get("threshold", _WINDOW_DEFAULTS[kind]))
        out["warning"] = value * float(params["warning"]) / t0
    out[SENSITIVITY[kind]] = value
    return out


@dataclass(frozen=True)
class Calibration:
    """The outcome of a calibration: the chosen value of ``param`` and what it did on the streams."""

    kind: str
    param: str
    value: float
    false_alarms: float  # observed DRIFT firings per stream at ``value``
    samples: int  # samples replayed (all streams together, once)
    streams: int
    target: float  # the false alarms per stream asked for (feature verification: the Bonferroni bound)
    met: bool  # false_alarms <= target
    base: Mapping[str, Any] = field(default_factory=dict)  # the params calibrated from
    signal: str | None = None
    trace: tuple[tuple[float, float], ...] = ()  # (value, false alarms per stream) of every evaluation

    @property
    def per_10k(self) -> float:
        """The observed false alarms per 10,000 samples."""
        return self.false_alarms * self.streams / self.samples * 1e4 if self.samples else 0.0

    def params(self) -> dict[str, Any]:
        """The full params with the calibrated value (and the warning companion kept in proportion)."""
        return _with_value(self.kind, self.base, self.value)


def _check(streams: Sequence[Any], target: float | None) -> None:
    if not len(streams):
        raise ValueError("calibration needs at least one stationary stream")
    if target is not None and not target >= 0:
        raise ValueError(f"target_false_alarms must be >= 0, got {target}")


def calibrate(kind: str, params: Mapping[str, Any] | None, streams: Sequence[Sequence[float] | np.ndarray], *,
              target_false_alarms: float, reference: ReferenceSnapshot | None = None, signal: str | None = None,
              grid: Sequence[float] | None = None, margin_steps: int = 1, safety: float = 1.1) -> Calibration:
    """The most sensitive setting of ``kind`` with at most ``target_false_alarms`` DRIFT firings per stream.

    ``streams`` are stationary sequences of the signal; ``reference`` and ``signal`` are passed to
    :func:`~streaming.online.detectors.build_detector` (``psi``/``ks`` need the reference).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown detector {kind!r}; known: {', '.join(KINDS)}")
    _check(streams, target_false_alarms)
    base = dict(params or {})
    if kind in _WINDOW_DEFAULTS:
        return _calibrate_window(kind, base, streams, target_false_alarms, reference, signal, safety)
    values = [np.asarray(s, dtype=np.float64).reshape(-1).tolist() for s in streams]
    samples = sum(len(v) for v in values)
    points = tuple(float(g) for g in (grid if grid is not None else default_grid(kind)))
    if not points:
        raise ValueError("empty grid")
    cache: dict[int, float] = {}

    def rate(i: int) -> float:
        if i not in cache:
            det = build_detector(kind, _with_value(kind, base, points[i]), reference, signal)
            fired = 0
            for stream in values:
                det.reset()
                for v in stream:
                    if det.update(v) == Level.DRIFT:
                        fired += 1
            cache[i] = fired / len(values)
        return cache[i]

    idx = _search(rate, len(points), target_false_alarms, margin_steps)
    return Calibration(kind, SENSITIVITY[kind], points[idx], rate(idx), samples, len(values), target_false_alarms,
                       rate(idx) <= target_false_alarms, base, signal or "error",
                       tuple((points[i], cache[i]) for i in sorted(cache)))


def _search(rate: Callable[[int], float], n: int, target: float, margin_steps: int) -> int:
    """The first index meeting ``target`` (bisection, assuming the rate falls with the index), plus the margin."""
    last = n - 1
    if rate(last) > target:
        return last
    if rate(0) <= target:
        first = 0
    else:
        lo, hi = 0, last  # rate(lo) > target >= rate(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if rate(mid) <= target:
                hi = mid
            else:
                lo = mid
        first = hi
    idx = min(first + max(0, margin_steps), last)
    while idx < last and rate(idx) > target:
        idx += 1
    return idx


def _windows(stream: Any, width: int) -> list[np.ndarray]:
    arr = np.asarray(stream, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[~np.isnan(arr)]
    return [arr[i:i + width] for i in range(0, arr.shape[0] - width + 1, width)]


def _pick_largest(stats: np.ndarray, target: float, streams: int) -> float:
    """The ``(k + 1)``-th largest of ``stats`` with ``k = floor(target * streams)`` (the last one at most)."""
    k = min(math.floor(target * streams + 1e-9), stats.size - 1)
    return float(np.sort(stats)[::-1][k])


def _calibrate_window(kind: str, base: dict[str, Any], streams: Sequence[Any], target: float,
                      reference: ReferenceSnapshot | None, signal: str | None, safety: float) -> Calibration:
    det = build_detector(kind, base, reference, signal)
    assert isinstance(det, WindowDetector)
    per_stream = [[det.window_statistic(w) for w in _windows(s, det.window)] for s in streams]
    stats = np.array([x for s in per_stream for x in s])
    if stats.size == 0:
        raise ValueError(f"no stream holds a full window of {det.window} values")
    kth = _pick_largest(stats, target, len(streams))
    value = max(kth * safety, math.nextafter(kth, math.inf), 1e-12)  # DRIFT is statistic >= threshold
    fired = float(np.sum(stats >= value)) / len(streams)
    samples = sum(np.asarray(s).reshape(-1).size for s in streams)
    return Calibration(kind, "threshold", value, fired, samples, len(streams), target, fired <= target, base,
                       det.signal, ((value, fired),))


def calibrate_features(params: Mapping[str, Any] | None, streams: Sequence[Any], *, reference: ReferenceSnapshot,
                       target_false_alarms: float | None = None, safety: float = 1.1) -> Calibration:
    """Verify (no target) or pick (target) :class:`FeatureDrift`'s ``alpha`` on stationary streams of vectors.

    ``params`` are FeatureDrift's keyword arguments (``names``, ``window``, ``alpha``, ``test``); each stream
    is a 2-D array (rows x features, in ``names`` order).
    """
    _check(streams, target_false_alarms)
    base = dict(params or {})
    fd = FeatureDrift(reference, **base)
    min_p = np.array([float(fd.window_tests(w)[1].min(initial=1.0))
                      for s in streams for w in _windows(np.asarray(s, dtype=np.float64).reshape(-1, len(fd.names)),
                                                         fd.window)])
    if min_p.size == 0:
        raise ValueError(f"no stream holds a full window of {fd.window} rows")
    n = len(streams)
    if target_false_alarms is None:
        value = fd.alpha
        target = fd.alpha * min_p.size / n  # Bonferroni: at most alpha false DRIFTs a window
    else:
        target = target_false_alarms
        value = min(-_pick_largest(-min_p, target, n) / safety, 0.25)
        value = max(value, 1e-300)
    fired = float(np.sum(min_p < value)) / n
    samples = sum(np.asarray(s).reshape(-1, len(fd.names)).shape[0] for s in streams)
    return Calibration("feature_ks", "alpha", value, fired, samples, n, target, fired <= target, base, "features",
                       ((value, fired),))
