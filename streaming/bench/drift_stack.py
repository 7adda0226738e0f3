"""One ``streaming bench drift`` run through the real broker, Redis and worker.

A run owns fresh topics (Tansu slows as stored batches pile up), a fresh consumer group and a fresh
feature-store namespace (``STREAMING_REDIS_PREFIX``: no label claim, learner checkpoint or drift claim of an
earlier run leaks in; dropped afterwards), and a fresh worker on the SEA pipeline and the bench's model
registry. Once the worker has scored a warm-up event (its partitions are assigned), the stream is made
with event times starting just ahead of now and played at its fixed rate: each event at its event time,
and its label either right after it (``lag`` 0) or ``lag`` events later (sent beside the event ``lag``
places on; after the last event the pace goes on until every label is out). The run then waits until the
worker has accounted for every label (``streaming_labels_total``, every outcome), reads the retrain
requests from the run's retrain topic (as many as the worker counted, ``streaming_retrain_requests_total``)
and scrapes the learner's prequential accuracy (``streaming_online_metric``) from the worker's /metrics. While
it plays, the worker's ``streaming_labels_waiting`` is sampled four times a second: a label that arrives before
its event's vector is logged waits and is learned later, out of stream order (``labels_waiting_max``).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.demo import scrape
from streaming.events.codec import Codec
from streaming.events.producer import EVENT_LINGER_MS, LABEL_LINGER_MS, EventProducer
from streaming.events.reader import TopicReader
from streaming.events.topics import ensure_topics
from streaming.features.store import drop_namespace
from streaming.infra.processes import free_port
from streaming.infra.stack import Stack, check_broker, resolve_endpoints
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from streaming.synthetic.fraud import Labelled
from streaming.synthetic.registry import generator_for
from streaming.worker.process import WorkerProcess

__all__ = ["StackRun", "endpoints", "run_through_stack"]

#: how far ahead of now the first event's time lies (the producers connect meanwhile)
LEAD_S = 0.5
#: after the last label: how long the worker may take to account for every label (beyond the label wait)
ACCOUNT_S = 30.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True)
class StackRun:
    """Where a run's worker runs, what it serves, and what the run is called."""

    bootstrap: str
    redis_url: str
    codec: Codec
    pipeline: Pipeline
    pipeline_file: Path
    models_root: Path
    schemas_dir: Path
    run_dir: Path
    name: str


@contextlib.contextmanager
def endpoints(settings: Settings) -> Iterator[tuple[str, str]]:
    """The broker and Redis of ``settings``: the embedded stack, started (and stopped after) when none is up."""
    stack = None
    if not settings.broker_url:
        candidate = Stack(settings, tie_to_parent=True)
        broker = candidate.state.services.get("broker")
        if broker is None or not broker.running:
            candidate.up()
            stack = candidate
    try:
        bootstrap, redis_url = resolve_endpoints(settings)
        check_broker(bootstrap)
        yield bootstrap, redis_url
    finally:
        if stack is not None:
            stack.down()


