"""`static`: Triton-style dynamic batching with a fixed maximum size and a fixed maximum wait."""

from __future__ import annotations

from collections.abc import Sequence

from streaming.inference.batching.base import BatchPolicy, Dispatch, DispatchReason, QueueState, Wait
from streaming.inference.batching.service_model import ServiceModel

__all__ = ["StaticPolicy"]


class StaticPolicy(BatchPolicy):
    """Send ``max_rows`` rows as soon as they are queued, or whatever is queued once the oldest row has waited ``max_wait_s``.

    Both are tuned offline; nothing adapts.

    >>> p = StaticPolicy(max_rows=8, max_wait_s=0.010)
    >>> p.next_action(1.000, QueueState(rows=3, oldest_arrival_s=0.995, arrived_total=3))
    Wait(until_s=1.005)
    >>> p.next_action(1.005, QueueState(rows=3, oldest_arrival_s=0.995, arrived_total=3)).reason
    <DispatchReason.MAX_WAIT: 'max_wait'>
    >>> d = p.next_action(1.001, QueueState(rows=20, oldest_arrival_s=0.999, arrived_total=20))
    >>> d.rows, d.reason.value
    (8, 'full')
    """

    name = "static"

    def __init__(self, max_rows: int, max_wait_s: float, *, buckets: Sequence[int] | None = None,
                 provider: str = "cpu", service: ServiceModel | None = None) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        super().__init__(max_rows, buckets, provider=provider, service=service)
        self.max_wait_s = max_wait_s
        self.name = f"static-{max_rows}-{max_wait_s * 1e3:g}ms"

    def next_action(self, now: float, queue: QueueState) -> Dispatch | Wait:
        if queue.rows == 0:
            return Wait()
        if queue.rows >= self.max_rows:
            return self._dispatch(now, queue, self.max_rows, DispatchReason.FULL)
        until = queue.oldest_arrival_s + self.max_wait_s
        if now >= until:
            return self._dispatch(now, queue, queue.rows, DispatchReason.MAX_WAIT)
        return Wait(until)
