"""Calibration: the setting it picks keeps its false-alarm target on fresh stationary streams and still detects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streaming.online.calibrate import SENSITIVITY, Calibration, calibrate, calibrate_features, default_grid
from streaming.online.detectors import FeatureDrift, Level, ReferenceSnapshot, WindowDetector, build_detector

TARGET = 0.1  # DRIFT firings per stream
N = 2000  # samples per stream


def error_streams(first_seed: int, count: int, n: int = N, rate: float = 0.05) -> list[np.ndarray]:
    return [(np.random.default_rng(first_seed + i).random(n) < rate).astype(float) for i in range(count)]


def false_alarms(kind: str, params: dict[str, float], streams: list[np.ndarray], **kw: object) -> float:
    det = build_detector(kind, params, **kw)  # type: ignore[arg-type]
    fired = 0
    for s in streams:
        det.reset()
        fired += sum(det.update(v) == Level.DRIFT for v in s.tolist())
    return fired / len(streams)


def step_stream(seed: int, before: float = 0.05, after: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(N) < before, rng.random(N) < after].astype(float)


# (kind, calibration streams, a setting known to be too lax: calibration must be at least as sensitive)
CASES = [
    ("adwin", 20, 1e-6),
    ("page_hinkley", 20, 200.0),
    ("ddm", 20, 8.0),
    ("hddm_w", 10, 1e-8),  # HDDM_W is the slowest (~10 us a sample): fewer streams
]


def more_sensitive_or_equal(kind: str, a: float, b: float) -> bool:
    """Whether setting ``a`` of ``kind``'s sensitivity parameter is at least as sensitive as ``b``."""
    return a >= b if kind in ("adwin", "hddm_w") else a <= b


@pytest.mark.parametrize(("kind", "count", "lax"), CASES)
def test_calibrated_error_detector_holds_on_fresh_streams_and_detects(kind: str, count: int, lax: float) -> None:
    cal = calibrate(kind, {}, error_streams(0, count), target_false_alarms=TARGET)
    assert cal.met and cal.false_alarms <= TARGET
    assert cal.param == SENSITIVITY[kind] and cal.params()[cal.param] == cal.value
    assert cal.streams == count and cal.samples == count * N
    assert more_sensitive_or_equal(kind, cal.value, lax)
    assert false_alarms(kind, cal.params(), error_streams(10_000, count)) <= TARGET  # fresh seeds
    det = build_detector(kind, cal.params())
    levels = [det.update(v) for v in step_stream(99).tolist()]
    fired = [i for i, lv in enumerate(levels) if lv == Level.DRIFT]
    assert fired and N <= fired[0] < N + 500, fired[:3]


@pytest.mark.parametrize("kind", ["page_hinkley", "ddm"])
def test_calibration_is_tight(kind: str) -> None:
    """Without a margin, the next more sensitive grid point misses the target on the same streams."""
    streams = error_streams(0, 20)
    cal = calibrate(kind, {}, streams, target_false_alarms=TARGET, margin_steps=0)
    grid = default_grid(kind)
    i = grid.index(cal.value)
    assert i > 0
    assert false_alarms(kind, cal.params() | {cal.param: grid[i - 1]}, streams) > TARGET
    # a margin step makes it less sensitive, never more
    lax = calibrate(kind, {}, streams, target_false_alarms=TARGET)
    assert grid.index(lax.value) >= i


def test_target_out_of_reach_is_reported() -> None:
    drifting = [step_stream(s, 0.0, 1.0) for s in range(3)]
    cal = calibrate("adwin", {}, drifting, target_false_alarms=0.0, grid=[0.1, 0.01])
    assert not cal.met and cal.value == 0.01 and cal.false_alarms > 0
    with pytest.raises(ValueError):
        calibrate("adwin", {}, [], target_false_alarms=0.1)
    with pytest.raises(ValueError):
        calibrate("adwin", {}, drifting, target_false_alarms=-1)


def test_warning_companions_keep_their_ratio() -> None:
    ddm = Calibration("ddm", "drift_threshold", 6.0, 0.0, 1, 1, 0.1, True, {"warning_threshold": 2.0})
    assert ddm.params() == {"drift_threshold": 6.0, "warning_threshold": 4.0}  # 2/3 of River's default 3
    hddm = Calibration("hddm_w", "drift_confidence", 1e-6, 0.0, 1, 1, 0.1, True, {})
    assert 1e-6 < hddm.params()["warning_confidence"] < 1e-3  # 0.005 vs 0.001, in log scale
    ks = Calibration("ks", "threshold", 0.2, 0.0, 1, 1, 0.1, True, {"threshold": 0.1, "warning": 0.08})
    assert ks.params() == {"threshold": 0.2, "warning": pytest.approx(0.16)}
    assert ddm.per_10k == 0.0