def _total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, lab), v in samples.items():
        if n == name:
            key = dict(lab).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def _warm_up(ctx: StackRun, events: EventProducer, predictions: str, worker: WorkerProcess, tag: str,
             timeout: float = 90.0) -> None:
    """One event (no label) through the worker: its partitions are assigned and its model is loaded."""
    spec = ctx.pipeline.event
    item = next(iter(generator_for(ctx.pipeline, rate=1.0, seed=0, start_us=time.time_ns() // 1000,
                                   id_prefix=f"warmup-{tag}-")))
    reader = TopicReader(ctx.bootstrap, predictions, from_beginning=True)
    try:
        events.send({**item.event, spec.time_field: time.time_ns() // 1000})
        events.flush()
        deadline = time.monotonic() + timeout
        while not reader.poll(0.1):
            if not worker.alive:
                raise RuntimeError(f"the worker died while warming up: {worker.tail(5)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no prediction within {timeout:.0f}s of the warm-up event; see {worker.log_path}")
    finally:
        reader.close()


def _play(items: list[Labelled], events: EventProducer, labels: EventProducer, *, lag: int, rate: float,
          id_field: str, worker: WorkerProcess, tick: Callable[[], None]) -> float:
    """Publish ``items`` at their event times and each label ``lag`` events later; the worst lag behind schedule (s).

    ``tick`` is called every quarter of a second of the schedule (and checks that the worker lives)."""
    start_s = int(items[0].event["event_time"]) / 1e6
    behind = 0.0
    for i in range(len(items) + lag):
        due = start_s + i / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        if i < len(items):
            events.send(items[i].event)
        j = i - lag
        if 0 <= j < len(items):
            labels.send({"event_id": str(items[j].event[id_field]), "label": int(items[j].label),
                         "label_time": time.time_ns() // 1000}, key=str(items[j].event[id_field]))
        if i % max(1, round(rate / 4)) == 0:
            if not worker.alive:
                raise RuntimeError(f"the worker died during the run: {worker.tail(5)}")
            tick()
    events.flush()
    labels.flush()
    return behind


def _accounted(url: str, published: int, timeout: float, worker: WorkerProcess) -> Samples:
    """Scrape the worker until every published label has an outcome (or ``timeout``); the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if _total(samples, "streaming_labels_total") >= published or time.monotonic() > deadline:
            return samples
        if not worker.alive:
            raise RuntimeError(f"the worker died before accounting for every label: {worker.tail(5)}")
        time.sleep(0.5)


def _read_requests(ctx: StackRun, topic: str, expected: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The run's retrain requests: at least ``expected`` of them (or what came within ``timeout``), then 1 s idle."""
    reader = TopicReader(ctx.bootstrap, topic, from_beginning=True)
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while time.monotonic() < deadline and (len(out) < expected or time.monotonic() - idle_since < 1.0):
            msgs = reader.poll(0.2)
            if msgs:
                idle_since = time.monotonic()
            out.extend(ctx.codec.decode("retrain_request", m.value()) for m in msgs)
    finally:
        reader.close()
    return out


def run_through_stack(ctx: StackRun, make_stream: Callable[[int, str], list[Labelled]], *, lag: int,
                      rate: float) -> dict[str, Any]:
    """One run (see the module's text); ``make_stream(start_us, id_prefix)`` makes its events.

    Returns the stream (``items``, ``start_us``), the labels published and their outcomes, the decoded
    retrain requests, the worker's metrics of interest and the run's timings.
    """
    t0 = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    names = {k: f"drift-{ctx.name}-{k}-{tag}" for k in ("events", "predictions", "labels", "retrain", "dlq")}
    ensure_topics(ctx.bootstrap, names.values(), 1)
    namespace = f"drift-{tag}:{ctx.pipeline.name}:"
    port = free_port()
    env = {**{f"STREAMING_TOPIC_{k.upper()}": v for k, v in names.items()},
           "STREAMING_BROKER_URL": ctx.bootstrap, "STREAMING_REDIS_URL": ctx.redis_url,
           "STREAMING_PIPELINE": str(ctx.pipeline_file), "STREAMING_MODELS_DIR": str(ctx.models_root),
           "STREAMING_SCHEMAS_DIR": str(ctx.schemas_dir), "STREAMING_RUN_DIR": str(ctx.run_dir),
           "STREAMING_APP_ID": f"drift-{tag}", "STREAMING_METRICS_PORT": str(port),
           "STREAMING_REDIS_PREFIX": namespace, "STREAMING_TOPIC_PARTITIONS": "1"}
    url = f"http://127.0.0.1:{port}/metrics"
    log = ctx.run_dir / f"drift-worker-{ctx.name}-{tag}.log"
    spec = ctx.pipeline.event
    worker = WorkerProcess(env, log)
    producers: list[EventProducer] = []
    try:
        worker.start()
        events = EventProducer(ctx.bootstrap, ctx.codec, spec.schema, names["events"], key_fields=spec.key,
                               linger_ms=EVENT_LINGER_MS)
        labels = EventProducer(ctx.bootstrap, ctx.codec, "label", names["labels"], linger_ms=LABEL_LINGER_MS)
        producers += [events, labels]
        _warm_up(ctx, events, names["predictions"], worker, tag)
        started = time.monotonic()
        items = make_stream(time.time_ns() // 1000 + int(LEAD_S * 1e6), f"d{tag}-")
        waiting = [0.0]

        def tick() -> None:  # how many labels wait for their vector: they are learned later, out of stream order
            with contextlib.suppress(OSError):
                waiting.append(_total(scrape(url), "streaming_labels_waiting"))

        behind = _play(items, events, labels, lag=lag, rate=rate, id_field=spec.id_field, worker=worker, tick=tick)
        played = time.monotonic()
        samples = _accounted(url, len(items), ctx.pipeline.learner.label_wait_s + ACCOUNT_S, worker)
        requested = int(_total(samples, "streaming_retrain_requests_total"))
        requests = _read_requests(ctx, names["retrain"], requested)
        samples = scrape(url)
        metric = {m: _total(samples, "streaming_online_metric", model=ctx.pipeline.name, scorer=s, metric=m2)
                  for m, (s, m2) in {"learner_accuracy": ("learner", "accuracy"),
                                     "model_accuracy": ("model", "accuracy")}.items()}
        return {
            "items": items,
            "start_us": int(items[0].event[spec.time_field]),
            "labels_published": len(items),
            "label_outcomes": {k: int(v) for k, v in _by_label(samples, "streaming_labels_total", "outcome").items()},
            "labels_joined": int(_total(samples, "streaming_labels_total", outcome="joined")),
            "requests": requests,
            "requests_counted": requested,
            "learner_labels": int(_total(samples, "streaming_learner_labels")),
            "drift_detections": int(_total(samples, "streaming_drift_detections_total")),
            "labels_waiting_max": int(max(waiting)),
            **metric,
            "behind_schedule_max_s": round(behind, 3),
            "play_s": round(played - started, 1),
            "settle_s": round(time.monotonic() - played, 1),
            "wall_s": round(time.monotonic() - t0, 1),
            "worker_log": str(log),
        }
    finally:
        for p in producers:
            with contextlib.suppress(Exception):
                p.close()
        worker.stop()
        shutil.rmtree(ctx.run_dir / f"{env['STREAMING_APP_ID']}-data", ignore_errors=True)  # Faust's empty data dir
        with contextlib.suppress(Exception):  # best effort: the keys expire anyway
            drop_namespace(ctx.redis_url, namespace)
