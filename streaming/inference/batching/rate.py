"""Arrival-rate estimate from a monotonic count of arrivals: a continuous-time EWMA."""

from __future__ import annotations

import math

__all__ = ["ArrivalRate"]


class ArrivalRate:
    """Rows per second, smoothed over about ``tau_s`` seconds.

    Fed with ``(now, arrived_total)`` pairs whenever convenient (irregular
    intervals are fine): each update moves the estimate towards the rate seen
    since the last one, weighted by ``1 - exp(-dt / tau_s)``.

    >>> r = ArrivalRate(tau_s=0.5)
    >>> for i in range(1, 5001):  # 1,000 rows/s for 5 s
    ...     _ = r.update(i / 1000, i)
    >>> round(r.rate)
    1000
    >>> for i in range(1, 1001):  # then 100 rows/s for 10 s
    ...     _ = r.update(5 + i / 100, 5000 + i)
    >>> round(r.rate)
    100
    """

    def __init__(self, tau_s: float = 0.25) -> None:
        if tau_s <= 0:
            raise ValueError(f"tau_s must be > 0, got {tau_s}")
        self.tau_s = tau_s
        self.rate = 0.0
        self._t: float | None = None
        self._n = 0

    def update(self, now: float, arrived_total: int) -> float:
        """Account for arrivals up to ``now``; return the estimate (rows/s)."""
        if self._t is None:
            self._t, self._n = now, arrived_total
            return self.rate
        dt = now - self._t
        if dt <= 0:
            return self.rate
        a = 1.0 - math.exp(-dt / self.tau_s)
        self.rate += a * ((arrived_total - self._n) / dt - self.rate)
        self._t, self._n = now, arrived_total
        return self.rate
