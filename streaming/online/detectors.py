"""Drift detectors in three layers, behind one small protocol, and the reference snapshot they compare with.

Every detector is pure (no I/O) and is fed one sample at a time; :meth:`Detector.update` returns a
:class:`Level` (``OK``, ``WARNING``, ``DRIFT``). The monitor (:mod:`streaming.online.monitor`) owns the
state machine; a detector only says what the data says now.

**Concept drift on the labelled error** (``signal="error"``: ``|label - score|``, one value per joined
label), River's detectors:

* ``adwin``: :class:`river.drift.ADWIN` on the error. DRIFT when ADWIN cuts its window. ``statistic`` is
  ADWIN's estimate of the mean error; ``threshold`` is ``delta`` (its confidence; smaller is less
  sensitive). This is the one detector whose threshold is not in the statistic's units: ADWIN's cut
  bound depends on the two sub-windows it compares, not on one number.
* ``ddm``: :class:`river.drift.binary.DDM` on the *binary* error ``value >= 0.5`` (a score on the wrong
  side of 0.5). WARNING and DRIFT are River's ``warning_detected`` and ``drift_detected``. ``statistic`` is
  ``(p + s - p_min) / s_min``, how many minimum standard deviations the error rate ``p`` (plus its standard
  deviation ``s``) lies above its minimum; WARNING above ``warning_threshold`` (2), DRIFT above
  ``threshold == drift_threshold`` (3). One deliberate change: the error rate is estimated with ``prior``
  pseudo-errors and pseudo-successes (``(errors + prior) / (n + 2 prior)``, default ``prior=1``, Laplace).
  With River's raw estimate (``prior=0``: River's class as is) an error-free warm-up gives ``s_min = 0``
  and then the first error is a DRIFT, a false alarm at the low error rates of fraud scoring.
* ``hddm_w``: :class:`river.drift.binary.HDDMW` on the error clipped to [0, 1] (it needs bounded values,
  not binary ones). ``statistic`` is the evidence of an increase of the weighted mean, in decades:
  ``2 d^2 / (ibc_1 + ibc_2) / ln 10`` for the increase ``d`` between its two weighted samples (McDiarmid),
  so that DRIFT is ``statistic > threshold == -log10(drift_confidence)`` and WARNING is ``statistic >
  -log10(warning_confidence)``.
* ``page_hinkley``: :class:`river.drift.PageHinkley`. ``statistic`` is its cumulative deviation test value
  (the larger of the two directions its ``mode`` tests), DRIFT when it exceeds ``threshold``. Its ``mode``
  defaults to ``"up"`` on the error (a lower error is no reason to retrain) and ``"both"`` on other signals;
  it also runs on the score, with no reference needed.

River detectors say DRIFT on the one sample where they detect the change and then start over (River resets
them on the next update); WARNING lasts while they are in their warning zone. A NaN sample is ignored.

**Label-free prediction drift** (``signal="score"`` on every scored event, or ``"feature:<name>"``):
``psi`` and ``ks`` fill a tumbling window of ``window`` values (default 1000) and, when it is full, compare
it with the reference sample of the signal: the population stability index over the reference's quantile
bins (``bins``, default 10; proportions floored at ``epsilon``, default 1e-4), or the two-sample
Kolmogorov-Smirnov distance ``D``. DRIFT when the statistic is at least ``threshold`` (PSI 0.2, KS 0.1),
WARNING when at least ``warning`` (default half the threshold), else OK; between windows the level stays
what the last full window said (``statistic`` too). They need a :class:`ReferenceSnapshot`.

**Feature drift** (:class:`FeatureDrift`, one served vector per update): per full window a KS test per
feature against the reference sample, with Bonferroni's correction: each p-value times the number of
features (capped at 1). DRIFT when any corrected p-value is below ``alpha`` (so a stationary window raises a
false DRIFT with probability at most ``alpha``), WARNING when the smallest lies in ``[alpha, 2 alpha)``.
``drifted`` names the features whose corrected p-value is below ``alpha``; ``statistic`` is ``-log10`` of the
smallest corrected p-value and ``threshold`` is ``-log10(alpha)``. Build it directly (not by
:func:`build_detector`): its sample is a vector, ``update_row`` (or ``update``) takes one.

**Statistic and threshold.** For the gauges every detector exposes ``statistic`` and ``threshold`` with
higher meaning worse and DRIFT at (or just above) ``threshold``, in the same units, ADWIN excepted (above).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = build_detector("adwin", {"delta": 0.002})
>>> levels = [det.update(float(e)) for e in np.r_[rng.random(2000) < 0.05, rng.random(2000) < 0.5]]
>>> Level.DRIFT in levels[:2000], Level.DRIFT in levels[2000:]
(False, True)
>>> ref = ReferenceSnapshot.from_arrays(rng.normal(size=(5000, 2)), rng.beta(0.5, 5, 5000), ["a", "b"])
>>> shift = build_detector("psi", {"window": 500}, reference=ref, signal="score")
>>> shift.update_many(rng.beta(2, 2, 500)), shift.statistic > shift.threshold
(<Level.DRIFT: 2>, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import orjson

__all__ = [
    "KINDS",
    "ADWINDetector",
    "DDMDetector",
    "Detector",
    "FeatureDrift",
    "HDDMWDetector",
    "KSDetector",
    "Level",
    "PSIDetector",
    "PageHinkleyDetector",
    "ReferenceSnapshot",
    "WindowDetector",
    "build_detector",
    "ks_pvalue",
    "ks_statistic",
    "psi",
]

#: the scalar detector kinds :func:`build_detector` knows
KINDS = ("adwin", "ddm", "hddm_w", "page_hinkley", "psi", "ks")


class Level(IntEnum):
    """What a detector says about the latest sample (also the ``streaming_drift_state`` gauge's values)."""

    OK = 0
    WARNING = 1
    DRIFT = 2


@runtime_checkable
class Detector(Protocol):
    """One scalar signal in, a :class:`Level` out; the statistic and the threshold for a gauge."""

    kind: str

    def update(self, value: float) -> Level: ...

    @property
    def statistic(self) -> float: ...

    @property
    def threshold(self) -> float: ...

    def reset(self) -> None: ...


# --------------------------------------------------------------------------- reference snapshot


@dataclass(frozen=True, eq=False)
class ReferenceSnapshot:
    """What the model saw at training time: a seeded sample of its features and scores.

    Stored with the model version (``reference.json`` next to ``model.onnx``). ``features`` holds one
    column per name (rows are the same sampled rows as ``scores``); ``score_edges`` are the quantile bin
    edges (``bins + 1`` of them, from minimum to maximum) of all the training scores; ``rows`` is how many
    rows the sample was drawn from. Missing values are NaN (``null`` in JSON).

    >>> import numpy as np
    >>> snap = ReferenceSnapshot.from_arrays(np.arange(20.0).reshape(10, 2), np.linspace(0, 1, 10), ["a", "b"],
    ...                                      sample=4, seed=1)
    >>> snap.features.shape, snap.rows, len(snap.score_edges)
    ((4, 2), 10, 11)
    >>> ReferenceSnapshot.from_json(snap.to_json()) == snap
    True
    """

    names: tuple[str, ...]
    features: np.ndarray
    scores: np.ndarray
    score_edges: np.ndarray
    rows: int
    seed: int = 0

    FORMAT: ClassVar[int] = 1

    def __post_init__(self) -> None:
        features = np.array(self.features, dtype=np.float64, copy=True)
        scores = np.array(self.scores, dtype=np.float64, copy=True).reshape(-1)
        edges = np.array(self.score_edges, dtype=np.float64, copy=True).reshape(-1)
        if features.size == 0:
            features = features.reshape(scores.shape[0], len(self.names))
        if features.ndim != 2 or features.shape != (scores.shape[0], len(self.names)):
            raise ValueError(f"features must be (rows, {len(self.names)}) with one row per score, got {features.shape}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")
        for arr in (features, scores, edges):
            arr.flags.writeable = False
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "score_edges", edges)

    @classmethod
    def from_arrays(cls, X: np.ndarray, scores: np.ndarray, names: Sequence[str], *, sample: int = 5000,
                    seed: int = 0, bins: int = 10) -> ReferenceSnapshot:
        """Sample at most ``sample`` rows (seeded, without replacement) of ``X`` and their ``scores``."""
        X = np.asarray(X, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if X.ndim != 2 or X.shape[0] != scores.shape[0] or X.shape[1] != len(names):
            raise ValueError(f"X must be (rows, {len(names)}) with one score per row; got X {X.shape}, "
                             f"scores {scores.shape}")
        if X.shape[0] == 0 or sample < 1:
            raise ValueError("a reference snapshot needs at least one row")
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(X.shape[0], size=min(sample, X.shape[0]), replace=False))
        return cls(tuple(names), X[idx], scores[idx], _quantile_edges(scores, bins), int(X.shape[0]), int(seed))

    def column(self, name: str) -> np.ndarray:
        """The sampled values of one feature."""
        try:
            return self.features[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"feature {name!r} is not in the reference snapshot") from None

    def sample_for(self, signal: str) -> np.ndarray:
        """The reference sample of a signal: ``"score"`` or ``"feature:<name>"``."""
        if signal == "score":
            return self.scores
        if signal.startswith("feature:"):
            return self.column(signal.removeprefix("feature:"))
        raise ValueError(f"the reference snapshot has no sample of signal {signal!r} (use 'score' or 'feature:<name>')")

    def edges_for(self, signal: str, bins: int) -> np.ndarray:
        """Quantile bin edges (``bins + 1``) of a signal: the stored score edges when they fit, else the sample's."""
        if signal == "score" and len(self.score_edges) == bins + 1:
            return self.score_edges
        return _quantile_edges(self.sample_for(signal), bins)

    def to_json(self) -> dict[str, Any]:
        """Plain lists (NaN stays a float; orjson writes it as ``null``)."""
        return {
            "format": self.FORMAT,
            "names": list(self.names),
            "rows": self.rows,
            "seed": self.seed,
            "scores": self.scores.tolist(),
            "score_edges": self.score_edges.tolist(),
            "features": self.features.T.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceSnapshot:
        if data.get("format") != cls.FORMAT:
            raise ValueError(f"unknown reference snapshot format {data.get('format')!r}")
        names = tuple(data["names"])
        scores = np.asarray(data["scores"], dtype=np.float64)  # None (JSON null) becomes NaN
        features = np.asarray(data["features"], dtype=np.float64).reshape(len(names), scores.shape[0]).T
        return cls(names, features, scores, np.asarray(data["score_edges"], dtype=np.float64),
                   int(data["rows"]), int(data.get("seed", 0)))

    def save(self, path: Path) -> None:
        """Write it as JSON (to a temporary file first, then renamed: readers never see half a file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(orjson.dumps(self.to_json()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ReferenceSnapshot:
        return cls.from_json(orjson.loads(Path(path).read_bytes()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReferenceSnapshot):
            return NotImplemented
        return (self.names == other.names and self.rows == other.rows and self.seed == other.seed
                and all(np.array_equal(a, b, equal_nan=True) for a, b in
                        ((self.features, other.features), (self.scores, other.scores),
                         (self.score_edges, other.score_edges))))

    __hash__ = None  # type: ignore[assignment]


def _quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    if bins < 1:
        raise ValueError("bins must be at least 1")
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return np.zeros(bins + 1)
    return np.quantile(v, np.linspace(0.0, 1.0, bins + 1))


# --------------------------------------------------------------------------- statistics


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index of two vectors of bin proportions, each floored at ``epsilon``.

    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 4)
    0.8789
    """
    e = np.maximum(expected, epsilon)
    a = np.maximum(actual, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance ``sup |F_ref - F_sample|`` (``reference_sorted`` is sorted).

    >>> ks_statistic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0]))
    0.5
    """
    b = np.sort(np.asarray(sample, dtype=np.float64))
    if reference_sorted.size == 0 or b.size == 0:
        return 0.0
    pooled = np.concatenate([reference_sorted, b])
    f_ref = np.searchsorted(reference_sorted, pooled, side="right") / reference_sorted.size
    f_b = np.searchsorted(b, pooled, side="right") / b.size
    return float(np.max(np.abs(f_ref - f_b)))


def _kolmogorov_sf_series(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution, from its two standard series."""
    if x <= 0.0:
        return 1.0
    if x < 1.0:  # P(K <= x) = sqrt(2 pi) / x * sum_k exp(-(2k - 1)^2 pi^2 / (8 x^2)): fast for small x
        c = -(math.pi**2) / (8.0 * x * x)
        total = 0.0
        for k in range(1, 50):
            term = math.exp(c * (2 * k - 1) ** 2)
            total += term
            if term < 1e-18:
                break
        return min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / x * total))
    total = 0.0  # P(K > x) = 2 sum_k (-1)^(k-1) exp(-2 k^2 x^2): fast for large x
    for k in range(1, 50):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-18:
            break
    return min(1.0, max(0.0, 2.0 * total))


