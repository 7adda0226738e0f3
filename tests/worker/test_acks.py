"""Acks in offset order per partition (issue 13, finding 4): a fetch's dead letters, published before its rows
are scored, must not be acknowledged ahead of those rows, or the consumer could commit past an unpublished event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streaming.inference.batching import StaticPolicy
from streaming.observability.metrics import Metrics
from streaming.worker.acks import OrderedAcks
from streaming.worker.loop import ScoreLoop
from streaming.worker.records import InRecord, OutRecord
from tests.worker.test_loop import _Models, _Scorer


@dataclass(frozen=True)
class Msg:
    tp: str
    offset: int
    generation_id: int = 1


def test_acks_are_released_in_offset_order_per_partition() -> None:
    out: list[Msg] = []
    acks = OrderedAcks(out.append)
    a = [Msg("a", i) for i in range(5)]
    b = [Msg("b", i) for i in range(3)]
    acks.track(a + b)
    for m in (a[3], b[2], a[4], b[0], a[0]):
        acks.ack(m)
    assert out == [b[0], a[0]]
    assert acks.waiting() == 3  # a: 3 and 4, b: 2
    acks.ack(a[1])
    acks.ack(a[2])
    acks.ack(b[1])
    assert [m for m in out if m.tp == "a"] == a
    assert [m for m in out if m.tp == "b"] == b
    assert acks.waiting() == 0


def test_a_rebalance_or_seek_back_starts_the_partition_afresh() -> None:
    out: list[Msg] = []
    acks = OrderedAcks(out.append)
    old = [Msg("a", i, generation_id=1) for i in range(3)]
    acks.track(old)
    acks.ack(old[1])  # held: offset 0 is not acked
    new = [Msg("a", i, generation_id=2) for i in range(3)]  # the partition came back after a rebalance
    acks.track(new)
    acks.ack(old[0])  # a late ack of the old generation: dropped, the record is redelivered anyway
    assert out == [] and acks.dropped == 1
    for m in new:
        acks.ack(m)
    assert out == new
    again = [Msg("a", 1, generation_id=2), Msg("a", 2, generation_id=2)]  # a seek back in the same generation
    acks.track(again)
    acks.ack(again[1])
    assert out == new
    acks.ack(again[0])
    assert out == new + again


class _Publisher:
    """Acks a publish's tokens only after the next publish (the broker answered later), like the real one's settle."""

    def __init__(self, ack: Any) -> None:
        self.ack = ack
        self.held: list[Any] = []

    async def publish(self, records: Sequence[OutRecord], tokens: Sequence[Any], produced_ms: Sequence[int]) -> None:
        for t in self.held:
            self.ack(t)
        self.held = list(tokens)

    def check(self) -> None:
        pass

    async def flush(self) -> None:
        for t in self.held:
            self.ack(t)
        self.held = []


async def test_dead_letters_are_not_acked_before_earlier_rows_of_the_score_loop() -> None:
    raw: list[Msg] = []
    acks = OrderedAcks(raw.append)
    publisher = _Publisher(acks.ack)
    loop = ScoreLoop(_Scorer(), publisher, StaticPolicy(4, 0.02), _Models(), Metrics(),  # type: ignore[arg-type]
                     queue_rows=64, take_rows=64)
    msgs = [Msg("events", i) for i in range(12)]
    values = [b"bad" if i % 3 == 2 else b"ok" for i in range(12)]
    records = [InRecord(None, v, "events", 0, i, 0, 0) for i, v in enumerate(values)]
    acks.track(msgs)
    await loop.take(records[:6], msgs[:6])  # dead letters of this fetch go out at once, its rows wait for a batch
    await loop.take(records[6:], msgs[6:])
    await loop.drain()
    await publisher.flush()
    assert [m.offset for m in raw] == list(range(12))  # every offset, in order, although dead letters went first


async def test_without_ordering_the_same_loop_acks_out_of_order() -> None:
    """The control: the loop itself publishes dead letters ahead of earlier rows (what OrderedAcks repairs)."""
    raw: list[Msg] = []
    publisher = _Publisher(raw.append)
    loop = ScoreLoop(_Scorer(), publisher, StaticPolicy(4, 0.02), _Models(), Metrics(),  # type: ignore[arg-type]
                     queue_rows=64, take_rows=64)
    msgs = [Msg("events", i) for i in range(12)]
    records = [InRecord(None, b"bad" if i % 3 == 2 else b"ok", "events", 0, i, 0, 0) for i in range(12)]
    await loop.take(records[:6], msgs[:6])
    await loop.take(records[6:], msgs[6:])
    await loop.drain()
    await publisher.flush()
    offsets = [m.offset for m in raw]
    assert sorted(offsets) == list(range(12)) and offsets != list(range(12))
