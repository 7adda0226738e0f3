"""Noticing a broker that lost the worker's logs, so that the worker ends instead of freezing.

An embedded broker without storage (Tansu with memory storage) forgets every topic, record and
committed offset when it restarts. The worker's consumer rejoins the group, keeps its assignment
and its read positions from before, and then waits forever: its topics are gone, or come back
(created again by a producer) with offsets far below the positions it holds, whose records the
consumer skips as already read. Measured with ``streaming chaos``: the worker logged "Worker
ready" and then nothing, until it was restarted by hand.

:class:`LogWatch` turns both signs into a reason to exit (status 70, :mod:`streaming.worker.fatal`):
a topic the worker needs is missing from the broker's metadata, or a partition's high watermark
went back (on a healthy broker it never decreases). The restarted worker creates its topics and
reads them afresh. Reads that fail (the broker is down) are not a sign of anything.

>>> watch = LogWatch(["events"])
>>> watch.check_highwaters({("events", 0): 1200}) is None
True
>>> watch.check_highwaters({("events", 0): 7})
"events/0: the broker's log end went back from 1200 to 7 (did the broker restart without storage?)"
>>> watch.check_topics({"labels"})
'topics missing from the broker: events (did the broker restart without storage?)'
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

__all__ = ["LogWatch", "LogLostError"]

_HINT = "did the broker restart without storage?"


class LogLostError(RuntimeError):
    """The broker lost logs the worker was reading: the worker must start afresh."""


class LogWatch:
    """Remembers each partition's highest log end seen and which topics the worker needs."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = sorted(set(topics))
        self._high: dict[Hashable, int] = {}

    def check_highwaters(self, readings: Mapping[Any, int | None]) -> str | None:
        """What went wrong, or None: ``readings`` maps a partition (``tp.topic``/``tp.partition`` or a
        (topic, partition) tuple) to its current high watermark (None when unknown)."""
        for tp, hw in readings.items():
            if hw is None or hw < 0:
                continue
            prev = self._high.get(tp)
            if prev is not None and hw < prev:
                return f"{_name(tp)}: the broker's log end went back from {prev} to {hw} ({_HINT})"
            self._high[tp] = hw if prev is None else max(prev, hw)
        return None

    def check_topics(self, existing: Iterable[str]) -> str | None:
        """What went wrong, or None: ``existing`` is every topic in the broker's metadata."""
        missing = sorted(set(self.topics) - set(existing))
        return f"topics missing from the broker: {', '.join(missing)} ({_HINT})" if missing else None


def _name(tp: Any) -> str:
    if isinstance(tp, tuple):
        return f"{tp[0]}/{tp[1]}"
    return f"{tp.topic}/{tp.partition}"
