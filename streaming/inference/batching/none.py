"""`none`: every row is its own batch, sent as soon as the executor is free."""

from __future__ import annotations

from collections.abc import Sequence

from streaming.inference.batching.base import BatchPolicy, Dispatch, DispatchReason, QueueState, Wait
from streaming.inference.batching.service_model import ServiceModel

__all__ = ["NoBatching"]


class NoBatching(BatchPolicy):
    """Batch of one row, no waiting (the baseline).

    >>> p = NoBatching()
    >>> p.next_action(1.0, QueueState(rows=5, oldest_arrival_s=0.25, arrived_total=5))
    Dispatch(rows=1, bucket=1, reason=<DispatchReason.SINGLE: 'single'>, at_s=1.0, queue_wait_s=0.75, ...)
    >>> p.next_action(1.0, QueueState(rows=0, oldest_arrival_s=0.0, arrived_total=5))
    Wait(until_s=inf)
    """

    name = "none"

    def __init__(self, *, provider: str = "cpu", service: ServiceModel | None = None,
                 buckets: Sequence[int] | None = None) -> None:
        super().__init__(1, buckets or (1,), provider=provider, service=service)

    def next_action(self, now: float, queue: QueueState) -> Dispatch | Wait:
        if queue.rows == 0:
            return Wait()
        return self._dispatch(now, queue, 1, DispatchReason.SINGLE)