# --------------------------------------------------------------------------- PSI / KS thresholds


@pytest.fixture(scope="module")
def reference() -> ReferenceSnapshot:
    rng = np.random.default_rng(0)
    return ReferenceSnapshot.from_arrays(rng.normal(size=(20_000, 5)), rng.beta(0.5, 5, 20_000),
                                         [f"f{i}" for i in range(5)])


def score_streams(first_seed: int, count: int, n: int = 10_000) -> list[np.ndarray]:
    return [np.random.default_rng(first_seed + i).beta(0.5, 5, n) for i in range(count)]


def windowed(kind: str, params: dict[str, Any], reference: ReferenceSnapshot) -> WindowDetector:
    det = build_detector(kind, params, reference=reference)
    assert isinstance(det, WindowDetector)
    return det


@pytest.mark.parametrize(("kind", "shifted_a"), [("psi", 0.65), ("ks", 0.6)])
def test_calibrated_window_threshold(kind: str, shifted_a: float, reference: ReferenceSnapshot) -> None:
    params = {"window": 1000}
    cal = calibrate(kind, params, score_streams(1, 10), target_false_alarms=0.0, reference=reference)
    assert cal.met and cal.false_alarms == 0.0 and cal.signal == "score"
    default = build_detector(kind, params, reference=reference).threshold
    assert 0 < cal.value < default  # more sensitive than the rule-of-thumb default (PSI 0.2, KS 0.1)
    fresh = windowed(kind, cal.params(), reference)
    alarms = sum(fresh.update_many(w) == Level.DRIFT for w in np.split(score_streams(500, 1, 20_000)[0], 20))
    assert alarms <= 1  # a fresh 20 windows: at most one over the largest of 100 null windows x 1.1
    shifted = windowed(kind, cal.params(), reference)
    window = np.random.default_rng(7).beta(shifted_a, 5, 1000)  # a mild shift that the default would not see
    assert shifted.update_many(window) == Level.DRIFT
    assert windowed(kind, params, reference).update_many(window) != Level.DRIFT


def test_window_threshold_allows_the_target_count(reference: ReferenceSnapshot) -> None:
    streams = score_streams(1, 10)
    strict = calibrate("ks", {"window": 1000}, streams, target_false_alarms=0.0, reference=reference, safety=1.0)
    loose = calibrate("ks", {"window": 1000}, streams, target_false_alarms=0.5, reference=reference, safety=1.0)
    assert loose.value < strict.value
    assert loose.false_alarms * loose.streams == 5  # the 5 largest of the windows' statistics fire, the 6th not
    with pytest.raises(ValueError, match="full window"):
        calibrate("psi", {"window": 1000}, [np.zeros(10)], target_false_alarms=0.1, reference=reference)


# --------------------------------------------------------------------------- feature alpha


def row_streams(first_seed: int, count: int, n: int = 2000) -> list[np.ndarray]:
    return [np.random.default_rng(first_seed + i).normal(size=(n, 5)) for i in range(count)]


def test_feature_alpha_verified_and_picked(reference: ReferenceSnapshot) -> None:
    params = {"window": 500, "alpha": 0.01}
    verified = calibrate_features(params, row_streams(1, 10), reference=reference)
    assert verified.value == 0.01 and verified.met
    assert verified.target == pytest.approx(0.01 * 4)  # the Bonferroni bound: alpha x 4 windows a stream
    picked = calibrate_features(params, row_streams(1, 10), reference=reference, target_false_alarms=0.0)
    assert picked.met and picked.false_alarms == 0.0 and 0 < picked.value <= 0.25
    fd = FeatureDrift(reference, **picked.params())
    fresh = [fd.update_rows(w) for s in row_streams(100, 10) for w in np.split(s, 4)]
    assert len(fresh) == 40 and fresh.count(Level.DRIFT) <= 1
    X = row_streams(200, 1, 500)[0]
    X[:, 2] += 0.3
    fd.reset()
    assert fd.update_rows(X) == Level.DRIFT and fd.drifted == ["f2"]
