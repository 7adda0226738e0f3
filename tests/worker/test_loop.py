"""The score loop (unit, with doubles for the score step and the publisher): every taken row is scored and
published once, in chunks of ``take_rows``, and the loop goes on after a drain (a rebalance's commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from streaming.inference.batching import StaticPolicy
from streaming.observability.metrics import Metrics
from streaming.worker.loop import ScoreLoop
from streaming.worker.records import InRecord, OutRecord
from streaming.worker.score import Prepared, ScoredBatch


class _Scorer:
    def __init__(self) -> None:
        self.prepared: list[int] = []  # chunk sizes

    async def prepare(self, records: Sequence[InRecord], tokens: Sequence[Any]) -> Prepared:
        self.prepared.append(len(records))
        dead = [(OutRecord("dlq", r.key, r.value), t) for r, t in zip(records, tokens, strict=True) if r.value == b"bad"]
        rows = [_Row(t) for r, t in zip(records, tokens, strict=True) if r.value != b"bad"]
        return Prepared(dead, rows)  # type: ignore[arg-type]

    async def score(self, rows: Sequence[Any], *, wait_log: bool = True) -> ScoredBatch:
        out = [OutRecord("predictions", None, str(r.token).encode()) for r in rows]
        return ScoredBatch(out, [0] * len(rows), len(rows), 0, 0, service_s=0.0001)

    async def flush_logs(self) -> None:
        pass


class _Row:
    def __init__(self, token: Any) -> None:
        self.token = token


class _Publisher:
    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def publish(self, records: Sequence[OutRecord], tokens: Sequence[Any], produced_ms: Sequence[int]) -> None:
        self.acked.extend(tokens)

    def check(self) -> None:
        pass

    async def flush(self) -> None:
        pass


class _Models:
    active = object()


def _records(start: int, n: int, bad: set[int] = frozenset()) -> tuple[list[InRecord], list[int]]:  # type: ignore[assignment]
    recs = [InRecord(b"k", b"bad" if i in bad else b"ok", "events", 0, i, None, 0) for i in range(start, start + n)]
    return recs, list(range(start, start + n))


async def test_every_row_is_published_once_and_the_loop_survives_a_drain() -> None:
    scorer, publisher = _Scorer(), _Publisher()
    loop = ScoreLoop(scorer, publisher, StaticPolicy(8, 0.001), _Models(), Metrics(),  # type: ignore[arg-type]
                     queue_rows=16, take_rows=5)
    recs, toks = _records(0, 23, bad={3, 17})
    await asyncio.wait_for(loop.take(recs, toks), 5)
    await asyncio.wait_for(loop.drain(), 5)
    assert sorted(publisher.acked) == list(range(23))  # scored or dead-lettered, each once
    assert scorer.prepared == [5, 5, 5, 5, 3]  # a fetch is taken in chunks of take_rows
    recs, toks = _records(23, 10)  # after the drain (a rebalance), the loop still scores
    await asyncio.wait_for(loop.take(recs, toks), 5)
    await asyncio.wait_for(loop.drain(), 5)
    assert sorted(publisher.acked) == list(range(33))
    assert len(loop) == 0