def _kolmogorov_sf(x: float) -> float:
    try:
        from scipy.special import kolmogorov
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return _kolmogorov_sf_series(x)
    return float(kolmogorov(x))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS distance ``d`` between samples of sizes ``n`` and ``m``.

    ``P(K > d * sqrt(n m / (n + m)))`` for the Kolmogorov distribution (scipy's when it is installed, else
    the series); slightly conservative for small or discrete samples.

    >>> f"{ks_pvalue(0.1, 1000, 5000):.2g}"
    '1.2e-07'
    """
    if n <= 0 or m <= 0:
        return 1.0
    return _kolmogorov_sf(d * math.sqrt(n * m / (n + m)))


# --------------------------------------------------------------------------- River detectors


class _RiverDetector:
    """A River detector behind the :class:`Detector` protocol."""

    kind: str = ""
    sensitivity: ClassVar[str] = ""  # the parameter that sets the sensitivity (what calibration searches)

    def __init__(self, params: Mapping[str, Any] | None = None, signal: str = "error") -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.signal = signal
        self.level = Level.OK
        self._det = self._make()

    def _make(self) -> Any:
        raise NotImplementedError

    def _feed(self, value: float) -> float:
        return value

    def update(self, value: float) -> Level:
        value = float(value)
        if math.isnan(value):
            return self.level
        self._det.update(self._feed(value))
        if self._det.drift_detected:
            self.level = Level.DRIFT
        elif getattr(self._det, "warning_detected", False):
            self.level = Level.WARNING
        else:
            self.level = Level.OK
        return self.level

    def reset(self) -> None:
        self._det = self._make()
        self.level = Level.OK

    @property
    def statistic(self) -> float:
        raise NotImplementedError

    @property
    def threshold(self) -> float:
        return float(getattr(self._det, self.sensitivity))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, signal={self.signal!r})"


class ADWINDetector(_RiverDetector):
    """``adwin``: ADWIN on the signal; statistic = its mean estimate, threshold = ``delta``."""

    kind = "adwin"
    sensitivity = "delta"

    def _make(self) -> Any:
        from river import drift

        return drift.ADWIN(**self.params)

    @property
    def statistic(self) -> float:
        return float(self._det.estimation)


@functools.cache
def _laplace_ddm_class() -> type:
    from river.drift import binary

    class LaplaceDDM(binary.DDM):
        """River's DDM with the error rate estimated as ``(errors + prior) / (n + 2 prior)``."""

        def __init__(self, prior: float = 1.0, **kw: Any) -> None:
            self.prior = prior
            super().__init__(**kw)

        def update(self, x: Any) -> None:
            if self.drift_detected:
                self._reset()
            self._p.update(x)
            n = self._p.n
            p_i = (self._p.get() * n + self.prior) / (n + 2 * self.prior)
            s_i = math.sqrt(p_i * (1 - p_i) / n)
            if n > self.warm_start:
                if p_i + s_i <= self._ps_min:
                    self._p_min, self._s_min, self._ps_min = p_i, s_i, p_i + s_i
                p_min, s_min = self._p_min, self._s_min
                assert p_min is not None and s_min is not None
                self._warning_detected = p_i + s_i > p_min + self.warning_threshold * s_min
                self._drift_detected = p_i + s_i > p_min + self.drift_threshold * s_min
                if self._drift_detected:
                    self._warning_detected = False

    return LaplaceDDM


