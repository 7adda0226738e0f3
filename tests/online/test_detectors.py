"""Drift detectors: each layer fires on a change, stays quiet without one, and the reference snapshot round-trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from streaming.online.detectors import (
    KINDS,
    Detector,
    FeatureDrift,
    KSDetector,
    Level,
    PSIDetector,
    ReferenceSnapshot,
    WindowDetector,
    _kolmogorov_sf_series,
    build_detector,
    ks_pvalue,
    ks_statistic,
)

# Error-rate detectors on a 5% error rate. DDM with River's default drift_threshold (3) raises about
# one false DRIFT per 4,000 samples at this rate (tests/online/test_calibrate.py calibrates it); 4.5 is
# what calibration picks for such streams.
ERROR_PARAMS: dict[str, dict[str, float]] = {
    "adwin": {},
    "ddm": {"drift_threshold": 4.5, "warning_threshold": 3.0},
    "hddm_w": {},
    "page_hinkley": {},
}
CHANGE = 2000
MAX_DELAY = 400  # samples after the change by which the error detectors must have fired


def bernoulli(seed: int, n: int = 4000, rates: tuple[float, float] = (0.05, 0.05), change: int = CHANGE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(n) < change, rates[0], rates[1])
    return (rng.random(n) < p).astype(float)


def replay(det: Detector, values: np.ndarray) -> list[Level]:
    return [det.update(v) for v in values.tolist()]


def windowed(kind: str, params: dict[str, float], reference: ReferenceSnapshot, signal: str = "score") -> WindowDetector:
    det = build_detector(kind, params, reference=reference, signal=signal)
    assert isinstance(det, WindowDetector)
    return det


def first(levels: list[Level], level: Level) -> int | None:
    return next((i for i, lv in enumerate(levels) if lv == level), None)


@pytest.mark.parametrize("kind", sorted(ERROR_PARAMS))
def test_error_detector_fires_on_a_step_and_not_before(kind: str) -> None:
    det = build_detector(kind, ERROR_PARAMS[kind], signal="error")
    assert isinstance(det, Detector) and det.kind == kind
    levels = replay(det, bernoulli(7, rates=(0.05, 0.4)))
    fired = first(levels, Level.DRIFT)
    assert fired is not None and CHANGE <= fired < CHANGE + MAX_DELAY, fired


@pytest.mark.parametrize("kind", sorted(ERROR_PARAMS))
def test_error_detector_stays_ok_without_change(kind: str) -> None:
    det = build_detector(kind, ERROR_PARAMS[kind], signal="error")
    levels = replay(det, bernoulli(7))
    assert Level.DRIFT not in levels
    assert math.isfinite(det.statistic) and math.isfinite(det.threshold)


@pytest.mark.parametrize("kind", ["ddm", "hddm_w", "page_hinkley"])
def test_statistic_crosses_threshold_exactly_when_drift(kind: str) -> None:
    """For these the statistic is in the threshold's units: above it on the DRIFT sample, not before."""
    det = build_detector(kind, ERROR_PARAMS[kind], signal="error")
    for i, v in enumerate(bernoulli(3, rates=(0.05, 0.5)).tolist()):
        level = det.update(v)
        if level == Level.DRIFT:
            assert det.statistic > det.threshold
            break
        assert det.statistic <= det.threshold, i
    else:
        pytest.fail("no drift")


@pytest.mark.parametrize("kind", ["ddm", "hddm_w"])
def test_warning_comes_before_drift_on_a_gradual_change(kind: str) -> None:
    rng = np.random.default_rng(11)
    rate = np.r_[np.full(CHANGE, 0.05), np.linspace(0.05, 0.4, 2000)]
    levels = replay(build_detector(kind, ERROR_PARAMS[kind]), (rng.random(rate.size) < rate).astype(float))
    warned, fired = first(levels, Level.WARNING), first(levels, Level.DRIFT)
    assert fired is not None and fired >= CHANGE
    assert warned is not None and warned < fired


def test_ddm_binarises_the_error_at_one_half() -> None:
    det = build_detector("ddm", {})
    assert Level.DRIFT not in replay(det, np.full(1000, 0.49))
    assert Level.DRIFT in replay(det, np.full(200, 0.5))


def test_ddm_prior_keeps_an_error_free_warm_up_from_alarming_on_the_first_error() -> None:
    stream = np.r_[np.zeros(500), 1.0, np.zeros(500)]
    assert Level.DRIFT in replay(build_detector("ddm", {"prior": 0}), stream)  # River's DDM as is
    assert Level.DRIFT not in replay(build_detector("ddm", {}), stream)
    # ... and still sees a real jump from no errors to many
    assert Level.DRIFT in replay(build_detector("ddm", {}), np.r_[np.zeros(500), bernoulli(1, 300, (0.4, 0.4))])


