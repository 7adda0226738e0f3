"""One open-loop load test: publish on schedule, match predictions by event id, measure latency.

Every event is encoded before the run starts, with its intended send time as its
event time, so the send loop only hands bytes to the producer. Latency is
recorded twice in HdrHistograms: from the *intended* send time (corrected for
coordinated omission: a generator that falls behind cannot hide the queue it
built) and from the actual send time. The reader runs in its own process
(:mod:`loadtest.reader`), so it and the send loop do not share a GIL. The generator's own lag behind the
schedule is reported, and the run fails when it sent below 95% of the target.

Cost per event: the CPU each watched process used over the schedule window divided by the events
sent in it (``cpu_us_per_event``), and the broker requests (produce, fetch) each client made in that
window per event sent (``broker_requests_per_event``): the generator's producer and the reader's
consumer from librdkafka's statistics, the system's aiokafka clients from their ``/metrics``
(:mod:`streaming.observability.kafka_requests`).
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Producer
from hdrh.histogram import HdrHistogram

from loadtest.reader import STATS_INTERVAL_MS, ReaderProcess, ReadResult
from streaming.events.codec import Codec
from streaming.events.producer import entity_key
from streaming.events.security import client_config
from streaming.observability.kafka_requests import KINDS, Sample, StatsSamples, window_delta
from streaming.pipeline.spec import Pipeline
from streaming.synthetic.registry import generator_for

__all__ = ["LoadResult", "run_load", "STAGES", "cpu_seconds", "cpu_us_per_event", "requests_per_event", "cpu_growth",
           "request_delta", "sustained_rate", "RequestProbe", "SampleSource"]

#: cumulative request counts of a process now (``{"produce": n, "fetch": n}``; None when unreadable): a scrape
RequestProbe = Callable[[], dict[str, float] | None]
#: librdkafka statistics samples of a process, read after the run (:class:`StatsSamples`)
SampleSource = Callable[[], list[Sample]]

#: per-stage breakdown from the prediction's timestamps
STAGES = ("broker_and_fetch", "features", "queue", "inference", "publish_and_read")
_MAX_US = 120_000_000


@dataclass
class LoadResult:
    target_rate: float
    achieved_rate: float
    sent: int
    matched: int
    missing: int
    duplicates: int
    generator_lag_max_ms: float
    intended: HdrHistogram
    actual: HdrHistogram
    stages_ms: dict[str, dict[str, float]]
    windows: list[dict[str, float]] = field(default_factory=list)  # per second of the schedule
    dead_letters: int = 0
    cpu_pct: dict[str, float] = field(default_factory=dict)  # per watched process, while the schedule ran
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per watched process in the same window
    requests: dict[str, dict[str, float]] = field(default_factory=dict)  # broker requests per client process
    sustained_rate: float = 0.0  # outputs received per second while the schedule ran (sustained_rate())
    missing_ids: list[str] = field(default_factory=list)  # the first few, for debugging
    cpu_windows: list[dict[str, float]] = field(default_factory=list)  # % of a core per process, per CPU_WINDOW_S

    def percentiles(self, h: HdrHistogram) -> dict[str, float]:
        if h.get_total_count() == 0:
            return {k: float("nan") for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")}
        return {
            "p50_ms": h.get_value_at_percentile(50) / 1000,
            "p90_ms": h.get_value_at_percentile(90) / 1000,
            "p99_ms": h.get_value_at_percentile(99) / 1000,
            "p999_ms": h.get_value_at_percentile(99.9) / 1000,
            "max_ms": h.get_max_value() / 1000,
        }

    def summary(self, slo_p99_ms: float) -> dict[str, Any]:
        p = self.percentiles(self.intended)
        actual = {f"actual_{k}": v for k, v in self.percentiles(self.actual).items()}
        kept_up = self.achieved_rate >= 0.95 * self.target_rate
        return {
            "target_rate": self.target_rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            **{k: round(v, 2) for k, v in p.items()},
            **{k: round(v, 2) for k, v in actual.items()},
            "missing": self.missing,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "generator_lag_max_ms": round(self.generator_lag_max_ms, 1),
            "generator_kept_up": kept_up,
            "slo_p99_ms": slo_p99_ms,
            "slo_pass": bool(kept_up and self.missing == 0 and p["p99_ms"] <= slo_p99_ms),
            "stages_ms": self.stages_ms,
            "sustained_rate": round(self.sustained_rate, 1),
            **({"cpu_pct": self.cpu_pct} if self.cpu_pct else {}),
            "cpu_us_per_event": cpu_us_per_event(self.cpu_s, self.sent),
            "broker_requests": {k: {kind: round(n) for kind, n in v.items()} for k, v in self.requests.items()},
            "broker_requests_per_event": requests_per_event(self.requests, self.sent),
            **({"cpu_pct_windows": self.cpu_windows, "cpu_window_s": CPU_WINDOW_S,
                "cpu_growth": cpu_growth(self.cpu_windows)} if self.cpu_windows else {}),
        }


#: seconds per window of the per-window CPU figures (``cpu_pct_windows``)
CPU_WINDOW_S = 10.0


def cpu_growth(windows: list[dict[str, float]], per: int = int(60 / CPU_WINDOW_S)) -> dict[str, float]:
    """Per process: CPU in the run's last minute over its first minute (windows of :data:`CPU_WINDOW_S`);
    empty for runs shorter than two minutes. How much a process's cost grows as the run goes on (Tansu's
    does, with the record batches it stores).

    >>> cpu_growth([{"broker": 10.0}] * 6 + [{"broker": 15.0}] * 6)
    {'broker': 1.5}
    >>> cpu_growth([{"broker": 10.0}] * 11)
    {}
    """
    if len(windows) < 2 * per:
        return {}
    first, last = windows[:per], windows[-per:]
    out = {}
    for k in first[0]:
        a = sum(w.get(k, 0.0) for w in first)
        b = sum(w.get(k, 0.0) for w in last)
        if a > 0:
            out[k] = round(b / a, 2)
    return out


def cpu_us_per_event(cpu_s: dict[str, float], events: int) -> dict[str, float]:
    """CPU µs per event sent, per process, from the CPU seconds each used in the window.

    >>> cpu_us_per_event({"worker": 0.49, "broker": 0.2}, 1000)
    {'worker': 490.0, 'broker': 200.0}
    >>> cpu_us_per_event({"worker": 0.5}, 0)
    {}
    """
    if events <= 0:
        return {}
    return {k: round(v * 1e6 / events, 1) for k, v in cpu_s.items()}


def requests_per_event(requests: dict[str, dict[str, float]], events: int) -> dict[str, dict[str, float]]:
    """Broker requests per event sent, per process and kind (produce, fetch).

    >>> requests_per_event({"worker": {"produce": 50, "fetch": 1000}}, 2000)
    {'worker': {'produce': 0.025, 'fetch': 0.5}}
    """
    if events <= 0:
        return {}
    return {k: {kind: round(v.get(kind, 0.0) / events, 4) for kind in KINDS} for k, v in requests.items()}


def request_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """Requests between two scrapes of cumulative counts; None when either scrape failed or a counter went back
    (the process restarted: no honest figure).

    >>> request_delta({"produce": 10, "fetch": 200}, {"produce": 25, "fetch": 260})
    {'produce': 15.0, 'fetch': 60.0}
    >>> request_delta(None, {"produce": 1}) is None, request_delta({"fetch": 9}, {"fetch": 3}) is None
    (True, True)
    """
    if before is None or after is None:
        return None
    out = {k: float(after.get(k, 0.0) - before.get(k, 0.0)) for k in KINDS}
    return None if any(v < 0 for v in out.values()) else out


def sustained_rate(received_us: list[int], first_send_us: int, last_send_us: int) -> float:
    """Outputs received per second while the schedule ran: from the first output's arrival to the last send.

    Counting from the first arrival (not the first send) keeps a system that is slow but keeps up at
    the offered rate; one that falls behind delivers at its own pace. When (nearly) nothing arrived
    before the last send, the window runs to the last arrival instead.

    >>> sustained_rate([1_100_000 + 1000 * i for i in range(1001)], 1_000_000, 2_100_000)  # 1,000/s, 0.1 s late
    1000.0
    >>> sustained_rate([1_000_000 + 2000 * i for i in range(1000)], 1_000_000, 2_000_000)  # half as fast
    500.0
    >>> sustained_rate([], 0, 10)
    0.0
    """
    if not received_us:
        return 0.0
    recv = sorted(received_us)
    first = recv[0]
    end = last_send_us if last_send_us - first >= 0.25 * max(1, last_send_us - first_send_us) else recv[-1]
    if end <= first:
        return 0.0
    n = sum(1 for r in recv if r <= end) - 1  # intervals between arrivals, the first one starts the clock
    return round(n / ((end - first) / 1e6), 1)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (all its threads; Linux /proc), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prepare(pipeline: Pipeline, codec: Codec, offsets: Iterable[float], start_us: int, seed: int,
             id_prefix: str) -> list[tuple[int, bytes, bytes, str]]:
    """(intended µs, key, value, event id) for every scheduled event, encoded ahead of the run."""
    gen = generator_for(pipeline, rate=1000.0, seed=seed, start_us=start_us, id_prefix=id_prefix)
    spec = pipeline.event
    out = []
    for off, item in zip(offsets, gen, strict=False):
        ev = dict(item.event)
        t = start_us + int(off * 1e6)
        ev[spec.time_field] = t
        out.append((t, entity_key(ev, spec.key).encode(), codec.encode(spec.schema, ev), str(ev[spec.id_field])))
    return out


def run_load(
    *,
    bootstrap: str,
    events_topic: str,
    predictions_topic: str,
    pipeline: Pipeline,
    codec: Codec,
    offsets: Iterable[float],
    target_rate: float,
    linger_ms: float = 20.0,
    drain_s: float = 10.0,
    seed: int = 0,
    match: str = "prediction",
    cpu_clocks: dict[str, Callable[[], float | None]] | None = None,
    request_probes: dict[str, RequestProbe] | None = None,
    request_samples: dict[str, SampleSource] | None = None,
    progress: Callable[[int, int, int], None] = lambda _sent, _total, _got: None,
) -> LoadResult:
    """Send ``offsets`` open loop to ``events_topic`` and match what arrives on ``predictions_topic``.

    ``match="prediction"``: the worker's predictions (with the stage breakdown); ``"event"``: records
    of the event schema (a forwarder's pass-through, or ``events_topic`` itself read back).
    The reader runs in its own process (:mod:`loadtest.reader`). ``cpu_clocks``: CPU-seconds clocks
    (by role, e.g. :func:`cpu_seconds` of a pid) whose use from the first send to the last is
    reported (``cpu_pct``, 100 = one core; ``cpu_s``). Broker requests in the same window
    (``requests``): the generator's and the reader's always (librdkafka statistics), plus
    ``request_probes`` (by role: cumulative counts now, read just before the first send and just
    after the last) and ``request_samples`` (by role: librdkafka statistics samples, read after the run).
    """
    offsets = list(offsets)
    id_prefix = f"lt{time.time_ns() // 1000}-"
    reader = ReaderProcess(bootstrap, predictions_topic, codec, match=match, event_subject=pipeline.event.schema,
                           id_field=pipeline.event.id_field, count_prefix=id_prefix)
    try:
        # every event is encoded before the first send; the schedule starts once that and the reader are done
        t0 = time.perf_counter()
        _prepare(pipeline, codec, offsets[:500], time.time_ns() // 1000, seed, "calibrate-")
        per_event_s = (time.perf_counter() - t0) / max(1, min(500, len(offsets)))
        start_us = (time.time_ns() // 1000) + int((1.0 + 1.3 * per_event_s * len(offsets)) * 1e6)
        plan = _prepare(pipeline, codec, offsets, start_us, seed, id_prefix)
        reader.wait_ready()
    except BaseException:
        reader.stop(10)
        raise
    gen_stats = StatsSamples()
    producer = Producer({**client_config(bootstrap), "linger.ms": linger_ms, "acks": "all",
                         "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000, "log.connection.close": False,
                         "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": gen_stats.callback})
    actual: dict[str, int] = {}
    lag_max = 0.0
    last_tick = 0.0
    now_us = time.time_ns() // 1000
    if start_us - now_us > 30_000:  # the window opens just before the first send (the loop waits for it)
        time.sleep((start_us - now_us - 30_000) / 1e6)
    if cpu_clocks is not None:
        cpu_clocks = {**cpu_clocks, "load_generator": functools.partial(cpu_seconds, os.getpid()),
                      "load_reader": functools.partial(cpu_seconds, reader.pid)}
    probes = request_probes or {}
    before = {k: probe() for k, probe in probes.items()}
    t0 = time.time()
    cpu0 = {k: clock() for k, clock in (cpu_clocks or {}).items()}
    wall0 = time.monotonic()
    windows: list[dict[str, float]] = []
    w_cpu, w_wall = cpu0, wall0
    for i, (t, key, value, eid) in enumerate(plan):
        now_us = time.time_ns() // 1000
        if t > now_us:
            time.sleep((t - now_us) / 1e6)
            now_us = time.time_ns() // 1000
        else:
            lag_max = max(lag_max, (now_us - t) / 1000)
        while True:
            try:
                producer.produce(events_topic, value=value, key=key, timestamp=now_us // 1000)
                break
            except BufferError:
                producer.poll(0.01)
        actual[eid] = now_us
        producer.poll(0)
        if now_us / 1e6 - last_tick >= 0.5:
            last_tick = now_us / 1e6
            progress(i + 1, len(plan), reader.count())
            if cpu_clocks is not None and (w_now := time.monotonic()) - w_wall >= CPU_WINDOW_S:
                w_next = {k: clock() for k, clock in cpu_clocks.items()}
                windows.append({k: round(100 * (b - a) / (w_now - w_wall), 1) for k, a in w_cpu.items()
                                if a is not None and (b := w_next.get(k)) is not None})
                w_cpu, w_wall = w_next, w_now
    cpu1 = {k: clock() for k, clock in (cpu_clocks or {}).items()}
    wall = max(1e-6, time.monotonic() - wall0)
    t1 = time.time()
    after = {k: probe() for k, probe in probes.items()}
    cpu_s = {k: b - a for k, a in cpu0.items() if a is not None and (b := cpu1.get(k)) is not None}
    cpu_pct = {k: round(100 * v / wall, 1) for k, v in cpu_s.items()}
    first_send = plan[0][0] if plan else start_us
    last_send = max(actual.values()) if actual else start_us
    producer.flush(30)
    deadline = time.monotonic() + drain_s
    while reader.count() < len(plan) and time.monotonic() < deadline:
        progress(len(plan), len(plan), reader.count())
        producer.poll(0.1)
    # statistics come every STATS_INTERVAL_MS: let the generator's and the reader's pass the window's end
    stats_deadline = time.monotonic() + 1.0
    while (gen_stats.latest_time() or 0.0) < t1 + 0.01 and time.monotonic() < stats_deadline:
        producer.poll(0.02)
    time.sleep(max(0.0, t1 + 2.5 * STATS_INTERVAL_MS / 1000 - time.time()))
    got = reader.stop()
    result = _analyse(plan, actual, got, target_rate, first_send, last_send, lag_max)
    result.cpu_pct = cpu_pct
    result.cpu_s = cpu_s
    result.cpu_windows = windows
    requests = {"load_generator": window_delta(gen_stats.samples(), t0, t1),
                "load_reader": window_delta(got.request_samples, t0, t1)}
    for k in probes:
        if (delta := request_delta(before[k], after[k])) is not None:
            requests[k] = delta
    for k, source in (request_samples or {}).items():
        if samples := source():
            requests[k] = window_delta(samples, t0, t1)
    result.requests = requests
    return result


def _analyse(plan: list[tuple[int, bytes, bytes, str]], actual: dict[str, int], col: ReadResult,
             target_rate: float, first_send: int, last_send: int, lag_max: float) -> LoadResult:
    intended_h = HdrHistogram(1, _MAX_US, 3)
    actual_h = HdrHistogram(1, _MAX_US, 3)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    windows: dict[int, list[tuple[float, float]]] = {}
    t0 = plan[0][0] if plan else 0
    for t, _k, _v, eid in plan:
        got = col.first.get(eid)
        if got is None:
            continue
        recv, p = got
        lat = max(1, recv - t)
        intended_h.record_value(min(lat, _MAX_US))
        actual_h.record_value(min(max(1, recv - actual[eid]), _MAX_US))
        batch = float("nan")  # a forwarded event carries no batch size
        if p is not None:  # a prediction: STAGE_FIELDS
            produced_at, received_at, features_at, inference_started_at, predicted_at, batch = p
            stages["broker_and_fetch"].append((received_at - produced_at) / 1000)
            stages["features"].append((features_at - received_at) / 1000)
            stages["queue"].append((inference_started_at - features_at) / 1000)
            stages["inference"].append((predicted_at - inference_started_at) / 1000)
            stages["publish_and_read"].append((recv - predicted_at) / 1000)
        windows.setdefault(int((t - t0) // 1_000_000), []).append((lat / 1000, float(batch)))
    sent_per_s: Counter[int] = Counter(int((a - t0) // 1_000_000) for a in actual.values())
    series = []
    for sec in sorted(set(windows) | set(sent_per_s)):
        w = windows.get(sec, [])
        series.append({
            "t_s": float(sec),
            "sent_per_s": float(sent_per_s.get(sec, 0)),
            "p99_ms": float(np.percentile([x for x, _ in w], 99)) if w else float("nan"),
            "p50_ms": float(np.percentile([x for x, _ in w], 50)) if w else float("nan"),
            "batch_mean": float(np.nanmean(bs)) if (bs := [b for _, b in w if b == b]) else float("nan"),
        })
    span = max(1e-6, (last_send - first_send) / 1e6)
    received = [got[0] for *_, eid in plan if (got := col.first.get(eid)) is not None]
    matched = len(received)
    missing_ids = [eid for *_, eid in plan if eid not in col.first][:20]
    return LoadResult(
        target_rate=target_rate,
        achieved_rate=len(actual) / span if len(actual) > 1 else 0.0,
        sent=len(actual),
        matched=matched,
        missing=len(plan) - matched,
        duplicates=col.duplicates,
        generator_lag_max_ms=lag_max,
        intended=intended_h,
        actual=actual_h,
        stages_ms={s: {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2)}
                   for s, v in stages.items() if v},
        windows=series,
        sustained_rate=sustained_rate(received, first_send, last_send),
        missing_ids=missing_ids,
    )

