"""SIGTERM stops the worker cleanly within its stop timeout even when the broker or Redis is gone."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.events.schemas import SchemaRegistry
from streaming.infra.processes import terminate
from streaming.infra.stack import Stack
from streaming.settings import Settings
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, unique, worker_env
from tests.helpers import read_until, transaction

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 5.0


@pytest.fixture
def codec_(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


def test_sigterm_with_the_broker_down_exits_within_the_stop_timeout(servers: Servers, models_dir: Path,
                                                                      codec_: Codec, tmp_path: Path) -> None:
    stack = Stack(Settings.from_env({}, run_dir=str(tmp_path), redis_url=servers.redis_url, broker_url=""),
                  tie_to_parent=True)
    broker = stack.up().services["broker"]
    own = Servers(broker.url, servers.redis_url, tmp_path)
    env = worker_env(own, models_dir, STREAMING_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        prod = EventProducer(broker.url, codec_, "transaction", env["STREAMING_TOPIC_EVENTS"], key_fields=["card_id"])
        for _ in range(20):
            prod.send(transaction(unique("s"), card="cs1"))
        assert prod.close() == 0
        worker.start()
        read_until(broker.url, env["STREAMING_TOPIC_PREDICTIONS"], lambda got: len(got) >= 20, timeout=30)
        assert broker.pid is not None and terminate(broker.pid)  # the broker goes away for good
        time.sleep(2.0)
        assert worker.proc is not None and worker.alive
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(timeout=STOP_TIMEOUT_S + 20)
        except Exception:
            pytest.fail(f"the worker did not stop {STOP_TIMEOUT_S + 20:.0f}s after SIGTERM: {worker.tail(5)}")
        took = time.monotonic() - t0
        assert took <= STOP_TIMEOUT_S + 3, took  # + the process's own exit (the event loop's close)
        log = (tmp_path / "worker.log").read_text(errors="replace")
        # a clean stop that gave up on the broker, not the watchdog's hard exit
        assert code == 0 and "did not stop within" not in log, (code, worker.tail(5))
        assert "did not finish within" in log  # it said what it gave up on
    finally:
        if worker.alive:
            worker.kill()
        stack.down()


def test_sigterm_with_redis_down_stops_cleanly_and_nothing_is_lost(servers: Servers, models_dir: Path,
                                                                    codec_: Codec, tmp_path: Path) -> None:
    from tests.helpers import decoded
    from tests.worker.test_degraded import OwnRedis

    rds = OwnRedis(tmp_path)
    rds.start()
    env = worker_env(servers, models_dir, STREAMING_REDIS_URL=rds.url, STREAMING_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    prod = EventProducer(servers.bootstrap, codec_, "transaction", env["STREAMING_TOPIC_EVENTS"], key_fields=["card_id"])
    try:
        worker.start()
        first = [unique("r") for _ in range(10)]
        for eid in first:
            prod.send(transaction(eid, card="cr1"))
        prod.flush()
        read_until(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"], lambda got: len(got) >= 10, timeout=30)
        rds.stop()  # the worker pauses on the feature store, holding what it took
        held = [unique("r") for _ in range(10)]
        for eid in held:
            prod.send(transaction(eid, card="cr1"))
        prod.flush()
        time.sleep(3.0)
        assert worker.proc is not None and worker.alive
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.proc.wait(timeout=STOP_TIMEOUT_S + 20)
        took = time.monotonic() - t0
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert code == 0 and "did not stop within" not in log, (code, worker.tail(5))
        assert took <= STOP_TIMEOUT_S + 3, took
        rds.start()  # Redis is back (empty: no persistence); a new worker takes the held events again
        worker = WorkerProcess(env, tmp_path / "worker2.log").start()
        msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"],
                          lambda got: set(held) <= {p["event_id"] for p in decoded(codec_, "prediction", got)}, 60)
        assert set(held) <= {p["event_id"] for p in decoded(codec_, "prediction", msgs)}
    finally:
        prod.close()
        if worker.alive:
            worker.kill()
        rds.stop()