def test_page_hinkley_mode_follows_the_signal() -> None:
    down = np.r_[np.full(1000, 0.8), np.full(1000, 0.1)]
    assert Level.DRIFT not in replay(build_detector("page_hinkley", {}, signal="error"), down)  # "up"
    assert Level.DRIFT in replay(build_detector("page_hinkley", {}, signal="score"), down)  # "both"


def test_reset_starts_over() -> None:
    det = build_detector("adwin", {})
    replay(det, np.ones(100))
    assert det.statistic == 1.0
    det.reset()
    assert det.statistic == 0.0


def test_unknown_kind_and_missing_reference_raise() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("cusum", {})
    with pytest.raises(ValueError, match="reference"):
        build_detector("psi", {})
    assert set(KINDS) == {"adwin", "ddm", "hddm_w", "page_hinkley", "psi", "ks"}


# --------------------------------------------------------------------------- PSI / KS on the score


@pytest.fixture(scope="module")
def score_reference() -> ReferenceSnapshot:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 2))
    return ReferenceSnapshot.from_arrays(X, rng.beta(0.5, 5, 20_000), ["x0", "x1"], sample=5000, seed=0)


@pytest.mark.parametrize("kind", ["psi", "ks"])
def test_window_detector_fires_on_shifted_scores(kind: str, score_reference: ReferenceSnapshot) -> None:
    det = build_detector(kind, {"window": 1000}, reference=score_reference, signal="score")
    rng = np.random.default_rng(1)
    levels = replay(det, rng.beta(2, 2, 1000))
    assert levels[:-1] == [Level.OK] * 999  # nothing is said before the window is full
    assert levels[-1] == Level.DRIFT and det.statistic >= det.threshold
    assert replay(det, rng.beta(0.5, 5, 10)) == [Level.DRIFT] * 10  # the level holds between windows


@pytest.mark.parametrize("kind", ["psi", "ks"])
def test_window_detector_quiet_on_a_fresh_reference_sample(kind: str, score_reference: ReferenceSnapshot) -> None:
    det = windowed(kind, {"window": 1000}, score_reference)
    rng = np.random.default_rng(2)
    for _ in range(10):
        assert det.update_many(rng.beta(0.5, 5, 1000)) == Level.OK
        assert 0 < det.statistic < det.threshold / 2
    assert isinstance(det, PSIDetector | KSDetector) and det.windows == 10


def test_window_warning_band(score_reference: ReferenceSnapshot) -> None:
    det = windowed("ks", {"window": 1000, "threshold": 0.5, "warning": 0.05}, score_reference)
    assert det.update_many(np.random.default_rng(3).beta(0.6, 5, 1000)) == Level.WARNING


def test_update_many_equals_update(score_reference: ReferenceSnapshot) -> None:
    values = np.random.default_rng(4).beta(1, 3, 2500)
    one = windowed("psi", {"window": 1000}, score_reference)
    many = windowed("psi", {"window": 1000}, score_reference)
    replay(one, values)
    many.update_many(values[:700])
    many.update_many(values[700:])
    assert one.statistic == many.statistic and one.windows == many.windows == 2


def test_window_detector_on_a_feature(score_reference: ReferenceSnapshot) -> None:
    det = build_detector("ks", {"window": 500}, reference=score_reference, signal="feature:x1")
    assert isinstance(det, KSDetector)
    assert det.update_many(np.random.default_rng(5).normal(0.5, 1, 500)) == Level.DRIFT
    assert det.p_value < 1e-6
    with pytest.raises(ValueError, match="feature:<name>"):
        build_detector("ks", {}, reference=score_reference, signal="error")
    with pytest.raises(ValueError, match="unknown parameters"):
        build_detector("ks", {"bins": 3}, reference=score_reference)


def test_ks_statistic_and_pvalue_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=3000), rng.normal(0.05, 1, 800)
    a[:100] = b[:100] = 0.0  # ties
    assert ks_statistic(np.sort(a), b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    for x in (0.05, 0.3, 0.8, 0.99, 1.0, 1.3, 2.5, 5.0):
        assert _kolmogorov_sf_series(x) == pytest.approx(float(special.kolmogorov(x)), rel=1e-9, abs=1e-15)
    assert ks_pvalue(0.0, 10, 10) == 1.0 and ks_pvalue(0.5, 0, 10) == 1.0


# --------------------------------------------------------------------------- feature drift


NAMES = [f"f{i}" for i in range(20)]


@pytest.fixture(scope="module")
def feature_reference() -> ReferenceSnapshot:
    rng = np.random.default_rng(10)
    X = rng.normal(size=(20_000, 20))
    X[:, 3] = rng.integers(0, 5, 20_000)  # a discrete feature (ties)
    return ReferenceSnapshot.from_arrays(X, rng.random(20_000), NAMES, sample=5000, seed=3)


def fresh_rows(seed: int, n: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 20))
    X[:, 3] = rng.integers(0, 5, n)
    return X


