"""`adaptive`: deadline-driven batching that learns the service time online and holds a p99 target.

Each time the executor is free, with ``n`` rows queued, the oldest of age ``a``,
``mean(b)`` and ``p99(b)`` the service model's predictions for a batch of
``b`` rows (padded to its bucket), and ``lam`` the arrival-rate estimate
(capped by ``n / a``, the rate the queue itself shows, so a stale
estimate after a drop cannot make rows wait):

1. ``fit``: the largest batch with ``mean(b) + p99(b) + guard_s <= slo_s``.
   Under sustained load a row waits for about one batch in front of it and
   then runs in its own.
2. The target worth waiting for: ``full``, the size within ``fit`` with the
   most rows per second (``best``), when it serves ``lam``; otherwise
   ``overload``, the smallest larger size that serves ``lam``, else the size
   with the most rows per second. In overload the SLO is out of reach; the
   policy serves for throughput, the bounded queue fills and the consumer
   pauses. Nothing is dropped.
3. ``keeps_up``: while there is slack (``lam <= utilisation * rps(best)``),
   send the queue now, up to ``fit`` rows, provided that batch alone serves
   ``greedy_share * lam`` (default: the rate itself); if padding it to its
   bucket is what fails that, the whole bucket below may pass and go alone.
   This is greedy batching: the rows that queue while the executor runs make
   the next batch, and waiting would add latency, not needed throughput; a
   batch too small for the rate (one row when the executor frees at a high
   rate, 200 rows padded to 256 on a flat curve near capacity) waits for
   more. Near capacity (no slack) wait for the target instead: a
   half-empty or inefficient bucket would waste throughput the rate now needs.
   With ``n`` at the target, send it.
4. Below the target, the deadline: once ``a`` plus
   the predicted p99 of the batch with one more row, plus ``guard_s``, reaches
   the budget ``slo_s * correction``, send the ``n`` rows (``deadline``);
   until then wait (the caller asks again at every arrival).

``correction`` is the AIMD factor on the observed windowed p99 (1 while the
target is met; never cut in a window with an overload dispatch). It only moves
the deadline, so it can make the policy more eager but never caps batches
smaller: at high load a smaller cap would lower throughput, lengthen the queue
and raise the very p99 it reacts to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from streaming.inference.batching.base import BatchPolicy, Dispatch, DispatchReason, Latencies, QueueState, Wait
from streaming.inference.batching.buckets import bucket_for, floor_bucket
from streaming.inference.batching.feedback import AimdCorrection
from streaming.inference.batching.overhead import DispatchOverhead
from streaming.inference.batching.rate import ArrivalRate
from streaming.inference.batching.service_model import ServiceModel

__all__ = ["AdaptivePolicy"]


class _Plan(NamedTuple):
    fit: int  # the largest size that fits the SLO behind one batch like it
    fit_rps: float
    sizes: tuple[tuple[int, float], ...]  # (rows, rows/s) per size
    best: int  # the size within fit with the most rows/s
    best_rps: float
    greedy_max: float  # below this arrival rate there is slack: batch greedily


class AdaptivePolicy(BatchPolicy):
    """Batch by deadline against ``slo_s`` (p99, queueing included), learning the service time online.

    Parameters
    ----------
    slo_s
        The p99 latency target of a row, from its arrival in the queue to its score.
    max_rows
        The largest batch (rows); must not exceed the largest bucket.
    buckets
        The batch-size buckets the session is warmed for (default: powers of two and half-steps).
    utilisation
        Below this fraction of the most efficient batch's throughput the policy batches greedily;
        above it, it waits for full, efficient batches (or the deadline).
    greedy_share
        A greedy batch must alone serve this multiple of the arrival rate (0.5 until the third
        session; 1/utilisation was tried: both measured worse, see docs/batching.md).
    guard_s
        Slack for the caller's wake-up delay and the hand-off to the executor.
    rate_tau_s
        Smoothing time of the arrival-rate estimate.
    overload_margin, overload_queue_batches
        The noise guard: a rate estimate up to ``1 + overload_margin`` times what the best size within
        ``fit`` serves counts as that size's (``full``), not ``overload``, until the queue holds
        ``overload_queue_batches`` batches of ``fit`` rows (the estimate moves by a few per cent over
        its window; a false ``overload`` switches to batches too large for the SLO).
    feedback_interval_s, feedback_decrease, feedback_increase, feedback_floor
        The AIMD correction: window, multiplicative cut, additive step, lowest factor.
    provider, service
        The provider whose service model is used first, and that model (seed it with warm-up timings).
    replan_every, replan_s
        The sizes' predicted throughputs and the fitting size are recomputed after this many observed
        batches, at most once per ``replan_s`` (not at every decision: at high rates the policy is
        asked often between two batches, and thousands of batches a second run on a GPU).

    >>> from streaming.inference.batching.service_model import ServiceModel
    >>> model = ServiceModel((1, 2, 4, 8, 16, 32))
    >>> for _ in range(10):
    ...     for b in model.buckets:
    ...         model.observe(b, 0.002 + 0.001 * b)  # 2 ms + 1 ms per row
    >>> p = AdaptivePolicy(slo_s=0.050, max_rows=32, buckets=model.buckets, service=model)
    >>> p.next_action(0.0, QueueState(rows=1, oldest_arrival_s=0.0, arrived_total=1))  # idle: no rate yet
    Dispatch(rows=1, bucket=1, reason=<DispatchReason.KEEPS_UP: 'keeps_up'>, ...)
    """

    name = "adaptive"

    def __init__(
        self,
        slo_s: float,
        max_rows: int,
        buckets: Sequence[int] | None = None,
        *,
        utilisation: float = 0.9,
        greedy_share: float = 1.0,
        guard_s: float = 0.001,
        rate_tau_s: float = 0.25,
        overload_margin: float = 0.1,
        overload_queue_batches: float = 2.0,
        feedback_interval_s: float = 0.5,
        feedback_decrease: float = 0.2,
        feedback_increase: float = 0.02,
        feedback_floor: float = 0.3,
        provider: str = "cpu",
        service: ServiceModel | None = None,
        replan_every: int = 8,
        replan_s: float = 0.02,
    ) -> None:
        if slo_s <= 0 or not 0 < utilisation <= 1 or greedy_share <= 0 or guard_s < 0:
            raise ValueError("slo_s > 0, 0 < utilisation <= 1, greedy_share > 0, guard_s >= 0")
        if overload_margin < 0 or overload_queue_batches < 0:
            raise ValueError("overload_margin >= 0, overload_queue_batches >= 0")
        super().__init__(max_rows, buckets, provider=provider, service=service)
        self.slo_s = slo_s
        self.utilisation = utilisation
        self.greedy_share = greedy_share
        self.guard_s = guard_s
        self.overload_margin = overload_margin
        self.overload_queue_batches = overload_queue_batches
        self.rate = ArrivalRate(rate_tau_s)
        self.correction = AimdCorrection(slo_s, interval_s=feedback_interval_s, decrease=feedback_decrease,
                                         increase=feedback_increase, floor=feedback_floor)
        self._sizes = tuple(b for b in self.buckets if b <= max_rows)
        if self._sizes[-1] != max_rows:
            self._sizes = (*self._sizes, max_rows)
        self.replan_every = replan_every
        self.replan_s = replan_s
        self._plan_at = -math.inf
        self._plan: _Plan | None = None
        self._since_plan = 0
        self.overhead = DispatchOverhead()

    @property
    def budget_s(self) -> float:
        """The latency budget the deadline aims at now: the SLO times the feedback correction."""
        return self.slo_s * self.correction.factor

    def fit_rows(self, budget_s: float) -> int:
        """The largest batch size that fits ``budget_s`` behind one batch like it: mean + p99 run time + guard."""
        best = self._sizes[0]
        for rows in self._sizes:
            b = bucket_for(rows, self.buckets)
            if self.service.mean(b) + self.service.p99(b) + self.guard_s > budget_s:
                break
            best = rows
        return best

    def rows_per_s(self, rows: int) -> float:
        """Predicted throughput of back-to-back batches of ``rows`` (padded to their bucket): the run time
        plus the loop's per-dispatch overhead."""
        return rows / (self.service.mean(bucket_for(rows, self.buckets)) + self.overhead.seconds)

    def set_provider(self, provider: str) -> None:
        super().set_provider(provider)
        self._plan = None

    def _planned(self) -> _Plan:
        """Fit, each size's rows/s and the best size within fit, from the service model (cached)."""
        if self._plan is None:
            fit = self.fit_rows(self.slo_s)
            rps = tuple((rows, self.rows_per_s(rows)) for rows in self._sizes)
            best, best_rps = self._sizes[0], 0.0
            for rows, r in rps:
                if rows <= fit and r > best_rps:
                    best, best_rps = rows, r
            self._plan = _Plan(fit, self.rows_per_s(fit), rps, best, best_rps, self.utilisation * best_rps)
        return self._plan

    def target_rows(self, rate: float) -> tuple[int, float, DispatchReason]:
        """The batch worth waiting for at ``rate`` rows/s: (rows, their rows/s, reason it would go).

        The size within ``fit`` with the most rows per second if it serves ``rate`` (``full``);
        otherwise the smallest larger size that does, or the size with the most rows per second
        (``overload``).
        """
        plan = self._planned()
        best, best_rps = plan.best, plan.best_rps
        if rate <= best_rps:
            return best, best_rps, DispatchReason.FULL
        for rows, rps in plan.sizes:
            if rows > plan.fit and rate <= rps:
                return rows, rps, DispatchReason.OVERLOAD
            if rps > best_rps:
                best, best_rps = rows, rps
        return best, best_rps, DispatchReason.OVERLOAD

    def next_action(self, now: float, queue: QueueState) -> Dispatch | Wait:
        action = self._decide(now, queue)
        if isinstance(action, Wait):
            self.overhead.decided()
        else:  # only a back-to-back batch updates the speed index: one after idle time runs slower
            action.back_to_back = self.overhead.dispatched(now, queue.oldest_arrival_s)
        return action

    def _decide(self, now: float, queue: QueueState) -> Dispatch | Wait:
        lam = self.rate.update(now, queue.arrived_total)
        n = queue.rows
        if n == 0:
            return Wait()
        age = now - queue.oldest_arrival_s
        if age > 0 and n < lam * age:  # the rate the queue itself shows: a stale estimate must not make rows wait
            lam = n / age
        plan = self._plan or self._planned()
        if lam <= plan.greedy_max:  # slack: greedy, with a batch that alone serves greedy_share x the rate
            need = lam * self.greedy_share
            if n >= plan.fit:  # (the common case at high rates, kept cheap)
                if plan.fit_rps >= need:
                    return self._dispatch(now, queue, plan.fit, DispatchReason.KEEPS_UP)
            else:
                rows = n
                rps = self.rows_per_s(rows)
                if rps < need:  # padded to its bucket the batch would not do: the whole bucket below may
                    whole = floor_bucket(rows, self.buckets)
                    if whole < rows and (whole_rps := self.rows_per_s(whole)) >= need:
                        rows, rps = whole, whole_rps
                if rps >= need:
                    return self._dispatch(now, queue, rows, DispatchReason.KEEPS_UP)
        target, _, reason = self.target_rows(lam)
        if (reason is DispatchReason.OVERLOAD and lam <= (1 + self.overload_margin) * plan.best_rps
                and n < self.overload_queue_batches * plan.fit):
            # the estimate says overload by a few per cent, the queue does not (yet): an estimate that
            # noisy must not switch to batches too large for the SLO
            target, reason = plan.best, DispatchReason.FULL
        if n >= target:
            return self._dispatch(now, queue, target, reason)
        latest = queue.oldest_arrival_s + self.budget_s - self.service.p99(bucket_for(n + 1, self.buckets)) - self.guard_s
        if now >= latest:
            return self._dispatch(now, queue, n, DispatchReason.DEADLINE)
        return Wait(latest)

    def target(self) -> int:
        """The size worth waiting for at the current arrival-rate estimate."""
        return self.target_rows(self.rate.rate)[0]

    def observe(self, dispatch: Dispatch, actual_s: float, latencies_s: Latencies = ()) -> None:
        super().observe(dispatch, actual_s, latencies_s)
        self.overhead.completed(dispatch.at_s + actual_s)
        self._since_plan += 1
        if self._since_plan >= self.replan_every and dispatch.at_s - self._plan_at >= self.replan_s:
            self._plan, self._since_plan, self._plan_at = None, 0, dispatch.at_s
        self.correction.update(dispatch.at_s + actual_s, latencies_s, frozen=dispatch.reason is DispatchReason.OVERLOAD)
