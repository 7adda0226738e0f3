"""Acknowledgements released strictly in offset order per partition.

A fetch's dead letters are published at once, its rows after inference: left alone, their acks
reach the consumer out of offset order. Faust commits the first run of consecutive acked
offsets, and its guard against a gap before that run is off by one (and skipped when the
committed offset is unknown or 0; faust-streaming issue 606), so an offset acked early could be
committed past an earlier record whose prediction was not yet on the broker: a crash then loses
that record. :class:`OrderedAcks` holds each ack until every earlier offset of its partition
that the worker took has been acked, then releases them in order, so the consumer only ever
sees a consecutive run from where it last committed.

>>> released = []
>>> acks = OrderedAcks(released.append, key=lambda t: (t[0], t[1], 0))
>>> acks.track([("p0", 5), ("p0", 6), ("p0", 7)])
>>> acks.ack(("p0", 7)); acks.ack(("p0", 5)); released
[('p0', 5)]
>>> acks.ack(("p0", 6)); released
[('p0', 5), ('p0', 6), ('p0', 7)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OrderedAcks", "message_key"]

#: (partition, offset, generation) of a token: the consumer's partition, the record's offset, and
#: the consumer group generation it was read in
Key = tuple[Hashable, int, int]


def message_key(message: Any) -> Key:
    """The key of a Faust message: its topic partition, offset and consumer generation."""
    return message.tp, message.offset, getattr(message, "generation_id", 0) or 0


@dataclass
class _Partition:
    generation: int
    pending: deque[int] = field(default_factory=deque)  # offsets taken and not yet released, in order
    done: dict[int, Any] = field(default_factory=dict)  # acked offsets waiting for an earlier one


class OrderedAcks:
    """Wraps an ``ack`` so that each partition's tokens are acked in the order they were tracked.

    :meth:`track` every token in offset order when the worker takes it (before any of its
    outputs can be acked); :meth:`ack` it when its outputs are on the broker. A token tracked in a
    new consumer generation (a rebalance), or at an offset not after the partition's last one (a
    seek back), starts the partition afresh: what was pending before is redelivered anyway, and
    late acks of the old tokens are dropped. ``None`` tokens (callers without a consumer) are
    ignored.
    """

    def __init__(self, ack: Callable[[Any], Any], *, key: Callable[[Any], Key] = message_key) -> None:
        self._ack = ack
        self._key = key
        self._parts: dict[Hashable, _Partition] = {}
        self.dropped = 0  # acks of tokens from before a rebalance or seek

    def track(self, tokens: Iterable[Any]) -> None:
        parts = self._parts
        for tok in tokens:
            if tok is None:
                continue
            tp, offset, generation = self._key(tok)
            part = parts.get(tp)
            if part is None or part.generation != generation or (part.pending and offset <= part.pending[-1]):
                part = parts[tp] = _Partition(generation)
            part.pending.append(offset)

    def ack(self, token: Any) -> None:
        if token is None:
            return
        tp, offset, generation = self._key(token)
        part = self._parts.get(tp)
        if part is None or part.generation != generation or not part.pending or offset < part.pending[0]:
            self.dropped += 1
            return
        part.done[offset] = token
        pending, done, ack = part.pending, part.done, self._ack
        while pending and pending[0] in done:
            ack(done.pop(pending.popleft()))

    def waiting(self) -> int:
        """Acks held back for an earlier offset (for the tests and the metrics)."""
        return sum(len(p.done) for p in self._parts.values())
