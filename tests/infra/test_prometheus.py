"""A real Prometheus scrapes a real worker; an alert fires when its cause is induced (Redis stopped)."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.infra.processes import free_port, spawn, terminate, wait_for_port
from streaming.worker.process import WorkerProcess
from tests.conftest import ROOT, Servers, unique, worker_env
from tests.helpers import transaction
from tests.worker.test_degraded import OwnRedis

pytestmark = pytest.mark.integration


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success"
    return body["data"]


def ready(port: int) -> bool:
    """Prometheus answers 503 on its API until its TSDB is open; /-/ready says when it is."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait(predicate: Any, timeout: float, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    return predicate()


def test_series_exist_and_redis_down_fires_the_alert(servers: Servers, models_dir: Path, tmp_path: Path,
                                                     schema_registry) -> None:  # type: ignore[no-untyped-def]
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs it (Debian package prometheus)"
    rds = OwnRedis(tmp_path)
    rds.start()
    metrics_port, prom_port = free_port(), free_port()
    env = worker_env(servers, models_dir, STREAMING_REDIS_URL=rds.url, STREAMING_METRICS_PORT=str(metrics_port))
    # the real rules, with their `for` durations cut to 0 so that the test need not wait minutes
    rules = (ROOT / "infra" / "prometheus" / "rules" / "streaming.yml").read_text()
    (tmp_path / "rules.yml").write_text(re.sub(r"for: \d+[smh]", "for: 0s", rules))
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{tmp_path / 'rules.yml'}']\n"
        "scrape_configs:\n"
        f"  - job_name: streaming-worker\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    prom = spawn([binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log", tie_to_parent=True)
    try:
        assert wait_for_port("127.0.0.1", prom_port, 30, prom), (tmp_path / "prometheus.log").read_text()[-2000:]
        assert wait(lambda: ready(prom_port), 30), (tmp_path / "prometheus.log").read_text()[-2000:]
        codec = Codec(schema_registry)
        prod = EventProducer(servers.bootstrap, codec, "transaction", env["STREAMING_TOPIC_EVENTS"],
                             key_fields=["card_id"], linger_ms=5)
        for i in range(200):
            prod.send(transaction(unique("prom"), card=f"cp{i % 5}"))
        assert prod.flush() == 0
        up = wait(lambda: [r for r in api(prom_port, "query", query='up{job="streaming-worker"}')["result"]
                           if r["value"][1] == "1"], 30)
        assert up, "Prometheus never scraped the worker"
        for name in ("streaming_events_total", "streaming_e2e_latency_seconds_bucket", "streaming_stage_seconds_count",
                     "streaming_batch_size_count", "streaming_model_info", "streaming_consumer_lag_messages",
                     "streaming_event_loop_lag_seconds"):
            assert wait(lambda n=name: api(prom_port, "query", query=n)["result"], 20), f"no series {name}"
        scored = wait(lambda: [r for r in api(prom_port, "query", query='streaming_events_total{outcome="scored"}')
                               ["result"] if float(r["value"][1]) >= 200], 20)
        assert scored
        firing = lambda: [a for a in api(prom_port, "alerts")["alerts"]  # noqa: E731
                          if a["labels"]["alertname"] == "StreamingFeatureStoreErrors" and a["state"] == "firing"]
        assert not firing()
        # induce the cause: Redis goes away while events keep coming
        rds.stop()
        for i in range(20):
            prod.send(transaction(unique("prom-down"), card=f"cp{i % 5}"))
        assert prod.close() == 0
        assert wait(firing, 60), "StreamingFeatureStoreErrors did not fire with Redis down"
        assert worker.alive  # paused, not crashed
    finally:
        terminate(prom.pid)
        worker.stop()
        rds.stop()
