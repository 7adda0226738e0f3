"""Playing a synthetic stream in real time: events now, their labels later."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streaming.events.producer import EventProducer
from streaming.synthetic.fraud import Labelled

__all__ = ["Player", "PlayStats"]


@dataclass
class PlayStats:
    events: int = 0
    labels: int = 0
    positives: int = 0
    lag_s: float = 0.0  # how far the player fell behind its schedule, at worst
    event_ids: list[str] = field(default_factory=list)
    drift_at_us: int | None = None


class Player:
    """Publishes ``stream`` paced by event time; labels follow after ``label_delay_s``.

    Stops after ``duration_s`` or when ``should_stop()`` says so; then
    publishes the labels still due within ``label_grace_s``.
    """

    def __init__(
        self,
        stream: Iterator[Labelled],
        events: EventProducer,
        labels: EventProducer | None,
        *,
        id_field: str,
        time_field: str,
        label_delay_s: float = 5.0,
        keep_ids: bool = False,
    ) -> None:
        self.stream = stream
        self.events = events
        self.labels = labels
        self.id_field = id_field
        self.time_field = time_field
        self.label_delay_us = int(label_delay_s * 1e6)
        self.keep_ids = keep_ids
        self._due: collections.deque[tuple[int, str, int]] = collections.deque()
        self.stats = PlayStats()

    def _flush_labels(self, now_us: int) -> None:
        while self._due and self._due[0][0] <= now_us:
            _, eid, y = self._due.popleft()
            assert self.labels is not None
            self.labels.send({"event_id": eid, "label": y, "label_time": now_us}, key=eid)
            self.stats.labels += 1

    def run(
        self,
        duration_s: float,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_tick: Callable[[PlayStats], None] | None = None,
    ) -> PlayStats:
        start = time.time()
        end_us = int((start + duration_s) * 1e6)
        last_tick = 0.0
        for item in self.stream:
            t_ev = int(item.event[self.time_field])
            if t_ev >= end_us or should_stop():
                break
            now_us = time.time_ns() // 1000
            if t_ev > now_us:
                time.sleep((t_ev - now_us) / 1e6)
                now_us = t_ev
            else:
                self.stats.lag_s = max(self.stats.lag_s, (now_us - t_ev) / 1e6)
            self.events.send(item.event)
            self.stats.events += 1
            self.stats.positives += item.label
            eid = str(item.event[self.id_field])
            if self.keep_ids:
                self.stats.event_ids.append(eid)
            if self.labels is not None:
                self._due.append((t_ev + self.label_delay_us, eid, item.label))
                self._flush_labels(now_us)
            if on_tick is not None and now_us / 1e6 - last_tick >= 0.5:
                last_tick = now_us / 1e6
                on_tick(self.stats)
        self.events.flush()
        return self.stats

    def drain_labels(self, grace_s: float, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Publish the labels still pending, waiting at most ``grace_s`` for them to fall due."""
        if self.labels is None:
            return
        deadline = time.time() + grace_s
        while self._due and time.time() < deadline and not should_stop():
            self._flush_labels(time.time_ns() // 1000)
            self.labels.poll(0.05)
        self.labels.flush()