class DDMDetector(_RiverDetector):
    """``ddm``: DDM on ``value >= 0.5``; statistic = ``(p + s - p_min) / s_min``, threshold = ``drift_threshold``."""

    kind = "ddm"
    sensitivity = "drift_threshold"

    def _make(self) -> Any:
        params = dict(self.params)
        self._prior = float(params.pop("prior", 1.0))
        if self._prior < 0:
            raise ValueError("ddm prior must be >= 0")
        if self._prior == 0:
            from river.drift import binary

            return binary.DDM(**params)
        return _laplace_ddm_class()(self._prior, **params)

    def _feed(self, value: float) -> float:
        return 1.0 if value >= 0.5 else 0.0

    @property
    def statistic(self) -> float:
        det = self._det
        n = det._p.n
        if n <= det.warm_start or det._p_min is None:
            return 0.0
        p = (det._p.get() * n + self._prior) / (n + 2 * self._prior)
        s = math.sqrt(p * (1 - p) / n)
        if det._s_min <= 0:
            return 0.0 if p + s <= det._p_min else math.inf
        return float((p + s - det._p_min) / det._s_min)


class HDDMWDetector(_RiverDetector):
    """``hddm_w``: HDDM_W on the signal clipped to [0, 1]; statistic and threshold in decades of confidence."""

    kind = "hddm_w"
    sensitivity = "drift_confidence"

    def _make(self) -> Any:
        from river.drift import binary

        return binary.HDDMW(**self.params)

    def _feed(self, value: float) -> float:
        return min(1.0, max(0.0, value))

    @staticmethod
    def _evidence(before: Any, after: Any) -> float:
        if not (before._is_init and after._is_init):
            return 0.0
        d = after.ewma - before.ewma
        return 2.0 * d * d / (before.ibc + after.ibc) / math.log(10.0) if d > 0 else 0.0

    @property
    def statistic(self) -> float:
        det = self._det
        stat = self._evidence(det._s1_incr, det._s2_incr)
        if det.two_sided_test:
            stat = max(stat, self._evidence(det._s2_decr, det._s1_decr))
        return stat

    @property
    def threshold(self) -> float:
        return -math.log10(self._det.drift_confidence)


