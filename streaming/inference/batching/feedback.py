"""AIMD correction of the latency budget from the observed windowed p99."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from streaming.inference.batching.service_model import quantile

__all__ = ["AimdCorrection"]


class AimdCorrection:
    """A factor in ``[floor, 1]`` by which the policy scales its latency budget.

    Latencies are collected over tumbling windows of ``interval_s``. At the end
    of a window with at least ``min_samples`` latencies, a p99 above ``target_s``
    cuts the factor multiplicatively by ``decrease``; a p99 at or under it adds
    ``increase``. A window marked ``frozen`` (the policy was overloaded: the SLO
    was out of reach whatever the budget) never cuts: shrinking batches then
    would only lower throughput.

    The decision is exact and cheap at any rate: the p99 is above the target
    exactly when more than 1 % of the window's latencies are, so the window
    keeps two counts, not its latencies (at 600,000 rows/s a window holds
    300,000 of them, and sorting them stalled the dispatch loop for tens of
    milliseconds). A batch's latencies come in queue order, oldest first, so
    when the first is within the target all are and nothing is counted.
    ``last_p99_s``, for reports, comes from a bounded sample.

    >>> c = AimdCorrection(0.050, interval_s=0.5, min_samples=1)
    >>> c.update(0.5, [0.080])  # window not over yet
    1.0
    >>> c.update(1.0, [0.070])  # p99 80 ms > 50 ms: cut by 20 %
    0.8
    >>> round(c.update(2.0, [0.020]), 2)  # under target: +0.02
    0.82
    """

    def __init__(self, target_s: float, *, interval_s: float = 0.5, decrease: float = 0.2, increase: float = 0.02,
                 floor: float = 0.3, min_samples: int = 20) -> None:
        if target_s <= 0 or interval_s <= 0 or not 0 < decrease < 1 or increase < 0 or not 0 < floor <= 1:
            raise ValueError("target_s, interval_s > 0; 0 < decrease < 1; increase >= 0; 0 < floor <= 1")
        self.target_s = target_s
        self.interval_s = interval_s
        self.decrease = decrease
        self.increase = increase
        self.floor = floor
        self.min_samples = min_samples
        self.factor = 1.0
        self.last_p99_s: float | None = None
        self._start: float | None = None
        self._n = 0
        self._over = 0
        self._sample: list[float] = []
        self._frozen = False

    _SAMPLE = 2048  # latencies kept per window for last_p99_s

    def update(self, now: float, latencies_s: Iterable[float] | npt.NDArray[np.float64], *,
               frozen: bool = False) -> float:
        """Add latencies observed at ``now``; close the window if it is over; return the factor."""
        if self._start is None:
            self._start = now
        lat = latencies_s if isinstance(latencies_s, (np.ndarray, list, tuple)) else list(latencies_s)
        if len(lat):
            self._n += len(lat)
            if lat[0] > self.target_s:  # FIFO: the first row is the oldest, the slowest; none over when it is not
                self._over += int(np.count_nonzero(np.asarray(lat, dtype=float) > self.target_s))
            if len(self._sample) < self._SAMPLE:
                step = max(1, len(lat) * 8 // self._SAMPLE)  # large batches contribute a strided subset
                self._sample.extend(lat[::step].tolist() if isinstance(lat, np.ndarray) else lat[::step])
        self._frozen |= frozen
        if now - self._start >= self.interval_s:
            if self._n >= self.min_samples:
                self.last_p99_s = quantile(self._sample, 0.99) if self._sample else None
                if self._over > 0.01 * self._n:  # more than 1 % above the target: the p99 is above it
                    if not self._frozen:
                        self.factor = max(self.floor, self.factor * (1.0 - self.decrease))
                else:
                    self.factor = min(1.0, self.factor + self.increase)
            self._start, self._n, self._over, self._sample, self._frozen = now, 0, 0, [], False
        return self.factor
