"""SIGTERM stops the worker even when the broker is gone (nothing left to commit to)."""

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
        assert took <= STOP_TIMEOUT_S + 10, took
        log = (tmp_path / "worker.log").read_text(errors="replace")
        # either Faust stopped by itself, or the watchdog ended it and said why
        assert code == 0 or "did not stop within" in log, (code, worker.tail(5))
    finally:
        if worker.alive:
            worker.kill()
        stack.down()