class PageHinkleyDetector(_RiverDetector):
    """``page_hinkley``: Page-Hinkley; statistic = its test value in the tested direction(s), threshold = ``threshold``."""

    kind = "page_hinkley"
    sensitivity = "threshold"

    def _make(self) -> Any:
        from river import drift

        params = dict(self.params)
        params.setdefault("mode", "up" if self.signal == "error" else "both")
        return drift.PageHinkley(**params)

    @property
    def statistic(self) -> float:
        det = self._det
        if det._x_mean.n == 0:
            return 0.0
        up = det._sum_increase - det._min_increase
        down = det._max_decrease - det._sum_decrease
        if det.mode == "up":
            return float(up)
        if det.mode == "down":
            return float(down)
        return float(max(up, down))


# --------------------------------------------------------------------------- windowed (label-free) detectors


def _fill(det: Any, arr: np.ndarray) -> None:
    """Copy ``arr`` (samples or rows) into ``det``'s tumbling window, testing the window each time it fills."""
    i = 0
    while i < len(arr):
        take = min(det.window - det._n, len(arr) - i)
        det._buf[det._n:det._n + take] = arr[i:i + take]
        det._n += take
        i += take
        if det._n == det.window:
            det._close()


class WindowDetector:
    """A tumbling window of the signal compared, when full, with the reference sample."""

    kind: str = ""
    sensitivity: ClassVar[str] = "threshold"
    default_threshold: ClassVar[float] = 0.0

    def __init__(self, params: Mapping[str, Any] | None, reference: ReferenceSnapshot, signal: str = "score") -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.signal = signal
        p = dict(self.params)
        self.window = int(p.pop("window", 1000))
        self._threshold = float(p.pop("threshold", self.default_threshold))
        self.warning = float(p.pop("warning", 0.5 * self._threshold))
        if self.window < 2 or self._threshold <= 0 or self.warning > self._threshold:
            raise ValueError(f"{self.kind}: need window >= 2, threshold > 0 and warning <= threshold; got {self.params}")
        ref = np.asarray(reference.sample_for(signal), dtype=np.float64)
        self._reference = np.sort(ref[~np.isnan(ref)])
        if self._reference.size == 0:
            raise ValueError(f"{self.kind}: the reference sample of {signal!r} is empty")
        self._configure(p, reference)
        if p:
            raise ValueError(f"{self.kind}: unknown parameters {sorted(p)}")
        self._buf = np.empty(self.window)
        self.reset()

    def _configure(self, params: dict[str, Any], reference: ReferenceSnapshot) -> None:
        """Take the kind's own parameters out of ``params``."""

    def window_statistic(self, values: np.ndarray) -> float:
        """The statistic of one window of values against the reference."""
        raise NotImplementedError

    def level_of(self, statistic: float) -> Level:
        if statistic >= self._threshold:
            return Level.DRIFT
        if statistic >= self.warning:
            return Level.WARNING
        return Level.OK

    def reset(self) -> None:
        self._n = 0
        self._statistic = 0.0
        self.level = Level.OK
        self.windows = 0  # full windows tested since the last reset

    def update(self, value: float) -> Level:
        value = float(value)
        if math.isnan(value):
            return self.level
        self._buf[self._n] = value
        self._n += 1
        if self._n == self.window:
            self._close()
        return self.level

    def update_many(self, values: Sequence[float] | np.ndarray) -> Level:
        """Feed a batch (same result as one :meth:`update` per value); the level after the last."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        _fill(self, arr[~np.isnan(arr)])
        return self.level

    def _close(self) -> None:
        self._statistic = self.window_statistic(self._buf)
        self.level = self.level_of(self._statistic)
        self._n = 0
        self.windows += 1

    @property
    def statistic(self) -> float:
        """The last full window's statistic (0 before the first)."""
        return self._statistic

    @property
    def remaining(self) -> int:
        """Samples until the current window is full and tested."""
        return self.window - self._n

    @property
    def threshold(self) -> float:
        return self._threshold

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, signal={self.signal!r})"


