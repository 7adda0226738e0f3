"""Online service-time model: per batch-size bucket, the mean and a p99 estimate of one batch's run time.

Each bucket keeps an EWMA of its run time, an EWMA of the absolute deviation
from it (a MAD), and its last ``window`` samples. Its p99 is the larger of the
window's empirical 99th percentile and ``mean + k_mad * mad``: the quantile
follows a skewed tail (a GC pause, a noisy neighbour), the MAD term keeps a
floor while the window is still short. Buckets with fewer than ``min_samples``
samples are predicted from a weighted least-squares line across the buckets
that have data, ``fixed_s + per_row_s * bucket``, times the typical p99/mean
ratio seen so far.

A machine's speed drifts (a noisy neighbour, the clock, the cache), and a
policy that settles on one bucket refreshes that bucket only: the others would
keep the timings of a faster or slower moment and look better or worse than
they are. So the model keeps a speed index, an EWMA of each batch's run time
over its bucket's reference (its mean when it first had ``min_samples``
samples), and scales a bucket's own estimate by how far the index moved since
that bucket was last observed. A bucket in use is predicted from its own
samples alone; one not run for a while follows the machine.

Pure Python; one instance per provider (a GPU and a CPU session cost
differently).

>>> m = ServiceModel((1, 2, 4, 8, 16), min_samples=3)
>>> for _ in range(20):
...     for b in (1, 4, 16):
...         m.observe(b, 0.002 + 0.0005 * b)
>>> round(m.fixed_s * 1e3, 3), round(m.per_row_s * 1e3, 3)
(2.0, 0.5)
>>> round(m.mean(8) * 1e3, 3)  # never observed: from the line
6.0
>>> m.p99(16) >= m.mean(16)
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from statistics import median

from streaming.inference.batching.buckets import check_buckets

__all__ = ["ServiceModel", "quantile"]


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; NaN when empty.

    >>> quantile([5, 1, 4, 2, 3], 0.5)
    3
    >>> quantile(list(range(1, 101)), 0.99)
    99
    >>> math.isnan(quantile([], 0.99))
    True
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q * len(ordered)), 1)
    return ordered[rank - 1]


class _Bucket:
    __slots__ = ("index_at", "mad", "mean", "n", "q99", "q99_new", "ref", "samples")

    def __init__(self, window: int) -> None:
        self.ref = 0.0  # the mean when the bucket first had min_samples samples (0 until then)
        self.index_at = 1.0  # the speed index when the bucket was last observed
        self.n = 0
        self.mean = 0.0
        self.mad = 0.0
        self.samples: deque[float] = deque(maxlen=window)
        self.q99: float | None = None  # cached window quantile; None = never computed
        self.q99_new = 0  # samples since it was


class ServiceModel:
    """Learns, online, how long one batch takes per bucket.

    Parameters
    ----------
    buckets
        The batch-size buckets (rows) the session runs.
    window
        Samples kept per bucket for the empirical p99.
    min_samples
        Samples a bucket needs before its own statistics are trusted over the line.
    alpha
        EWMA weight of a new sample (the first ``1/alpha`` samples are averaged plainly).
    k_mad
        The p99 is at least ``mean + k_mad * mad``.
    prior_fixed_s, prior_per_row_s
        The line before anything is observed.
    default_spread
        p99/mean - 1 assumed before any bucket has ``min_samples`` samples.
    speed_alpha
        EWMA weight of one batch in the speed index; 0 keeps the index at 1 (no drift correction).
    """

    def __init__(
        self,
        buckets: Sequence[int],
        *,
        window: int = 128,
        min_samples: int = 5,
        alpha: float = 0.05,
        k_mad: float = 3.0,
        prior_fixed_s: float = 1e-3,
        prior_per_row_s: float = 1e-4,
        default_spread: float = 0.5,
        speed_alpha: float = 0.05,
    ) -> None:
        if window < 1 or min_samples < 1 or not 0 < alpha <= 1 or k_mad < 0 or not 0 <= speed_alpha <= 1:
            raise ValueError("window and min_samples must be >= 1, 0 < alpha <= 1, k_mad >= 0, 0 <= speed_alpha <= 1")
        self.buckets = check_buckets(buckets)
        self.window = window
        self.min_samples = min_samples
        self.alpha = alpha
        self.k_mad = k_mad
        self.default_spread = default_spread
        self.speed_alpha = speed_alpha
        self.speed = 1.0  # the speed index: recent run time over the reference (1.1 = 10 % slower)
        self._stats = {b: _Bucket(window) for b in self.buckets}
        self._fixed = prior_fixed_s
        self._per_row = prior_per_row_s
        self._spread = default_spread
        self._dirty = False

    # -- learning ------------------------------------------------------------
    def observe(self, bucket: int, seconds: float, *, drift: bool = True) -> None:
        """Record that one batch of ``bucket`` rows (padded) took ``seconds``.

        ``drift=False``: the sample says nothing about the machine's speed (a batch after idle time runs
        ~10 % slower than back to back on the dev machine; a policy that knows passes False for it), so it
        updates the bucket's own estimate but not the speed index.
        """
        s = self._stats.get(bucket)
        if s is None:
            raise ValueError(f"{bucket} is not one of the buckets {self.buckets}")
        s.n += 1
        a = max(self.alpha, 1.0 / s.n)
        dev = abs(seconds - s.mean) if s.n > 1 else 0.0
        s.mean += a * (seconds - s.mean)
        s.mad += a * (dev - s.mad)
        s.samples.append(seconds)
        s.q99_new += 1
        if s.ref > 0:
            if drift:  # a ratio clipped to 0.8-1.25: a stall (a GC pause, a slow kernel) is not the machine's speed
                self.speed += self.speed_alpha * (min(max(seconds / s.ref, 0.8), 1.25) - self.speed)
        elif s.n >= self.min_samples:
            s.ref = s.mean
        s.index_at = self.speed
        self._dirty = True

    def samples(self, bucket: int) -> int:
        """How many batches of this bucket have been observed."""
        return self._stats[bucket].n

    # -- the line across buckets ---------------------------------------------
    def _refit(self) -> None:
        pts = [(b, s.mean, min(s.n, self.window)) for b, s in self._stats.items() if s.n > 0]
        if len(pts) >= 2:
            w = sum(p[2] for p in pts)
            mx = sum(p[0] * p[2] for p in pts) / w
            my = sum(p[1] * p[2] for p in pts) / w
            sxx = sum(p[2] * (p[0] - mx) ** 2 for p in pts)
            sxy = sum(p[2] * (p[0] - mx) * (p[1] - my) for p in pts)
            self._per_row = max(sxy / sxx, 0.0) if sxx > 0 else self._per_row
            self._fixed = max(my - self._per_row * mx, 0.0)
        elif len(pts) == 1:
            b, mean, _ = pts[0]
            self._fixed = max(mean - self._per_row * b, 0.0)
        ratios = [self._own_p99(s) / s.mean - 1.0 for s in self._stats.values() if s.n >= self.min_samples and s.mean > 0]
        self._spread = median(ratios) if ratios else self.default_spread
        self._dirty = False

    @property
    def fixed_s(self) -> float:
        """Fixed cost of one batch (the line's intercept), seconds."""
        if self._dirty:
            self._refit()
        return self._fixed

    @property
    def per_row_s(self) -> float:
        """Cost of one more row (the line's slope), seconds."""
        if self._dirty:
            self._refit()
        return self._per_row

    # -- predictions ---------------------------------------------------------
    def _own_p99(self, s: _Bucket) -> float:
        if s.q99 is None or s.q99_new > len(s.samples) >> 4:  # re-sorted after 1/16 of the window is new
            s.q99, s.q99_new = quantile(s.samples, 0.99), 0
        return max(s.q99, s.mean + self.k_mad * s.mad)

    def mean(self, bucket: int) -> float:
        """Predicted mean run time of one batch of this bucket."""
        s = self._stats[bucket]
        if s.n > 0:
            return s.mean * self.speed / s.index_at
        return self.fixed_s + self.per_row_s * bucket

    def p99(self, bucket: int) -> float:
        """Predicted 99th percentile run time of one batch of this bucket (never below its mean)."""
        s = self._stats[bucket]
        if s.n >= self.min_samples:
            return self._own_p99(s) * self.speed / s.index_at
        mean = self.mean(bucket)
        if self._dirty:
            self._refit()
        return mean * (1.0 + self._spread)

    def snapshot(self) -> dict[int, dict[str, float]]:
        """Per bucket: samples, mean_ms, p99_ms (for logs and reports)."""
        return {b: {"samples": float(self._stats[b].n), "mean_ms": self.mean(b) * 1e3, "p99_ms": self.p99(b) * 1e3}
                for b in self.buckets}
