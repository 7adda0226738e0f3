"""``streaming demo``: the whole system on the embedded stack, with a summary.

Brings up the broker and Redis (unless configured), trains the first model
when there is none, starts a worker and the retrain job, plays synthetic
payments in real time with the fraud pattern switching a third of the way in
and labels following after a delay, reads the predictions back, and prints
(and writes) a summary. Ctrl-C stops everything it started.

The loop closes in the run: the monitors see the drift, one retrain request
goes out, the retrain job trains the next version on the feature log's
labelled rows, shadows it and promotes it when it wins, and the worker serves
it without stopping. The run works on its own copy of the model registry
(``<run_dir>/demo-models``), so the versions it makes do not change what
``models/`` serves; when the drift was seen but the new version is not served
yet at the end, the events go on (at most ``LOOP_WAIT_S`` more) until it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from loadtest.percentiles import percentiles
from loadtest.reader import STAGE_FIELDS, ReaderProcess, ReadResult
from streaming.events.producer import EVENT_LINGER_MS, LABEL_LINGER_MS, EventProducer
from streaming.events.reader import TopicReader
from streaming.events.topics import ensure_topics
from streaming.features.store import drop_namespace
from streaming.inference.registry import ModelRegistry
from streaming.infra.processes import free_port, spawn, terminate
from streaming.infra.stack import Stack, check_broker, resolve_endpoints
from streaming.settings import Settings
from streaming.synthetic.player import Player
from streaming.synthetic.registry import generator_for
from streaming.training.job import train_pipeline
from streaming.worker.process import WorkerProcess
from streaming.worker.runtime import load_components

__all__ = ["count_records", "run_demo", "scrape"]

#: how long the demo goes on after its duration for the retrain loop to close (a new version served)
#: the summary's latency timeline: the e2e p99 of the events produced in each window of this length
WINDOW_S = 5.0
LOOP_WAIT_S = 60.0
#: events served by the new version before the demo stops, once it is active
SERVED_AFTER_S = 5.0

#: malformed records published on purpose, to show dead letters
BAD_RECORDS = [b"not json at all", b'{"event_id": "bad-1"}', b"\x00\x00\x00\x00\x63garbage", b"[1, 2, 3]"]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a /metrics page keyed by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def count_records(bootstrap: str, topic: str, since_ms: int, idle_s: float = 1.0,
                  where: Callable[[dict[str, bytes]], bool] | None = None) -> int:
    """Records in ``topic`` with a timestamp at or after ``since_ms`` (and whose headers pass ``where``).

    Read, not computed from watermarks: Tansu's high watermark counts batches
    (the base offset of the last batch + 1), not records.
    """
    return sum(1 for m in records_since(bootstrap, topic, since_ms, idle_s) if where is None or where(_headers(m)))


def records_since(bootstrap: str, topic: str, since_ms: int, idle_s: float = 1.0) -> list[Any]:
    """The records of ``topic`` with a timestamp at or after ``since_ms``, read until it is quiet ``idle_s``."""
    reader = TopicReader(bootstrap, topic, from_beginning=True)
    try:
        out: list[Any] = []
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_s:
            msgs = reader.poll(0.2)
            if msgs:
                idle_since = time.monotonic()
            out += [m for m in msgs if m.timestamp()[1] >= since_ms]
        return out
    finally:
        reader.close()


def _headers(message: Any) -> dict[str, bytes]:
    return {k: v if isinstance(v, bytes) else str(v or "").encode() for k, v in (message.headers() or [])}


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(settings: Settings, *, rate: float, duration: float, label_delay: float, seed: int,
             report: Path | None = None, linger_ms: float = EVENT_LINGER_MS, cpu_share: float | None = None,
             retrain: bool = True) -> bool:
    """The demo; with ``cpu_share`` all of it (and a stack already up) runs on that fraction of the machine
    (:mod:`streaming.infra.cpushare`), recorded in the summary."""
    from loadtest.share import share_run

    with share_run(cpu_share, settings, lambda m: tqdm.write(f"demo: {m}")) as group:
        return _run_demo(settings, rate=rate, duration=duration, label_delay=label_delay, seed=seed, report=report,
                         linger_ms=linger_ms, cpu_share=cpu_share, retrain=retrain,
                         share_parent=None if group is None else group.path.parent)


def _run_demo(settings: Settings, *, rate: float, duration: float, label_delay: float, seed: int,
              report: Path | None, linger_ms: float, cpu_share: float | None, retrain: bool,
              share_parent: Path | None = None) -> bool:
    # Ctrl-C and SIGTERM stop everything the demo started (even when SIGINT was ignored on entry)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    say = lambda m: tqdm.write(f"demo: {m}")  # noqa: E731
    stack: Stack | None = None
    worker: WorkerProcess | None = None
    reader: ReaderProcess | None = None
    producers: list[EventProducer] = []
    children: list[int] = []
    groups: list[Any] = []
    namespaces: list[tuple[str, str]] = []
    run_dir = settings.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _, codec, pipeline = load_components(settings)
        if not settings.broker_url:
            stack = Stack(settings, tie_to_parent=True)
            if stack.state.services.get("broker") is not None and stack.state.services["broker"].running:
                # Tansu's cost grows with the record batches a partition holds (docs/benchmarks.md): topics that
                # earlier runs filled would slow this one down, so the run gets topics of its own
                tag = f"demo-{int(time.time())}"
                t = {k: f"{v}-{tag}" for k, v in settings.topics.items()}
                settings = dataclasses.replace(settings, topic_events=t["events"], topic_predictions=t["predictions"],
                                               topic_labels=t["labels"], topic_retrain=t["retrain"], topic_dlq=t["dlq"])
                say("using the embedded stack that is already up, on this run's own topics: "
                    + ", ".join(settings.topics.values()))
                stack = None  # not ours to stop
            else:
                state = stack.up()
                say("started " + ", ".join(f"{n} at {s.url}" for n, s in state.services.items()))
        bootstrap, redis_url = resolve_endpoints(settings)
        check_broker(bootstrap)

        source = ModelRegistry.from_settings(settings, pipeline.name)
        if not source.versions():
            say("no model yet: training the first one")
            train_pipeline(pipeline, source, progress=say)
        models_root = _own_registry(source, run_dir)
        registry = ModelRegistry(models_root, pipeline.name, signer=source.signer)
        active = registry.active()
        say(f"model {active.name} {active.version} (holdout ROC AUC {active.metadata['metrics']['roc_auc']:.3f}); "
            f"the run's registry: {models_root}")

        ensure_topics(bootstrap, settings.topics.values(), settings.topic_partitions)
        started_ms = int(time.time() * 1000)
        metrics_port = free_port()
        # the run's own feature-store namespace: no window from an earlier run (or a load test on the same
        # cards) leaks into this one; dropped at the end
        namespace = f"demo-{started_ms}:{pipeline.name}:"
        namespaces.append((redis_url, namespace))
        env = {**{f"STREAMING_TOPIC_{k.upper()}": v for k, v in settings.topics.items()},
               "STREAMING_BROKER_URL": bootstrap, "STREAMING_REDIS_URL": redis_url,
               "STREAMING_METRICS_PORT": str(metrics_port), "STREAMING_RUN_DIR": str(run_dir),
               "STREAMING_REDIS_PREFIX": namespace, "STREAMING_MODELS_DIR": str(models_root)}
        if retrain:  # started first: its imports are done while the worker joins its group
            job = spawn([sys.executable, "-m", "streaming", "retrain", "--timeout", str(duration + LOOP_WAIT_S + 120)],
                        run_dir / "demo-retrain.log", tie_to_parent=True, env={**os.environ, **env})
            children.append(job.pid)
            if cpu_share is not None and share_parent is not None:
                # batch work on a budget of its own: inside the serving share, a CFS quota throttles the whole
                # group whenever the job's training uses the time the worker leaves idle, niced or not (measured:
                # e2e p99 377-883 ms at share 0.5 with the job inside, docs/benchmarks.md)
                from streaming.infra.cpushare import CpuShare

                batch = CpuShare(cpu_share / 4, parent=share_parent)  # beside the serving group, not in it
                batch.add(job.pid)
                groups.append(batch)
                say(f"the retrain job runs outside the serving share, on its own: {batch.describe()}")
        say("starting the worker (joining the consumer group takes a few seconds)"
            + ("; the retrain job beside it" if retrain else ""))
        worker = WorkerProcess(env, run_dir / "demo-worker.log")
        worker.start()
        loop = _Loop(registry, active.version, f"http://127.0.0.1:{metrics_port}/metrics")
        now = time.time_ns() // 1000
        id_prefix = f"d{now // 1_000_000}-"
        # the load test's reader (its own process), with a live p99 for the progress line; it counts this run's
        # event ids only, so an external broker's older predictions on the same topic do not count
        reader = ReaderProcess(bootstrap, settings.topic_predictions, codec, count_prefix=id_prefix, live=True)
        reader.wait_ready()

        events = EventProducer(bootstrap, codec, pipeline.event.schema, settings.topic_events,
                               key_fields=pipeline.event.key, linger_ms=linger_ms)
        labels = EventProducer(bootstrap, codec, "label", settings.topic_labels, linger_ms=LABEL_LINGER_MS)
        producers += [events, labels]
        for bad in BAD_RECORDS:
            events.send_raw(bad, key=b"bad")
        now = play_start_us = time.time_ns() // 1000
        drift_at = now + int(duration / 3 * 1e6)
        gen = generator_for(pipeline, rate=rate, seed=seed, start_us=now, drift_at_us=drift_at, id_prefix=id_prefix)
        player = Player(gen, events, labels, id_field=pipeline.event.id_field, time_field=pipeline.event.time_field,
                        label_delay_s=label_delay, keep_ids=True)
        say(f"publishing ~{rate:g} events/s for {duration:g}s; the fraud pattern switches at {duration / 3:g}s; "
            f"labels follow after {label_delay:g}s; the retrain job acts on the monitors' requests")
        bar = tqdm(total=int(rate * duration), unit="ev", desc="events", dynamic_ncols=True)
        rd = reader

        def tick(stats: Any) -> None:
            bar.n = stats.events
            phase = "drift" if time.time_ns() // 1000 >= drift_at else "before drift"
            bar.set_postfix_str(f"predictions {rd.count()}, labels {stats.labels}, p99 {rd.live_p99_ms():.0f} ms, "
                                f"{phase}{loop.status()}")
            if not worker or not worker.alive:
                raise RuntimeError("the worker died; see " + str(run_dir / "demo-worker.log"))

        stats = player.run(duration, on_tick=tick)
        if retrain and loop.pending():
            say(f"the drift was seen and a new version is on its way: events go on (at most {LOOP_WAIT_S:g}s) "
                "until the worker serves it")
            stats = player.run(LOOP_WAIT_S, on_tick=tick, should_stop=lambda: not loop.pending())
        bar.n = stats.events
        bar.refresh()
        bar.close()
        say(f"published {stats.events} events; waiting for the last predictions and labels")
        complete = reader.wait_for(stats.events, timeout=30)
        player.drain_labels(label_delay + 1.0)
        time.sleep(3.0)  # let the learn agent take the last labels
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        events_topic = settings.topic_events.encode()
        from_events = lambda h: h.get("dlq.topic") == events_topic  # noqa: E731
        got = reader.stop()
        reader = None
        mine = _own(got, id_prefix)
        missing = [e for e in stats.event_ids if e not in mine]
        e2e = percentiles([(recv - st[_PRODUCED]) / 1000.0 for recv, st in mine.values()])
        wk = percentiles([(st[_PREDICTED] - st[_PRODUCED]) / 1000.0 for _, st in mine.values()])
        by_window = _p99_by_window([(st[_PRODUCED], (recv - st[_PRODUCED]) / 1000.0) for recv, st in mine.values()])
        summary: dict[str, Any] = {
            "events_produced": stats.events,
            "fraud_events": stats.positives,
            "predictions_received": len(mine),
            "missing_predictions": len(missing),
            "duplicate_predictions": got.duplicates,
            "malformed_records_sent": len(BAD_RECORDS),
            "dead_letters": count_records(bootstrap, settings.topic_dlq, started_ms, where=from_events),
            "label_dead_letters": count_records(bootstrap, settings.topic_dlq, started_ms,
                                                where=lambda h: not from_events(h)),
            "e2e_latency_ms": {k: round(v, 2) for k, v in e2e.items() if k != "count"},
            "worker_latency_ms": {k: round(v, 2) for k, v in wk.items() if k != "count"},
            "e2e_p99_ms_by_window": {"window_s": WINDOW_S, "p99": by_window},
            "labels_published": stats.labels,
            "labels_joined": _sum(samples, "streaming_labels_total", outcome="joined"),
            "drift_detections": _sum(samples, "streaming_drift_detections_total"),
            "retrain_requests": count_records(bootstrap, settings.topic_retrain, started_ms),
            "model_rocauc": round(_sum(samples, "streaming_online_metric", scorer="model", metric="rocauc"), 4),
            "learner_rocauc": round(_sum(samples, "streaming_online_metric", scorer="learner", metric="rocauc"), 4),
            "fallback_predictions": got.fallbacks,
            "rate": rate,
            "duration_s": duration,
            "generator_lag_ms": round(stats.lag_s * 1000, 1),
            "generator_linger_ms": linger_ms,
            "model_version": active.version,
            "cpu_share": cpu_share,
            "retrain_job": retrain,
            "loop": loop.summary(bootstrap, settings.topic_retrain, codec, started_ms, play_start_us, drift_at,
                                 got.versions),
        }
        ok = complete and not missing and summary["dead_letters"] == len(BAD_RECORDS)
        summary["ok"] = ok
        _write(summary, report or run_dir / "demo-summary.json", say)
        return ok
    except KeyboardInterrupt:
        say("interrupted; stopping")
        return False
    finally:
        for p in producers:
            p.close()
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.stop(timeout=10)
        if worker is not None:
            worker.stop()
        for pid in children:
            with contextlib.suppress(Exception):
                terminate(pid)
        for group in groups:
            with contextlib.suppress(Exception):
                group.close()
        for url, namespace in namespaces:
            with contextlib.suppress(Exception):  # best effort: the keys expire anyway
                drop_namespace(url, namespace, settings=settings)
        if stack is not None:
            stack.down()


_PRODUCED, _PREDICTED = STAGE_FIELDS.index("produced_at"), STAGE_FIELDS.index("predicted_at")


def _own_registry(source: ModelRegistry, run_dir: Path) -> Path:
    """A registry of the run's own holding the active version of ``source``: what the retrain job adds and
    promotes stays in it."""
    active = source.active()
    root = run_dir / "demo-models"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(active.path, root / source.name / active.version)
    ModelRegistry(root, source.name, signer=source.signer).activate(active.version)
    return root


class _Loop:
    """Where the retrain loop stands: requests (the worker's metrics), new versions and the active one (the
    registry)."""

    def __init__(self, registry: ModelRegistry, first: str, metrics_url: str) -> None:
        self.registry = registry
        self.first = first
        self.metrics_url = metrics_url
        self.requests = 0.0
        self.promoted_at: float | None = None
        self._checked = 0.0

    def _refresh(self) -> None:
        if time.monotonic() - self._checked < 0.5:
            return
        self._checked = time.monotonic()
        with contextlib.suppress(Exception):
            self.requests = _sum(scrape(self.metrics_url), "streaming_retrain_requests_total")
        if self.promoted_at is None and self.registry.active().version != self.first:
            self.promoted_at = time.monotonic()

    def new_versions(self) -> list[Any]:
        return [v for v in self.registry.versions() if v.version != self.first]

    def pending(self) -> bool:
        """A request went out and its version is not settled: not trained yet, or promoted only just now."""
        self._refresh()
        if not self.requests:
            return False
        if self.promoted_at is not None:
            return time.monotonic() - self.promoted_at < SERVED_AFTER_S
        return not self.new_versions()  # trained but not promoted: it stays in shadow, nothing to wait for

    def status(self) -> str:
        self._refresh()
        if self.promoted_at is not None:
            return f", {self.registry.active().version} promoted"
        if self.new_versions():
            return f", {self.new_versions()[-1].version} in shadow"
        return ", retrain requested" if self.requests else ""

    def summary(self, bootstrap: str, topic: str, codec: Any, started_ms: int, start_us: int, drift_at_us: int,
                served: dict[str, int]) -> dict[str, Any]:
        """The sequence: drift switch, request(s), the version trained, its evaluation, promotion, serving (times
        in seconds since the first event was published)."""
        reqs = _read_requests(bootstrap, topic, codec, started_ms)
        out: dict[str, Any] = {
            "drift_switch_s": round((drift_at_us - start_us) / 1e6, 1),
            "requests": len(reqs),
            "first_request": None,
            "new_version": None,
            "served_by_version": dict(sorted(served.items())),
        }
        if reqs:
            r = reqs[0]
            out["first_request"] = {"monitor": r["monitor"], "signal": r["signal"], "severity": r["severity"],
                                    "at_s": round((r["detected_at"] - start_us) / 1e6, 1)}
        new = self.new_versions()
        if new:
            v = new[0]
            ev = v.metadata.get("evaluation", {})
            created = v.path.joinpath("metadata.json").stat().st_mtime
            out["new_version"] = {
                "version": v.version,
                "trained_at_s": round(created - start_us / 1e6, 1),
                "rows": v.metadata.get("training_data", {}).get("rows"),
                "candidate_rocauc": ev.get("candidate", {}).get("roc_auc"),
                "active_rocauc": ev.get("active", {}).get("roc_auc"),
                "promoted": self.registry.active().version == v.version,
                "served": served.get(v.version, 0),
            }
        return out


def _read_requests(bootstrap: str, topic: str, codec: Any, since_ms: int) -> list[dict[str, Any]]:
    out = []
    for m in records_since(bootstrap, topic, since_ms):
        with contextlib.suppress(Exception):
            out.append(codec.decode("retrain_request", m.value()))
    return sorted(out, key=lambda r: r["detected_at"])


def _own(got: ReadResult, id_prefix: str) -> dict[str, tuple[int, tuple[int, ...]]]:
    """This run's predictions (its event ids start with ``id_prefix``): event id → (µs received, stage fields)."""
    return {eid: (recv, st) for eid, (recv, st) in got.first.items() if st is not None and eid.startswith(id_prefix)}


