"""Broker requests our Kafka clients send, by API: what a load test divides by the events it sent.

Two kinds of client, counted two ways:

* **aiokafka** (the worker's and the Faust peers' consumers and producers, through the
  ``streaming://`` transport): aiokafka keeps no request statistics, so :func:`install` wraps
  ``aiokafka.conn.AIOKafkaConnection.send``, the one method every request of every aiokafka
  client goes through (metadata, fetch, produce, heartbeats, commits), once per process, and
  counts each request by its API key in the Prometheus counter
  ``streaming_kafka_requests_total{client="aiokafka", api="Produce"|"Fetch"|"other"}`` of the
  default registry (:data:`REQUESTS`). The wrapper adds one dictionary look-up and one locked
  increment per request; it changes nothing else (same arguments, same return value).
  :func:`register` adds the same counter to another registry (the worker's own, which serves its
  ``/metrics``).
* **librdkafka** (confluent-kafka: the load test's generator and reader, the Quix peer): its
  statistics (``statistics.interval.ms`` and a ``stats_cb``) carry per broker a ``req`` object of
  requests sent by API name; :func:`librdkafka_counts` reads Produce and Fetch from one statistics
  JSON, :class:`StatsSamples` keeps them over time, and :func:`window_delta` takes the requests of a
  time window from samples (interpolated at its edges, since statistics come at intervals).

:func:`scrape_counts` reads the aiokafka counter from a ``/metrics`` page.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["REQUESTS", "API_NAMES", "install", "installed", "register", "scrape_counts", "counts_from_metrics",
           "librdkafka_counts", "StatsSamples", "Sample", "window_delta", "KINDS"]

#: the request kinds a load test reports per event
KINDS = ("produce", "fetch")
#: aiokafka API keys by the name the counter gives them (everything else is "other")
API_NAMES = {0: "Produce", 1: "Fetch"}
_NAME = "streaming_kafka_requests"

REQUESTS = Counter(_NAME, "Requests our Kafka clients sent to brokers, by client library and API.",
                   ["client", "api"], registry=REGISTRY)

_lock = threading.Lock()
_MARK = "_streaming_counts_requests"


def installed() -> bool:
    """Whether this process counts aiokafka's requests."""
    from aiokafka.conn import AIOKafkaConnection

    return bool(getattr(AIOKafkaConnection.send, _MARK, False))


def install(cls: Any = None) -> None:
    """Count every request sent through ``cls.send`` (default ``aiokafka.conn.AIOKafkaConnection``).

    Idempotent: a second call (another import of the transport, a test) leaves the one wrapper.
    A wrapper, because aiokafka exposes no request statistics and its clients build their
    connections internally; the API key is read from the request object (``request.API_KEY``).
    """
    if cls is None:
        from aiokafka.conn import AIOKafkaConnection

        cls = AIOKafkaConnection
    with _lock:
        original = cls.send
        if getattr(original, _MARK, False):
            return
        children = {key: REQUESTS.labels("aiokafka", name) for key, name in API_NAMES.items()}
        other = REQUESTS.labels("aiokafka", "other")

        @functools.wraps(original)
        def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            children.get(getattr(request, "API_KEY", None), other).inc()  # type: ignore[arg-type]
            return original(self, request, *args, **kwargs)

        setattr(send, _MARK, True)
        cls.send = send  # the label values exist from here on: a scrape before the first request reads 0


def register(registry: CollectorRegistry) -> None:
    """Serve :data:`REQUESTS` from ``registry`` too (a no-op for the default registry, which has it)."""
    if registry is REGISTRY:
        return
    try:
        registry.register(REQUESTS)
    except ValueError:  # already there
        pass


def counts_from_metrics(text: str, client: str = "aiokafka") -> dict[str, float]:
    """``{"produce": n, "fetch": n}`` of one client from a ``/metrics`` page (empty when absent).

    >>> page = ('streaming_kafka_requests_total{client="aiokafka",api="Produce"} 3.0\\n'
    ...         'streaming_kafka_requests_total{client="aiokafka",api="Fetch"} 40.0\\n'
    ...         'streaming_kafka_requests_total{client="aiokafka",api="other"} 7.0\\n')
    >>> counts_from_metrics(page)
    {'produce': 3.0, 'fetch': 40.0}
    >>> counts_from_metrics("")
    {}
    """
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(_NAME):
            continue
        for s in fam.samples:
            if s.name == _NAME + "_total" and s.labels.get("client") == client:
                kind = s.labels.get("api", "").lower()
                if kind in KINDS:
                    out[kind] = out.get(kind, 0.0) + float(s.value)
    return out


