"""The systems ``streaming bench pipeline`` measures, each as a :data:`loadtest.session.System`.

Every run of every system starts on fresh topics (Tansu slows as stored batches pile up) and, for
the ones that consume, with a fresh process and a fresh consumer group; the process is stopped
after the run. What each one publishes, and so how the load test's reader matches it:

* ``bare_broker``: nothing runs; the reader reads the generator's own events topic (match by event).
* ``faust_forward``, ``quix_forward``: the event records, key and value bytes unchanged (match by event).
* ``naive``, ``worker``: predictions (match by prediction, with the stage breakdown).

Broker requests (``broker_requests_per_event``): the Faust peers and our worker serve
``streaming_kafka_requests_total`` (aiokafka, counted by the ``streaming://`` transport) on their
``/metrics``; the Quix peer appends its librdkafka statistics to a JSON-lines file the bench names.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtest.reader import STATS_INTERVAL_MS
from loadtest.session import LoadSession, System, Target
from streaming.errors import UserError
from streaming.infra.processes import free_port, spawn, terminate

__all__ = ["SYSTEMS", "DESCRIPTIONS", "system_for"]

SYSTEMS = ("bare_broker", "faust_forward", "quix_forward", "naive", "worker")

DESCRIPTIONS = {
    "bare_broker": "no worker: the generator's events read back by a plain confluent-kafka consumer (assign())",
    "faust_forward": "Faust agent forwarding each record's bytes, driven like our worker (streaming:// transport, "
                     "5 ms fetch wait, take_events batches, app.producer.send, acks gathered, uvloop, log level info)",
    "quix_forward": "Quix Streams application forwarding each record's bytes (own venv; same fetch wait, "
                    "producer linger and acks, 6 s session timeout)",
    "naive": "tutorial-style Faust agent: one event at a time, one awaited Redis command per bucket operation "
             "per window feature, one ONNX run per event, each send's ack awaited",
    "worker": "our worker on the fraud pipeline (micro-batches, one Redis script call per batch, batched ONNX)",
}


def _env(session: LoadSession, topics: dict[str, str], group: str, metrics_port: int) -> dict[str, str]:
    return {**os.environ, **session.child_env(), "STREAMING_TOPIC_EVENTS": topics["in"],
            "STREAMING_TOPIC_PREDICTIONS": topics["out"], "STREAMING_APP_ID": group,
            "STREAMING_METRICS_PORT": str(metrics_port), "STREAMING_LOG_LEVEL": "info"}


#: how a child reports its broker requests: "metrics" (aiokafka, its /metrics) or "stats_file" (librdkafka statistics)
_REQUESTS = {"faust_forward": "metrics", "naive": "metrics", "quix_forward": "stats_file"}


def _child(session: LoadSession, name: str, argv: Callable[[dict[str, str], str, Path], list[str]],
           match: str) -> System:
    """A system that runs ``argv(topics, group, stats_file)`` as a child process between fresh topics."""

    @contextlib.contextmanager
    def start() -> Iterator[Target]:
        tag = uuid.uuid4().hex[:8]
        topics = session.fresh_topics({"in": f"events-{name}", "out": f"out-{name}"}, tag)
        group = f"bench-{name}-{tag}"
        log = session.settings.run_path / f"bench-{name}-{tag}.log"
        stats_file = session.settings.run_path / f"bench-{name}-{tag}.stats.jsonl"
        port = free_port()
        proc = spawn(argv(topics, group, stats_file), log, tie_to_parent=True,
                     env=_env(session, topics, group, port))
        how = _REQUESTS.get(name)
        urls = {name: f"http://127.0.0.1:{port}/metrics"} if how == "metrics" else {}
        logs = {name: stats_file} if how == "stats_file" else {}

        def check() -> None:
            if proc.poll() is not None:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
                raise UserError(f"{name} exited with {proc.returncode}: {tail} (log {log})")

        try:
            yield Target(topics["in"], topics["out"], match, pids={name: proc.pid}, check=check, name=name,
                         request_urls=urls, request_logs=logs)
            check()
        finally:
            terminate(proc.pid, timeout=15)
            with contextlib.suppress(Exception):
                proc.wait(5)
            stats_file.unlink(missing_ok=True)

    return start


def _bare(session: LoadSession) -> System:
    @contextlib.contextmanager
    def start() -> Iterator[Target]:
        topics = session.fresh_topics({"in": "events-bare"}, uuid.uuid4().hex[:8])
        yield Target(topics["in"], topics["in"], "event", warm_up=False, name="bare_broker")

    return start


def system_for(name: str, session: LoadSession, *, quix_python: Path | None = None) -> System:
    """The :data:`System` called ``name`` (``quix_forward`` needs the Quix venv's interpreter)."""
    s = session.settings
    if name == "bare_broker":
        return _bare(session)
    if name == "worker":
        return session.worker_target
    if name in ("faust_forward", "naive"):
        module = f"streaming.bench.pipeline.{'faust_forward' if name == 'faust_forward' else 'naive'}"
        return _child(session, name, lambda _t, _g, _f: [sys.executable, "-m", module],
                      "event" if name == "faust_forward" else "prediction")
    if name == "quix_forward":
        if quix_python is None:
            raise UserError("quix_forward needs the Quix venv")
        script = str(Path(__file__).with_name("quix_forward.py"))

        def argv(topics: dict[str, str], group: str, stats_file: Path) -> list[str]:
            cfg = {"bootstrap": session.bootstrap, "input": topics["in"], "output": topics["out"], "group": group,
                   "fetch_wait_ms": s.consumer_fetch_max_wait_ms, "linger_ms": s.producer_linger_ms,
                   "acks": s.producer_acks, "session_timeout_s": s.session_timeout_s,
                   "commit_interval_s": s.commit_interval_s, "stats_file": str(stats_file),
                   "stats_interval_ms": STATS_INTERVAL_MS}
            return [str(quix_python), script, json.dumps(cfg)]

        return _child(session, name, argv, "event")
    raise UserError(f"unknown system {name!r} ({', '.join(SYSTEMS)})")
