"""Per-dispatch overhead: the time a dispatch loop spends between two back-to-back batches.

The service model learns how long a batch *runs*. A dispatch loop also spends
time on every batch outside the run: deciding, taking rows off the queue,
padding, handing over to the executor, recording latencies, and (in the
worker) whatever else the event loop does before it comes back. That cost is
per dispatch, not per row, so it is what makes a stream of small batches
dearer than a few large ones. Where a batch runs in microseconds (a GPU) it
is as large as the run itself, and a throughput model without it overrates
small batches.

A sample is the gap between one batch's completion and the next dispatch,
taken only when the next batch's oldest row was already waiting at that
completion (so no idle time is counted), and only at the first decision after
the completion (so no deliberate wait is counted either).

>>> o = DispatchOverhead()
>>> o.completed(1.000)
>>> o.dispatched(1.0002, oldest_arrival_s=0.999)  # a row was waiting: back to back, 0.2 ms of overhead
True
>>> round(o.seconds * 1e3, 3)
0.2
>>> o.completed(2.000)
>>> o.dispatched(2.5, oldest_arrival_s=2.4)  # the queue was empty at completion: no sample
False
>>> round(o.seconds * 1e3, 3)
0.2
"""

from __future__ import annotations

__all__ = ["DispatchOverhead"]


class DispatchOverhead:
    """An EWMA of the per-dispatch overhead (seconds), learned from back-to-back dispatches.

    Parameters
    ----------
    alpha
        EWMA weight of a new sample (the first ``1/alpha`` samples are averaged plainly).
    cap_s
        Samples are clipped to this (a stall of the whole process is not a per-dispatch cost).
    """

    def __init__(self, alpha: float = 0.05, cap_s: float = 0.005) -> None:
        if not 0 < alpha <= 1 or cap_s <= 0:
            raise ValueError("0 < alpha <= 1 and cap_s > 0")
        self.alpha = alpha
        self.cap_s = cap_s
        self.seconds = 0.0
        self.samples = 0
        self._completed_at: float | None = None

    def completed(self, at_s: float) -> None:
        """A batch completed at ``at_s`` (the caller's clock)."""
        self._completed_at = at_s

    def decided(self) -> None:
        """The policy decided to wait: the next dispatch is not back to back."""
        self._completed_at = None

    def dispatched(self, now: float, oldest_arrival_s: float) -> bool:
        """A batch is dispatched at ``now``; its oldest row arrived at ``oldest_arrival_s``.

        Returns whether it went back to back (sampled): its row waited for the last completion, and the
        policy sent it at its first decision after.
        """
        done, self._completed_at = self._completed_at, None
        if done is None or oldest_arrival_s > done or now < done:
            return False
        gap = min(now - done, self.cap_s)
        self.samples += 1
        a = max(self.alpha, 1.0 / self.samples)
        self.seconds += a * (gap - self.seconds)
        return True