def scrape_counts(metrics_url: str, timeout: float = 5.0) -> dict[str, float]:
    """The aiokafka request counts a process serves on ``metrics_url`` now."""
    with urllib.request.urlopen(metrics_url, timeout=timeout) as resp:
        return counts_from_metrics(resp.read().decode())


def librdkafka_counts(stats: Mapping[str, Any]) -> dict[str, float]:
    """Produce and Fetch requests one librdkafka client has sent, summed over its brokers.

    >>> librdkafka_counts({"brokers": {"b/1": {"req": {"Produce": 5, "Fetch": 0, "Metadata": 2}},
    ...                                "b/bootstrap": {"req": {"Produce": 1, "Fetch": 3}}}})
    {'produce': 6.0, 'fetch': 3.0}
    """
    out = {k: 0.0 for k in KINDS}
    for broker in (stats.get("brokers") or {}).values():
        req = broker.get("req") or {}
        out["produce"] += float(req.get("Produce", 0))
        out["fetch"] += float(req.get("Fetch", 0))
    return out


#: (wall-clock seconds the statistics describe, client handle name, cumulative counts)
Sample = tuple[float, str, dict[str, float]]


class StatsSamples:
    """Collects librdkafka statistics as :data:`Sample` s: pass :meth:`callback` as ``stats_cb``.

    A statistics event is delivered when the application polls, possibly later than librdkafka
    made it; its ``ts`` (librdkafka's monotonic clock, µs) says when. Wall-clock times are
    ``ts`` plus the smallest (receipt - ts) seen for the handle: the promptest delivery.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._raw: list[tuple[float, float, str, dict[str, float]]] = []  # (received, ts s, handle, counts)

    def callback(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
            self.add(stats, self.clock())
        except (ValueError, TypeError, AttributeError):
            pass

    def add(self, stats: Mapping[str, Any], received: float) -> None:
        """One statistics object, received at ``received`` (wall-clock s)."""
        self.add_counts(received, float(stats.get("ts", received * 1e6)), str(stats.get("name", "")),
                        librdkafka_counts(stats))

    def add_counts(self, received: float, ts_us: float, name: str, counts: dict[str, float]) -> None:
        """One sample already reduced to counts (``ts_us``: the statistics' ``ts``)."""
        self._raw.append((received, ts_us / 1e6, name, counts))

    def samples(self) -> list[Sample]:
        offset: dict[str, float] = {}
        for received, ts, name, _ in self._raw:
            d = received - ts
            offset[name] = min(d, offset.get(name, d))
        return [(ts + offset[name], name, counts) for _received, ts, name, counts in self._raw]

    def __len__(self) -> int:
        return len(self._raw)

    def latest_time(self) -> float | None:
        """When the last statistics event was received (wall clock), None before the first."""
        return self._raw[-1][0] if self._raw else None


def _at(series: Sequence[tuple[float, dict[str, float]]], t: float, kind: str) -> float:
    """A cumulative count at time ``t``: linear between the samples around it, the nearest one outside."""
    if t <= series[0][0]:
        return series[0][1].get(kind, 0.0)
    if t >= series[-1][0]:
        return series[-1][1].get(kind, 0.0)
    for (ta, ca), (tb, cb) in itertools.pairwise(series):
        if ta <= t <= tb:
            a, b = ca.get(kind, 0.0), cb.get(kind, 0.0)
            return a if tb == ta else a + (b - a) * (t - ta) / (tb - ta)
    return series[-1][1].get(kind, 0.0)  # not reached


def window_delta(samples: Iterable[Sample], t0: float, t1: float) -> dict[str, float]:
    """Requests sent between ``t0`` and ``t1`` by kind, summed over client handles.

    Each handle's cumulative counts are interpolated linearly at the edges; outside its samples the
    nearest sample counts (so a window the samples do not cover reads low, never high).

    >>> s = [(0.0, "c", {"produce": 0, "fetch": 0}), (1.0, "c", {"produce": 10, "fetch": 100}),
    ...      (2.0, "c", {"produce": 30, "fetch": 200})]
    >>> window_delta(s, 0.5, 1.5)
    {'produce': 15.0, 'fetch': 100.0}
    >>> window_delta(s + [(0.0, "d", {"fetch": 0}), (4.0, "d", {"fetch": 40})], 0.0, 2.0)
    {'produce': 30.0, 'fetch': 220.0}
    >>> window_delta([], 0, 1)
    {'produce': 0.0, 'fetch': 0.0}
    """
    by_handle: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for t, name, counts in samples:
        by_handle.setdefault(name, []).append((t, counts))
    out = {k: 0.0 for k in KINDS}
    for series in by_handle.values():
        series.sort(key=lambda x: x[0])
        for k in KINDS:
            out[k] += max(0.0, _at(series, t1, k) - _at(series, t0, k))
    return out