class PSIDetector(WindowDetector):
    """``psi``: population stability index over ``bins`` bins (``epsilon`` for empty ones).

    ``binning``: ``uniform`` (equal-width bins over [0, 1], the default for the score, a probability) or
    ``quantile`` (the reference's quantiles). A good classifier's scores crowd near 0: quantile bins are
    then slivers of that crowd, and PSI over them reacts to movements inside it that change no decision
    (measured: 1.09 on the fraud generator's own stationary traffic against the model's training rows,
    with the windows of a cold feature store); equal-width bins weigh where the mass sits on the scale
    that decisions are made on.
    """

    kind = "psi"
    default_threshold = 0.2

    def _configure(self, params: dict[str, Any], reference: ReferenceSnapshot) -> None:
        self.bins = int(params.pop("bins", 10))
        self.epsilon = float(params.pop("epsilon", 1e-4))
        self.binning = str(params.pop("binning", "uniform" if self.signal == "score" else "quantile"))
        if self.binning == "uniform":
            self._inner = np.linspace(0.0, 1.0, self.bins + 1)[1:-1]
        elif self.binning == "quantile":
            self._inner = np.unique(reference.edges_for(self.signal, self.bins)[1:-1])
        else:
            raise ValueError(f"psi: binning must be uniform or quantile, got {self.binning!r}")
        self._expected = self._proportions(self._reference)

    def _proportions(self, values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self._inner, values, side="right")
        return np.bincount(idx, minlength=self._inner.size + 1) / max(values.size, 1)

    def window_statistic(self, values: np.ndarray) -> float:
        return psi(self._expected, self._proportions(np.asarray(values, dtype=np.float64)), self.epsilon)


