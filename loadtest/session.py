"""Running load tests against a real worker on fresh topics, and the capacity search."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Producer
from tqdm import tqdm

from loadtest.reconcile import scrape_buckets, worker_view
from loadtest.report import plot_capacity, write_report
from loadtest.runner import RequestProbe, SampleSource, cpu_seconds, run_load
from loadtest.schedule import Phase, schedule
from loadtest.verdict import verdict_text
from streaming.demo import count_records
from streaming.errors import UserError
from streaming.events.producer import entity_key
from streaming.events.reader import TopicReader
from streaming.events.security import client_config
from streaming.events.topics import ensure_topics
from streaming.features.store import drop_namespace
from streaming.infra.processes import free_port
from streaming.infra.stack import Stack, StackState, check_broker, resolve_endpoints
from streaming.observability.kafka_requests import Sample, StatsSamples, scrape_counts
from streaming.settings import Settings
from streaming.synthetic.registry import generator_for
from streaming.worker.process import WorkerProcess
from streaming.worker.runtime import load_components

__all__ = ["LoadSession", "Target", "System", "capacity_search", "CURVE_KEYS", "read_stats_log"]

#: what a capacity curve keeps of each step
CURVE_KEYS = ("rate", "target_rate", "achieved_rate", "sustained_rate", "p50_ms", "p99_ms", "p999_ms", "missing",
              "slo_pass", "cpu_us_per_event", "broker_requests_per_event")


@dataclass(frozen=True)
class Target:
    """What one run drives: where the generator sends, where the reader reads, and what it matches there.

    ``match``: ``"prediction"`` (the worker's predictions, with the stage breakdown) or ``"event"``
    (records of the event schema: a forwarder's pass-through, or ``events_topic`` itself read back).
    ``warm_up``: before the measured schedule, send one event and wait until something comes out
    (the system has its partitions and its first record went through).
    ``request_urls``: role -> a ``/metrics`` URL serving ``streaming_kafka_requests_total`` (aiokafka
    clients), scraped just before the first send and just after the last; ``request_logs``: role -> a
    JSON-lines file of librdkafka statistics samples (:func:`read_stats_log`), read after the run.
    """

    events_topic: str
    output_topic: str
    match: str = "prediction"
    dlq_topic: str | None = None
    warm_up: bool = True
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid, whose CPU use the run reports
    check: Callable[[], None] | None = None  # raises when the system died (called while warming up)
    metrics_url: str | None = None  # our worker's /metrics: its own e2e histogram is reported beside ours
    name: str = "worker"  # the system, as the verdict names it
    request_urls: dict[str, str] = field(default_factory=dict)
    request_logs: dict[str, Path] = field(default_factory=dict)


#: starts a system on fresh topics for one run and stops it after (a context manager factory)
System = Callable[[], AbstractContextManager[Target]]


def _scrape_buckets(url: str | None) -> dict[float, float] | None:
    try:
        return None if url is None else scrape_buckets(url)
    except OSError:
        return None


def _scrape_counts(url: str) -> dict[str, float] | None:
    try:
        return scrape_counts(url)
    except OSError:
        return None


def read_stats_log(path: Path) -> list[Sample]:
    """Samples from a JSON-lines file of librdkafka statistics, one object a line with ``t`` (wall-clock s when
    received), ``ts`` (librdkafka's µs clock), ``name`` (client handle), ``produce`` and ``fetch`` (cumulative);
    a line being written (or anything unreadable) is skipped. The Quix peer writes one (quix_forward.py)."""
    samples = StatsSamples()
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            d = orjson.loads(line)
            samples.add_counts(float(d["t"]), float(d["ts"]), str(d["name"]),
                               {"produce": float(d["produce"]), "fetch": float(d["fetch"])})
        except (ValueError, KeyError, TypeError):
            continue
    return samples.samples()


def capacity_search(probe: Callable[[float], bool], *, start_rate: float, max_rate: float,
                    refine: int = 2, factor: float = 1.5, min_rate: float | None = None) -> tuple[float, float | None]:
    """MLPerf-server style: multiply the rate by ``factor`` from ``start_rate`` until a step fails, then bisect ``refine`` times.

    When the first step fails, the search goes down instead: it divides the rate by ``factor`` until a
    step passes (not below ``min_rate``, by default ``start_rate / factor**4`` but at least 1 event/s),
    then bisects between that rate and the last failing one.

    Returns (the highest passing rate or 0 when none passed, the lowest failing rate or None when none failed).

    >>> capacity_search(lambda r: r <= 3000, start_rate=1000, max_rate=50000)
    (2812.5, 3093.75)
    >>> capacity_search(lambda r: True, start_rate=100, max_rate=200)
    (150.0, None)
    >>> capacity_search(lambda r: r <= 300, start_rate=1000, max_rate=50000, factor=2)  # 1000, 500 fail; 250 passes
    (250.0, 312.5)
    >>> capacity_search(lambda r: False, start_rate=100, max_rate=1000, factor=2)  # 100, 50, 25, 12.5, 6.25: all fail
    (0.0, 6.25)
    """
    floor = max(1.0, start_rate / factor**4) if min_rate is None else min_rate
    good, bad = 0.0, None
    rate = start_rate
    while rate <= max_rate:
        if probe(rate):
            good, rate = rate, rate * factor
        else:
            bad = rate
            break
    if bad is not None and not good:  # the first step failed: search downward
        rate = bad / factor
        while rate >= floor * (1 - 1e-9):
            if probe(rate):
                good = rate
                break
            bad, rate = rate, rate / factor
    for _ in range(refine if bad is not None and good else 0):
        mid = (good + bad) / 2  # type: ignore[operator]
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good, bad


class LoadSession:
    """The embedded stack (started when no broker is configured), and one fresh worker per run.

    Each run gets fresh topics and a fresh consumer group: Tansu slows as stored batches pile up
    (docs/benchmarks.md), so runs must not inherit earlier runs' data.
    """

    def __init__(self, settings: Settings, say: Callable[[str], None], *, cpu_share: float | None = None) -> None:
        self.settings = settings
        self.say = say
        self.cpu_share = cpu_share  # recorded in every summary (the caller runs the session under it)
        _, self.codec, self.pipeline = load_components(settings)
        self._stack: Stack | None = None

    def __enter__(self) -> LoadSession:
        if not self.settings.broker_url:
            stack = Stack(self.settings, tie_to_parent=True)
            broker = stack.state.services.get("broker")
            if broker is None or not broker.running:
                stack.up()
                self._stack = stack
        self.bootstrap, self.redis_url = resolve_endpoints(self.settings)
        check_broker(self.bootstrap)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.down()

    def child_env(self) -> dict[str, str]:
        """What a system's process needs of this session's settings (endpoints, model registry, pipeline)."""
        st = self.settings
        return {"STREAMING_BROKER_URL": self.bootstrap, "STREAMING_REDIS_URL": self.redis_url,
                "STREAMING_RUN_DIR": str(st.run_path), "STREAMING_MODELS_DIR": str(st.path(st.models_dir)),
                "STREAMING_PIPELINE": str(st.path(st.pipeline)), "STREAMING_SCHEMAS_DIR": str(st.path(st.schemas_dir))}

    def fresh_topics(self, names: dict[str, str], tag: str) -> dict[str, str]:
        """Create ``{key: f"{name}-{tag}"}`` topics (the settings' partition count) and return their names."""
        topics = {k: f"{v}-{tag}" for k, v in names.items()}
        ensure_topics(self.bootstrap, topics.values(), self.settings.topic_partitions)
        return topics

    @contextlib.contextmanager
    def worker(self) -> Iterator[dict[str, str]]:
        tag = uuid.uuid4().hex[:8]
        topics = self.fresh_topics({"STREAMING_TOPIC_EVENTS": "events-lt", "STREAMING_TOPIC_PREDICTIONS": "predictions-lt",
                                    "STREAMING_TOPIC_LABELS": "labels-lt", "STREAMING_TOPIC_RETRAIN": "retrain-lt",
                                    "STREAMING_TOPIC_DLQ": "dlq-lt"}, tag)
        namespace = f"lt-{tag}:{self.pipeline.name}:"  # the run's own feature-store keys, dropped after it
        env = {**topics, **self.child_env(), "STREAMING_APP_ID": f"loadtest-{tag}",
               "STREAMING_METRICS_PORT": str(free_port()), "STREAMING_REDIS_PREFIX": namespace}
        w = WorkerProcess(env, self.settings.run_path / f"loadtest-worker-{tag}.log").start()
        try:
            yield {**env, "_WORKER_PID": str(w.proc.pid if w.proc else 0)}
        finally:
            w.stop()
            with contextlib.suppress(Exception):  # best effort: the keys expire anyway
                drop_namespace(self.redis_url, namespace, settings=self.settings)

    @contextlib.contextmanager
    def worker_target(self) -> Iterator[Target]:
        """Our worker on the pipeline (fresh topics, a fresh worker): the default system of a run."""
        with self.worker() as env:
            url = f"http://127.0.0.1:{env['STREAMING_METRICS_PORT']}/metrics"
            yield Target(env["STREAMING_TOPIC_EVENTS"], env["STREAMING_TOPIC_PREDICTIONS"], "prediction",
                         env["STREAMING_TOPIC_DLQ"], pids={"worker": int(env["_WORKER_PID"])},
                         metrics_url=url, name="worker", request_urls={"worker": url})

    def cpu_clocks(self, pids: dict[str, int]) -> dict[str, Callable[[], float | None]]:
        """CPU-seconds clocks for a run: the embedded broker (when this machine runs it), Redis (its
        ``INFO cpu``, wherever it runs) and ``pids``."""
        state = StackState.load(self.settings.run_path)
        procs = {name: svc.pid for name, svc in state.services.items()
                 if name == "broker" and svc.pid is not None and svc.running}
        clocks: dict[str, Callable[[], float | None]] = {k: functools.partial(cpu_seconds, pid)
                                                          for k, pid in {**procs, **pids}.items()}
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)

        def redis_cpu() -> float | None:
            try:
                info = client.info("cpu")
            except redis.RedisError:
                return None
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        clocks["redis"] = redis_cpu
        return clocks

    def warm_up(self, target: Target, timeout: float = 90.0) -> None:
        """Send one event (not part of any schedule) and wait until a record comes out of ``target``."""
        spec = self.pipeline.event
        tag = uuid.uuid4().hex[:8]
        item = next(iter(generator_for(self.pipeline, rate=1.0, seed=1, start_us=time.time_ns() // 1000,
                                       id_prefix=f"warmup-{tag}-")))
        ev = dict(item.event)
        ev[spec.time_field] = time.time_ns() // 1000
        reader = TopicReader(self.bootstrap, target.output_topic, from_beginning=True)
        producer = Producer({**client_config(self.bootstrap), "log.connection.close": False,
                             "partitioner": "murmur2_random"})
        try:
            producer.produce(target.events_topic, key=entity_key(ev, spec.key).encode(),
                             value=self.codec.encode(spec.schema, ev))
            producer.flush(10)
            deadline = time.monotonic() + timeout
            while not reader.poll(0.1):
                if target.check is not None:
                    target.check()
                if time.monotonic() > deadline:
                    raise UserError(f"nothing came out on {target.output_topic} within {timeout:.0f}s of the warm-up event")
        finally:
            reader.close()

    def run(self, *, profile: str, rate: float, duration_s: float, slo_p99_ms: float, linger_ms: float = 20.0,
            steps: list[Phase] | None = None, replay: list[float] | None = None, seed: int = 0,
            report_dir: Path | None = None, show_progress: bool = True, system: System | None = None,
            drain_s: float = 10.0) -> dict[str, Any]:
        """One run on a fresh ``system`` (default: our worker, :meth:`worker_target`)."""
        offsets = list(schedule(profile, rate=rate, duration_s=duration_s, seed=seed, steps=steps, replay=replay))
        if profile == "step" and steps:
            duration_s = sum(p.duration_s for p in steps)
        target = len(offsets) / duration_s if duration_s else 0.0
        with (system or self.worker_target)() as tgt:
            if tgt.warm_up:
                self.warm_up(tgt)
            baseline = _scrape_buckets(tgt.metrics_url)
            bar = tqdm(total=len(offsets), unit="ev", desc=f"{profile} {target:,.0f}/s", disable=not show_progress,
                       dynamic_ncols=True, mininterval=0.5)

            def progress(sent: int, total: int, got: int) -> None:
                bar.n = sent
                bar.set_postfix_str(f"received {got}")

            started_ms = int(time.time() * 1000)
            probes: dict[str, RequestProbe] = {k: functools.partial(_scrape_counts, url)
                                               for k, url in tgt.request_urls.items()}
            sources: dict[str, SampleSource] = {k: functools.partial(read_stats_log, path)
                                                for k, path in tgt.request_logs.items()}
            result = run_load(bootstrap=self.bootstrap, events_topic=tgt.events_topic,
                              predictions_topic=tgt.output_topic, pipeline=self.pipeline,
                              codec=self.codec, offsets=offsets, target_rate=target, linger_ms=linger_ms,
                              seed=seed, match=tgt.match, progress=progress, drain_s=drain_s,
                              cpu_clocks=self.cpu_clocks(tgt.pids), request_probes=probes,
                              request_samples=sources)
            bar.close()
            if tgt.dlq_topic:
                result.dead_letters = count_records(self.bootstrap, tgt.dlq_topic, started_ms)
            view = None
            if tgt.metrics_url is not None:
                try:
                    view = worker_view(tgt.metrics_url, slo_p99_ms, result.intended, result.actual, baseline)
                except OSError as exc:
                    self.say(f"could not read the worker's metrics ({exc}); no reconciliation")
        summary = result.summary(slo_p99_ms)
        if view is not None:
            summary["worker_histogram"] = view
        summary.update({"system": tgt.name, "profile": profile, "duration_s": duration_s,
                        "generator_linger_ms": linger_ms, "partitions": self.settings.topic_partitions,
                        "cpu_share": self.cpu_share})
        summary["verdict_text"] = verdict_text(summary)
        if report_dir is not None:
            path = write_report(report_dir, result, summary, f"Load test: {profile} at {target:,.0f} events/s")
            summary["report"] = str(path)
        return summary

    def capacity(self, *, slo_p99_ms: float, step_s: float, start_rate: float, max_rate: float,
                 report_dir: Path | None, refine: int = 2, system: System | None = None, label: str = "capacity",
                 linger_ms: float = 20.0, factor: float = 1.5, show_progress: bool = False,
                 keep_steps: bool = False) -> dict[str, Any]:
        """Highest Poisson rate with p99 <= SLO, nothing missing, and the generator keeping up.

        Each curve point keeps the step's nominal ``rate`` (what the search asked for) beside its
        ``target_rate`` (the Poisson schedule's own count over the step) and ``achieved_rate``.
        """
        curve: list[dict[str, Any]] = []

        def probe(rate: float) -> bool:
            s = self.run(profile="poisson", rate=rate, duration_s=step_s, slo_p99_ms=slo_p99_ms,
                         show_progress=show_progress, system=system, linger_ms=linger_ms)
            s["rate"] = round(rate, 1)
            curve.append(s)
            self.say(f"{label}: {rate:>8,.0f}/s  achieved {s['achieved_rate']:>8,.0f}/s  p99 {s['p99_ms']:>8.1f} ms  "
                     f"missing {s['missing']}  {'pass' if s['slo_pass'] else 'FAIL'}")
            return bool(s["slo_pass"])

        good, bad = capacity_search(probe, start_rate=start_rate, max_rate=max_rate, refine=refine, factor=factor)
        out: dict[str, Any] = {
            "slo_p99_ms": slo_p99_ms,
            "max_rate_at_slo": round(good, 1),
            "first_failing_rate": None if bad is None else round(bad, 1),
            "step_duration_s": step_s,
            "cpu_share": self.cpu_share,
            "curve": [{k: c.get(k) for k in CURVE_KEYS} for c in curve],
        }
        if keep_steps:
            out["steps"] = curve
        if report_dir is not None:
            out["plot"] = str(plot_capacity(report_dir, out["curve"], slo_p99_ms))
        return out