def test_feature_drift_names_the_one_shifted_feature(feature_reference: ReferenceSnapshot) -> None:
    fd = FeatureDrift(feature_reference, NAMES, window=1000, alpha=0.01)
    X = fresh_rows(100)
    X[:, 7] += 0.3
    assert [fd.update_row(x) for x in X[:-1]] == [Level.OK] * 999
    assert fd.update_row(X[-1]) == Level.DRIFT
    assert fd.drifted == ["f7"]
    assert fd.p_values["f7"] < 0.01 and all(p >= 0.01 for n, p in fd.p_values.items() if n != "f7")
    assert fd.statistic > fd.threshold == pytest.approx(2.0)


def test_feature_drift_bonferroni_keeps_stationary_windows_ok(feature_reference: ReferenceSnapshot) -> None:
    fd = FeatureDrift(feature_reference, NAMES, window=1000, alpha=0.01)
    levels = [fd.update_rows(fresh_rows(200 + seed)) for seed in range(50)]
    assert fd.windows == 50
    assert levels.count(Level.OK) + levels.count(Level.WARNING) >= 49
    assert levels.count(Level.DRIFT) <= 1


def test_feature_drift_follows_the_served_layout(feature_reference: ReferenceSnapshot) -> None:
    served = ["f5", "f0", "f12"]  # a subset, in another order
    fd = FeatureDrift(feature_reference, served, window=500)
    X = fresh_rows(300, 500)[:, [5, 0, 12]]
    X[:, 2] += 0.5
    X[::10, 0] = np.nan  # missing values are left out
    assert fd.update(X[0]) == Level.OK  # the protocol's update takes a row here
    assert fd.update_rows(X[1:]) == Level.DRIFT and fd.drifted == ["f12"]
    with pytest.raises(ValueError, match="not in the reference"):
        FeatureDrift(feature_reference, ["nope"])
    with pytest.raises(ValueError, match="expected 3 features"):
        fd.update_row([1.0, 2.0])
    fd.reset()
    assert fd.level == Level.OK and fd.statistic == 0.0 and fd.drifted == []


# --------------------------------------------------------------------------- reference snapshot


def test_reference_snapshot_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    X = rng.normal(size=(300, 3))
    X[5, 1] = np.nan
    snap = ReferenceSnapshot.from_arrays(X, rng.random(300), ["a", "b", "c"], sample=1000, seed=4)
    assert snap.features.shape == (300, 3) and snap.rows == 300  # fewer rows than the sample size: all of them
    path = tmp_path / "reference.json"
    snap.save(path)
    loaded = ReferenceSnapshot.load(path)
    assert loaded == snap
    assert np.isnan(loaded.column("b")).sum() == 1
    data = orjson.loads(path.read_bytes())
    assert data["names"] == ["a", "b", "c"] and len(data["features"]) == 3 and len(data["score_edges"]) == 11


def test_reference_snapshot_sample_is_seeded_and_bounded() -> None:
    rng = np.random.default_rng(21)
    X, s = rng.normal(size=(10_000, 2)), rng.random(10_000)
    a = ReferenceSnapshot.from_arrays(X, s, ["a", "b"], sample=500, seed=1)
    b = ReferenceSnapshot.from_arrays(X, s, ["a", "b"], sample=500, seed=1)
    c = ReferenceSnapshot.from_arrays(X, s, ["a", "b"], sample=500, seed=2)
    assert a == b and a != c and a.scores.shape == (500,) and a.rows == 10_000
    rows = {tuple(r) for r in X.tolist()}
    assert all(tuple(r) in rows for r in a.features.tolist())  # real rows, not resampled values
    assert a.score_edges[0] == s.min() and a.score_edges[-1] == s.max()
    with pytest.raises(ValueError, match="one score per row"):
        ReferenceSnapshot.from_arrays(X, s[:10], ["a", "b"])
    with pytest.raises(ValueError, match="unknown reference snapshot format"):
        ReferenceSnapshot.from_json({"format": 99})