class KSDetector(WindowDetector):
    """``ks``: two-sample Kolmogorov-Smirnov distance ``D`` between the window and the reference sample."""

    kind = "ks"
    default_threshold = 0.1

    def window_statistic(self, values: np.ndarray) -> float:
        return ks_statistic(self._reference, values)

    @property
    def p_value(self) -> float:
        """The asymptotic p-value of the last full window's ``D`` (1 before the first)."""
        return ks_pvalue(self._statistic, self.window, self._reference.size) if self.windows else 1.0


# --------------------------------------------------------------------------- feature drift


class FeatureDrift:
    """KS test per feature per tumbling window of served vectors, Bonferroni-corrected.

    ``names`` is the layout of the served vectors (each name must be in the reference; empty means the
    reference's own layout). ``p_values`` maps each feature to its corrected p-value
    (``min(1, p * n_features)``) of the last full window and ``d_values`` to its KS distance; ``drifted``
    lists the features with a corrected p-value below ``alpha``, most significant first. ``statistic`` is
    ``-log10`` of the smallest corrected p-value (0 before the first window; at most 300) and
    ``threshold`` is ``-log10(alpha)``: DRIFT when the statistic exceeds the threshold. Missing values
    (NaN) are left out of the test (a missing-rate change is not a KS question).

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> ref = ReferenceSnapshot.from_arrays(rng.normal(size=(5000, 3)), rng.random(5000), ["a", "b", "c"])
    >>> fd = FeatureDrift(ref, window=500)
    >>> X = rng.normal(size=(500, 3)); X[:, 1] += 0.5
    >>> fd.update_rows(X), fd.drifted
    (<Level.DRIFT: 2>, ['b'])
    """

    kind: str = "feature_ks"
    sensitivity: ClassVar[str] = "alpha"
    TESTS: ClassVar[tuple[str, ...]] = ("ks",)

    def __init__(self, reference: ReferenceSnapshot, names: Sequence[str] | None = None, window: int = 1000,
                 alpha: float = 0.01, test: str = "ks") -> None:
        self.names = list(names) if names else list(reference.names)
        missing = [n for n in self.names if n not in reference.names]
        if missing:
            raise ValueError(f"features not in the reference snapshot: {missing}")
        if test not in self.TESTS:
            raise ValueError(f"unknown feature drift test {test!r}; known: {self.TESTS}")
        if window < 2 or not 0 < alpha < 0.5:
            raise ValueError(f"need window >= 2 and 0 < alpha < 0.5; got window={window}, alpha={alpha}")
        self.window = int(window)
        self.alpha = float(alpha)
        self.test = test
        self.params: dict[str, Any] = {"window": self.window, "alpha": self.alpha, "test": test}
        self._reference = []
        for name in self.names:
            col = reference.column(name)
            self._reference.append(np.sort(col[~np.isnan(col)]))
        self._buf = np.empty((self.window, len(self.names)))
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self.level = Level.OK
        self.windows = 0
        self.p_values: dict[str, float] = {}
        self.d_values: dict[str, float] = {}
        self.drifted: list[str] = []
        self._min_p = 1.0

    def update_row(self, x: Sequence[float] | np.ndarray) -> Level:
        """Feed one served vector (in ``names`` order); the level of the last full window."""
        row = np.asarray(x, dtype=np.float64).reshape(-1)
        if row.size != len(self.names):
            raise ValueError(f"expected {len(self.names)} features, got {row.size}")
        self._buf[self._n] = row
        self._n += 1
        if self._n == self.window:
            self._close()
        return self.level

    def update_rows(self, X: np.ndarray | Sequence[Sequence[float]]) -> Level:
        """Feed a batch of vectors (same result as one :meth:`update_row` each)."""
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.names):
            raise ValueError(f"expected rows of {len(self.names)} features, got shape {arr.shape}")
        _fill(self, arr)
        return self.level

    def update(self, value: Sequence[float] | np.ndarray) -> Level:
        """The protocol's update: here one sample is one served vector."""
        return self.update_row(value)

    @property
    def remaining(self) -> int:
        """Vectors until the current window is full and tested."""
        return self.window - self._n

    def window_tests(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """KS distances and Bonferroni-corrected p-values of one window (rows x features) against the reference."""
        k = len(self.names)
        d = np.zeros(k)
        p = np.ones(k)
        for j in range(k):
            col = block[:, j]
            col = col[~np.isnan(col)]
            d[j] = ks_statistic(self._reference[j], col)
            p[j] = ks_pvalue(d[j], col.size, self._reference[j].size)
        return d, np.minimum(1.0, p * k)

    def level_of(self, min_corrected_p: float) -> Level:
        if min_corrected_p < self.alpha:
            return Level.DRIFT
        if min_corrected_p < 2 * self.alpha:
            return Level.WARNING
        return Level.OK

    def _close(self) -> None:
        d, p = self.window_tests(self._buf)
        self.d_values = dict(zip(self.names, d.tolist(), strict=True))
        self.p_values = dict(zip(self.names, p.tolist(), strict=True))
        order = np.argsort(p, kind="stable")
        self.drifted = [self.names[j] for j in order if p[j] < self.alpha]
        self._min_p = float(p.min()) if p.size else 1.0
        self.level = self.level_of(self._min_p)
        self._n = 0
        self.windows += 1

    @property
    def statistic(self) -> float:
        return min(300.0, -math.log10(max(self._min_p, 1e-300)))

    @property
    def threshold(self) -> float:
        return -math.log10(self.alpha)

    def __repr__(self) -> str:
        return f"FeatureDrift({len(self.names)} features, window={self.window}, alpha={self.alpha})"


# --------------------------------------------------------------------------- construction

_RIVER: dict[str, type[_RiverDetector]] = {
    "adwin": ADWINDetector, "ddm": DDMDetector, "hddm_w": HDDMWDetector, "page_hinkley": PageHinkleyDetector,
}
_WINDOWED: dict[str, type[WindowDetector]] = {"psi": PSIDetector, "ks": KSDetector}


def build_detector(kind: str, params: Mapping[str, Any] | None = None, reference: ReferenceSnapshot | None = None,
                   signal: str | None = None) -> Detector:
    """A fresh detector of ``kind`` (:data:`KINDS`) with ``params`` on ``signal``.

    ``signal`` defaults to ``"score"`` for ``psi``/``ks`` (which need ``reference``) and ``"error"``
    otherwise. Unknown parameters raise (River's ``TypeError`` or a ``ValueError``).
    """
    if kind in _RIVER:
        return _RIVER[kind](params, signal or "error")
    if kind in _WINDOWED:
        signal = signal or "score"
        if reference is None:
            raise ValueError(f"detector {kind!r} compares with the model's reference snapshot; none given")
        if signal != "score" and not signal.startswith("feature:"):
            raise ValueError(f"detector {kind!r} needs a reference sample of its signal: 'score' or "
                             f"'feature:<name>', not {signal!r}")
        return _WINDOWED[kind](params, reference, signal)
    raise ValueError(f"unknown detector {kind!r}; known: {', '.join(KINDS)} (feature drift: FeatureDrift)")