def _loop_lines(loop: dict[str, Any]) -> list[str]:
    """The retrain loop, step by step, in seconds since the start."""
    lines = [f"the loop                 fraud pattern switched at {loop['drift_switch_s']:.0f}s"]
    req = loop["first_request"]
    if req is None:
        return [*lines, "                         no drift detected: no retrain request"]
    lines.append(f"                         {req['at_s']:.1f}s  retrain requested by {req['monitor']} "
                 f"({req['signal']}, {req['severity']}); {loop['requests']} request(s) in all")
    new = loop["new_version"]
    if new is None:
        return [*lines, "                         no new version trained (see demo-retrain.log)"]
    lines.append(f"                         {new['trained_at_s']:.1f}s  {new['version']} trained on {new['rows']} "
                 f"labelled rows, in shadow: ROC AUC {new['candidate_rocauc']:.3f} vs the active "
                 f"{new['active_rocauc'] if new['active_rocauc'] is None else round(new['active_rocauc'], 3)}")
    if new["promoted"]:
        lines.append(f"                         {new['version']} promoted; it served {new['served']} events "
                     f"(by version: {loop['served_by_version']})")
    else:
        lines.append(f"                         {new['version']} stays in shadow (it did not win by the margin)")
    return lines


def _p99_by_window(samples: list[tuple[int, float]]) -> list[float]:
    """The e2e p99 (ms) of the events produced in each ``WINDOW_S`` of the run, from (produced µs, latency ms).

    >>> _p99_by_window([(0, 10.0), (1_000_000, 30.0), (6_000_000, 50.0)])
    [29.8, 50.0]
    """
    if not samples:
        return []
    t0 = min(t for t, _ in samples)
    windows: dict[int, list[float]] = {}
    for t, ms in samples:
        windows.setdefault(int((t - t0) / 1e6 // WINDOW_S), []).append(ms)
    return [round(percentiles(windows.get(i, [0.0]))["p99"], 1) for i in range(max(windows) + 1)]


def _write(summary: dict[str, Any], path: Path, say: Any) -> None:
    e2e, wk = summary["e2e_latency_ms"], summary["worker_latency_ms"]
    windows = summary.get("e2e_p99_ms_by_window", {})
    lines = [
        "",
        "=== streaming demo summary ===",
        f"events produced        {summary['events_produced']:>8}   ({summary['fraud_events']} fraud)",
        f"predictions received   {summary['predictions_received']:>8}   missing {summary['missing_predictions']}, "
        f"duplicates {summary['duplicate_predictions']}",
        f"e2e latency (ms)       p50 {e2e['p50']:.1f}  p95 {e2e['p95']:.1f}  p99 {e2e['p99']:.1f}  max {e2e['max']:.1f}"
        "   (event record timestamp -> prediction read back)",
        f"worker latency (ms)    p50 {wk['p50']:.1f}  p95 {wk['p95']:.1f}  p99 {wk['p99']:.1f}"
        "   (event record timestamp -> score ready)",
        f"e2e p99 per {windows.get('window_s', WINDOW_S):g} s (ms)   "
        + " ".join(f"{v:.0f}" for v in windows.get("p99", [])),
        f"dead letters           {summary['dead_letters']:>8}   (malformed records sent: {summary['malformed_records_sent']})",
        f"labels                 {summary['labels_published']:>8}   published, {summary['labels_joined']:.0f} joined, "
        f"{summary['label_dead_letters']} dead-lettered",
        f"drift detections       {summary['drift_detections']:>8.0f}   retrain requests {summary['retrain_requests']}",
        *_loop_lines(summary["loop"]),
        f"online ROC AUC         model {summary['model_rocauc']:.3f}   learner {summary['learner_rocauc']:.3f}   (rolling)",
        f"result                 {'OK: every event was scored once' if summary['ok'] else 'FAILED'}",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    path.with_suffix(".txt").write_text(text + "\n")
    say(f"summary written to {path} and {path.with_suffix('.txt')}")
