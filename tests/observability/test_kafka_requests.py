"""Counting our clients' broker requests: the aiokafka wrapper, the /metrics parse, librdkafka statistics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.infra.processes import free_port
from streaming.observability import kafka_requests as kr
from streaming.observability.metrics import Metrics
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, unique, worker_env
from tests.helpers import score_events


class _Request:
    def __init__(self, key: int) -> None:
        self.API_KEY = key


class _Conn:
    """Stands in for aiokafka's connection: ``send(request, expect_response=True)``."""

    sent: list[int]

    def __init__(self) -> None:
        self.sent = []

    def send(self, request: Any, expect_response: bool = True) -> tuple[int, bool]:
        self.sent.append(request.API_KEY)
        return request.API_KEY, expect_response


def _value(api: str) -> float:
    return kr.REQUESTS.labels("aiokafka", api)._value.get()


def test_the_wrapper_counts_by_api_once_however_often_installed() -> None:
    class Conn(_Conn):
        pass

    kr.install(Conn)
    wrapped = Conn.send
    kr.install(Conn)  # idempotent: still the one wrapper
    assert Conn.send is wrapped
    before = {api: _value(api) for api in ("Produce", "Fetch", "other")}
    conn = Conn()
    assert conn.send(_Request(0)) == (0, True)  # arguments and the return value pass through
    assert conn.send(_Request(1), expect_response=False) == (1, False)
    conn.send(_Request(1))
    conn.send(_Request(3))  # Metadata
    assert conn.sent == [0, 1, 1, 3]
    assert _value("Produce") - before["Produce"] == 1
    assert _value("Fetch") - before["Fetch"] == 2
    assert _value("other") - before["other"] == 1


def test_the_transport_installs_it_on_aiokafka() -> None:
    import streaming.worker.transport  # noqa: F401  (installs at import)

    assert kr.installed()


def test_the_workers_registry_serves_the_counter() -> None:
    kr.install()
    registry = CollectorRegistry()
    Metrics(registry=registry)
    Metrics(registry=CollectorRegistry())  # another worker's registry in the same process: no clash
    counts = kr.counts_from_metrics(generate_latest(registry).decode())
    assert set(counts) == {"produce", "fetch"}
    kr.register(registry)  # twice: no error


def test_librdkafka_statistics_to_window_counts() -> None:
    samples = kr.StatsSamples(clock=lambda: 0.0)
    # delivered late: received 10.5 s but made at ts 10.0 s; the prompt one (received 11.0, ts 11.0) sets the clock
    samples.add({"name": "p", "ts": 10_000_000, "brokers": {"b": {"req": {"Produce": 0, "Fetch": 0}}}}, 10.5)
    samples.add({"name": "p", "ts": 11_000_000, "brokers": {"b": {"req": {"Produce": 100, "Fetch": 20}}}}, 11.0)
    times = [t for t, _name, _c in samples.samples()]
    assert times == [10.0, 11.0]
    assert kr.window_delta(samples.samples(), 10.25, 10.75) == {"produce": 50.0, "fetch": 10.0}
    samples.callback("not json")  # ignored
    assert len(samples) == 2


def test_read_stats_log_skips_a_line_being_written(tmp_path: Path) -> None:
    from loadtest.session import read_stats_log

    path = tmp_path / "stats.jsonl"
    lines = [{"t": 1.0, "ts": 1_000_000, "name": "c", "produce": 0, "fetch": 0},
             {"t": 2.0, "ts": 2_000_000, "name": "c", "produce": 8, "fetch": 40}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": 3.0, "ts"')
    samples = read_stats_log(path)
    assert [c for _t, _n, c in samples] == [{"produce": 0.0, "fetch": 0.0}, {"produce": 8.0, "fetch": 40.0}]
    assert read_stats_log(tmp_path / "absent.jsonl") == []


@pytest.mark.integration
def test_the_workers_metrics_count_its_produce_and_fetch_requests(servers: Servers, models_dir: Path,
                                                                  schema_registry: SchemaRegistry) -> None:
    codec = Codec(schema_registry)
    env = worker_env(servers, models_dir, STREAMING_METRICS_PORT=str(free_port()))
    worker = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()
    try:
        ids = [unique("req") for _ in range(5)]
        assert len(score_events(servers.bootstrap, env, codec, ids, cards=2)) >= len(ids)
        url = f"http://127.0.0.1:{env['STREAMING_METRICS_PORT']}/metrics"
        deadline = time.monotonic() + 10
        counts = kr.scrape_counts(url)
        while counts.get("produce", 0) < 1 and time.monotonic() < deadline:  # the predictions' acks
            time.sleep(0.2)
            counts = kr.scrape_counts(url)
        assert counts["produce"] >= 1
        assert counts["fetch"] > 0
    finally:
        worker.stop()
