"""Reads predictions in a background thread and matches them to events by id."""

from __future__ import annotations

import threading
import time
from collections import Counter

from streaming.events.codec import Codec, DecodeError
from streaming.events.reader import TopicReader

__all__ = ["PredictionCollector"]


class PredictionCollector:
    """Collects predictions from the end of ``topic`` as they arrive.

    Latency per prediction: from the event record's Kafka timestamp
    (``produced_at``) to the moment this reader received the prediction
    (``e2e_ms``), and to the worker's ``predicted_at`` (``worker_ms``).
    Predictions of events produced before ``since_us`` are ignored. (Tansu's
    high watermark can lag behind the real end, so reading "from the end" may
    start a little early.)
    """

    def __init__(self, bootstrap: str, topic: str, codec: Codec, *, since_us: int = 0) -> None:
        self.codec = codec
        self.since_us = since_us
        self._reader = TopicReader(bootstrap, topic, from_beginning=False)
        self.seen: Counter[str] = Counter()
        self.e2e_ms: list[float] = []
        self.worker_ms: list[float] = []
        self.fallbacks = 0
        self.decisions = 0
        self.undecodable = 0
        self.last: dict[str, object] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-collector", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> PredictionCollector:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            msgs = self._reader.poll(0.01)  # consume() waits the whole timeout to fill a batch
            now_us = time.time_ns() // 1000
            with self._lock:
                for m in msgs:
                    try:
                        p = self.codec.decode("prediction", m.value())
                    except DecodeError:
                        self.undecodable += 1
                        continue
                    if p["produced_at"] < self.since_us:
                        continue  # an older run's prediction
                    eid = p["event_id"]
                    self.seen[eid] += 1
                    if self.seen[eid] > 1:
                        continue
                    self.e2e_ms.append((now_us - p["produced_at"]) / 1000.0)
                    self.worker_ms.append((p["predicted_at"] - p["produced_at"]) / 1000.0)
                    self.fallbacks += p["fallback"] is not None
                    self.decisions += bool(p["decision"])
                    self.last = p
        self._reader.close()

    @property
    def unique(self) -> int:
        with self._lock:
            return len(self.seen)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return sum(c - 1 for c in self.seen.values())

    def missing(self, event_ids: list[str]) -> list[str]:
        with self._lock:
            return [e for e in event_ids if e not in self.seen]

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.unique >= n:
                return True
            time.sleep(0.05)
        return self.unique >= n

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
