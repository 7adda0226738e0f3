"""The batch-policy interface: what the batcher asks, what a policy answers, what each dispatch records.

The caller owns a FIFO queue of rows, each stamped with its arrival time on a
monotonic clock (seconds), and one executor that runs one batch at a time.
Whenever the executor is free and the queue is not empty it asks::

    action = policy.next_action(now, QueueState(rows, oldest_arrival_s, arrived_total))

and gets either a :class:`Dispatch` (take ``action.rows`` rows from the head
of the queue, pad them to ``action.bucket`` rows, run them) or a :class:`Wait`
(ask again at ``action.until_s`` or at the next arrival, whichever is first).
When the batch has run it reports back::

    policy.observe(action, actual_s, latencies_s)

with the batch's run time and each row's latency (arrival to completion).
Policies never drop rows: under overload they keep serving, the queue grows
to its bound and the consumer pauses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from streaming.inference.batching.buckets import bucket_for, check_buckets, default_buckets
from streaming.inference.batching.service_model import ServiceModel

__all__ = ["BatchPolicy", "Dispatch", "DispatchReason", "Latencies", "QueueState", "Wait"]

Latencies = Sequence[float] | npt.NDArray[np.float64]
"""Row latencies (seconds) reported with a batch: a list, or an array (no per-row conversion at high rates)."""


class DispatchReason(StrEnum):
    """Why a batch left the queue."""

    SINGLE = "single"  # `none`: every row alone
    FULL = "full"  # the batch reached the policy's size limit
    MAX_WAIT = "max_wait"  # `static`: the oldest row waited max_wait_s
    DEADLINE = "deadline"  # `adaptive`: waiting longer would break the oldest row's latency budget
    KEEPS_UP = "keeps_up"  # `adaptive`: this batch already keeps up with the arrival rate
    OVERLOAD = "overload"  # `adaptive`: the arrival rate needs batches larger than the budget allows


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a policy sees of the queue.

    ``oldest_arrival_s`` is the arrival time of the row at the head (meaningless
    when ``rows`` is 0); ``arrived_total`` counts every row ever enqueued (it
    only grows), from which a policy can estimate the arrival rate.
    """

    rows: int
    oldest_arrival_s: float
    arrived_total: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Ask again at ``until_s`` (same clock as ``now``) or at the next arrival, whichever is first."""

    until_s: float = math.inf


@dataclass(slots=True)
class Dispatch:
    """One batch: how many rows from the queue head, run as which bucket, why, and what it cost.

    ``queue_wait_s`` is how long the oldest row had waited when the batch left;
    ``predicted_s`` the policy's p99 prediction of the batch's run time;
    ``actual_s`` the run time, filled in by :meth:`BatchPolicy.observe`;
    ``back_to_back`` whether the batch followed the previous one without idle time (a batch after
    idle time runs slower, so only back-to-back batches tell the machine's speed: see
    ``ServiceModel.observe``; a policy that does not track it leaves it True).
    """

    rows: int
    bucket: int
    reason: DispatchReason
    at_s: float
    queue_wait_s: float
    predicted_s: float
    actual_s: float | None = None
    back_to_back: bool = True

    @property
    def predicted_latency_s(self) -> float:
        """The oldest row's predicted latency: its wait plus the predicted p99 run time."""
        return self.queue_wait_s + self.predicted_s

    @property
    def actual_latency_s(self) -> float | None:
        """The oldest row's actual latency (None until observed)."""
        return None if self.actual_s is None else self.queue_wait_s + self.actual_s


class BatchPolicy(ABC):
    """Decides when a batch leaves the queue and how many rows it takes (FIFO, counted in rows).

    Every policy keeps a :class:`ServiceModel` per provider, learned from
    :meth:`observe`, so every dispatch records a predicted run time, whether or
    not the policy uses it to decide.
    """

    name: str = "policy"

    def __init__(self, max_rows: int, buckets: Sequence[int] | None = None, *, provider: str = "cpu",
                 service: ServiceModel | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.buckets = check_buckets(buckets if buckets is not None else default_buckets(max_rows))
        if max_rows > self.buckets[-1]:
            raise ValueError(f"max_rows {max_rows} exceeds the largest bucket {self.buckets[-1]}")
        self.max_rows = max_rows
        self._models: dict[str, ServiceModel] = {provider: service or ServiceModel(self.buckets)}
        self._provider = provider

    # -- providers -----------------------------------------------------------
    @property
    def provider(self) -> str:
        return self._provider

    @property
    def service(self) -> ServiceModel:
        """The service model of the current provider."""
        return self._models[self._provider]

    def set_provider(self, provider: str) -> None:
        """Switch to another provider's service model (learned from scratch the first time)."""
        if provider not in self._models:
            self._models[provider] = ServiceModel(self.buckets)
        self._provider = provider

    # -- the protocol --------------------------------------------------------
    @abstractmethod
    def next_action(self, now: float, queue: QueueState) -> Dispatch | Wait:
        """Called when the executor is free: dispatch now, or wait."""

    def target(self) -> int:
        """The batch size the policy aims at now (for the ``streaming_batch_target_rows`` gauge)."""
        return self.max_rows

    def observe(self, dispatch: Dispatch, actual_s: float, latencies_s: Latencies = ()) -> None:
        """Report a dispatched batch's run time and its rows' latencies (arrival to completion)."""
        dispatch.actual_s = actual_s
        self.service.observe(dispatch.bucket, actual_s, drift=dispatch.back_to_back)

    # -- helpers for subclasses ---------------------------------------------
    def _dispatch(self, now: float, queue: QueueState, rows: int, reason: DispatchReason) -> Dispatch:
        bucket = bucket_for(rows, self.buckets)
        return Dispatch(rows=rows, bucket=bucket, reason=reason, at_s=now,
                        queue_wait_s=max(now - queue.oldest_arrival_s, 0.0), predicted_s=self.service.p99(bucket))
