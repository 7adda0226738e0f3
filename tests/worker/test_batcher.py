"""The inference queue in front of the batch policy: FIFO, bounded, every row run once, every dispatch recorded."""

from __future__ import annotations

import asyncio

import pytest

from streaming.inference.batching import AdaptivePolicy, Dispatch, NoBatching, ServiceModel, StaticPolicy
from streaming.observability.metrics import Metrics
from streaming.worker.batcher import Batcher


def _metric(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    v = m.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


async def test_static_batches_are_fifo_full_and_run_every_row_once() -> None:
    ran: list[list[int]] = []

    async def run(rows: list[int], _d: Dispatch) -> None:
        ran.append(rows)
        await asyncio.sleep(0.002)

    m = Metrics()
    b: Batcher[int] = Batcher(StaticPolicy(4, 0.005), run, bound=8, metrics=m)
    task = asyncio.create_task(b.run())
    await b.put(list(range(10)))
    await asyncio.wait_for(b.drained(), 5)
    task.cancel()
    assert [r for batch in ran for r in batch] == list(range(10))  # FIFO, once each
    assert max(len(x) for x in ran) == 4 and ran[0] == [0, 1, 2, 3]
    assert _metric(m, "streaming_batch_dispatches_total", {"reason": "full"}) >= 2
    assert _metric(m, "streaming_batch_run_seconds_count", {"kind": "actual"}) == len(ran)
    assert _metric(m, "streaming_batch_target_rows") == 4


async def test_static_waits_for_max_wait_when_the_batch_is_not_full() -> None:
    ran: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def run(rows: list[int], _d: Dispatch) -> None:
        ran.append((loop.time(), rows))

    b: Batcher[int] = Batcher(StaticPolicy(16, 0.05), run, bound=32)
    task = asyncio.create_task(b.run())
    t0 = loop.time()
    await b.put([1, 2, 3])
    await asyncio.wait_for(b.drained(), 5)
    task.cancel()
    [(at, rows)] = ran
    assert rows == [1, 2, 3] and at - t0 >= 0.045  # held for max_wait, then sent together


async def test_a_full_queue_makes_put_wait_until_a_batch_leaves() -> None:
    gate = asyncio.Event()

    async def run(rows: list[int], _d: Dispatch) -> None:
        await gate.wait()

    b: Batcher[int] = Batcher(NoBatching(), run, bound=2)
    task = asyncio.create_task(b.run())
    await b.put([1, 2])
    await asyncio.sleep(0.01)  # row 1 is running (blocked); row 2 waits; one free slot
    await b.put([3])
    blocked = asyncio.create_task(b.put([4]))
    await asyncio.sleep(0.05)
    assert not blocked.done() and len(b) == 2  # bounded: the consumer would pause here
    gate.set()
    await asyncio.wait_for(blocked, 5)
    await asyncio.wait_for(b.drained(), 5)
    task.cancel()
    assert b.dispatches == 4


async def test_a_put_larger_than_the_bound_runs_while_it_waits() -> None:
    """A whole consumer fetch can hold more rows than the queue: the rows queued so far must run while
    the rest wait for space (the loop already waits for an arrival: no deadlock)."""
    ran: list[int] = []

    async def run(rows: list[int], _d: Dispatch) -> None:
        ran.extend(rows)

    b: Batcher[int] = Batcher(StaticPolicy(4, 0.001), run, bound=8)
    task = asyncio.create_task(b.run())
    await asyncio.sleep(0.01)  # the loop is idle, waiting for an arrival
    await asyncio.wait_for(b.put(list(range(50))), 5)
    await asyncio.wait_for(b.drained(), 5)
    task.cancel()
    assert ran == list(range(50))


async def test_adaptive_sends_a_lone_row_at_once_and_learns_the_run_time() -> None:
    service = ServiceModel((1, 2, 4, 8))
    for _ in range(10):
        for bucket in service.buckets:
            service.observe(bucket, 0.001 + 0.0001 * bucket)
    policy = AdaptivePolicy(slo_s=0.02, max_rows=8, buckets=service.buckets, service=service)
    reasons: list[str] = []

    async def run(rows: list[int], d: Dispatch) -> None:
        reasons.append(d.reason.value)
        await asyncio.sleep(0.001)

    b: Batcher[int] = Batcher(policy, run, bound=16)
    task = asyncio.create_task(b.run())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.put([7])
    await asyncio.wait_for(b.drained(), 5)
    task.cancel()
    assert reasons == ["keeps_up"] and loop.time() - t0 < 0.015  # idle: no waiting for company
    assert policy.service.samples(1) >= 11  # the dispatch's run time was observed


def test_the_bound_must_hold_a_full_batch() -> None:
    async def run(rows: list[int], _d: Dispatch) -> None: ...

    with pytest.raises(ValueError, match="must hold one full batch"):
        Batcher(StaticPolicy(64, 0.005), run, bound=32)
