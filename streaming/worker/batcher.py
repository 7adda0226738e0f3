"""The inference queue: a bounded FIFO of rows and the loop that asks the batch policy when to dispatch.

Rows arrive with their features ready (:meth:`Batcher.put`); one task
(:meth:`Batcher.run`) asks the policy, each time the executor is free, whether
to dispatch now or wait (until a deadline or the next arrival, whichever is
first), hands each dispatched batch to ``run_batch`` and reports its run time
and its rows' latencies back to the policy. Nothing is dropped: when the queue
holds ``bound`` rows, :meth:`put` waits, so the agent stops taking events and
Faust pauses the partition's fetch.

Every dispatch is recorded: its reason, the oldest row's queue wait, the
predicted and the actual run time (Prometheus metrics and a debug log line).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from streaming.inference.batching import BatchPolicy, Dispatch, QueueState, Wait, make_policy
from streaming.inference.session import OnnxModel
from streaming.observability.metrics import Metrics
from streaming.pipeline.spec import BatchingSpec

__all__ = ["Batcher", "policy_for", "provider_key"]


def provider_key(model: OnnxModel) -> str:
    """The service-model key of a model's provider: ``cuda`` or ``cpu``."""
    return "cuda" if model.provider == "CUDAExecutionProvider" else "cpu"


def policy_for(spec: BatchingSpec, model: OnnxModel, override: str = "") -> BatchPolicy:
    """The pipeline's batch policy (or ``override``), on the model's buckets, seeded with its warm-up timings."""
    kind = override or spec.policy
    policy = make_policy(kind, slo_s=spec.budget_ms / 1000.0, max_rows=spec.max_rows,
                         max_wait_s=spec.max_wait_ms / 1000.0, buckets=model.buckets, provider=provider_key(model))
    seed(policy, model)
    return policy


def seed(policy: BatchPolicy, model: OnnxModel) -> None:
    """Teach the policy's service model the model's warm-up timings (switching provider if it changed)."""
    policy.set_provider(provider_key(model))
    for bucket, times in model.warmup_s.items():
        if bucket in policy.buckets:
            for t in times:
                policy.service.observe(bucket, t)

log = logging.getLogger(__name__)

R = TypeVar("R")


class Batcher(Generic[R]):
    """A bounded FIFO in front of one executor, dispatched by a :class:`BatchPolicy`.

    ``run_batch(rows, dispatch)`` runs one batch and may return the seconds the
    policy should learn as its run time (what scales with the batch: inference
    timed on its own thread, not the event loop's or the broker's delays, which
    a busy loop stretches whatever the batch size); when it returns None the
    batch's wall time is used.
    """

    def __init__(self, policy: BatchPolicy, run_batch: Callable[[list[R], Dispatch], Awaitable[float | None]], *,
                 bound: int, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if bound < policy.max_rows:
            raise ValueError(f"the queue bound ({bound}) must hold one full batch ({policy.max_rows})")
        self.policy = policy
        self.run_batch = run_batch
        self.bound = bound
        self.metrics = metrics
        self.clock = clock
        self._rows: deque[tuple[float, R]] = deque()
        self._arrived = 0
        self._arrival = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dispatches = 0

    def __len__(self) -> int:
        return len(self._rows)

    async def put(self, rows: Sequence[R]) -> None:
        """Enqueue rows (arrival time: now); waits while the queue is full."""
        for row in rows:
            while len(self._rows) >= self.bound:
                self._arrival.set()  # what is queued can run while this waits for space
                self._space.clear()
                await self._space.wait()
            self._rows.append((self.clock(), row))
            self._arrived += 1
            self._idle.clear()
        self._arrival.set()

    async def drained(self) -> None:
        """Wait until every row put so far has run."""
        await self._idle.wait()

    async def run(self) -> None:
        """Dispatch forever (cancel the task to stop; :meth:`drained` first for a clean stop)."""
        while True:
            if not self._rows:
                self._idle.set()
                self._arrival.clear()
                await self._arrival.wait()
                continue
            now = self.clock()
            action = self.policy.next_action(now, QueueState(len(self._rows), self._rows[0][0], self._arrived))
            if isinstance(action, Wait):
                self._arrival.clear()
                timeout = None if action.until_s == float("inf") else max(0.0, action.until_s - now)
                try:
                    await asyncio.wait_for(self._arrival.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            await self._dispatch(action)

    async def _dispatch(self, action: Dispatch) -> None:
        take = min(action.rows, len(self._rows))
        batch = [self._rows.popleft() for _ in range(take)]
        if len(self._rows) < self.bound:
            self._space.set()
        t0 = self.clock()
        service = await self.run_batch([r for _, r in batch], action)
        done = self.clock()
        actual = done - t0 if service is None else service
        self.policy.observe(action, actual, [done - arrived for arrived, _ in batch])
        self.dispatches += 1
        m = self.metrics
        if m is not None:
            m.dispatches.labels(action.reason.value).inc()
            m.queue_wait.observe(action.queue_wait_s)
            m.batch_seconds.labels("predicted").observe(action.predicted_s)
            m.batch_seconds.labels("actual").observe(actual)
            m.batch_target.set(self.policy.target())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dispatch %d rows (bucket %d) reason=%s queue_wait=%.2fms predicted=%.2fms actual=%.2fms "
                      "back_to_back=%s", take, action.bucket, action.reason.value, action.queue_wait_s * 1e3,
                      action.predicted_s * 1e3, actual * 1e3, action.back_to_back)
