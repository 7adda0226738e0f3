"""A failed loop ends the worker with status 70 and one clear line, and what it held is redelivered
(issue 13: an agent restarted inside the process left its partition's commits stuck)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.events.schemas import SchemaRegistry
from streaming.inference.batching import StaticPolicy
from streaming.infra.processes import spawn
from streaming.observability.metrics import Metrics
from streaming.worker.fatal import EXIT_CRASH
from streaming.worker.loop import ScoreLoop
from streaming.worker.process import WorkerProcess
from streaming.worker.records import InRecord
from streaming.worker.score import ScoredBatch
from tests.conftest import Servers, unique, worker_env
from tests.helpers import decoded, read_until, transaction
from tests.worker.test_loop import _Models, _Publisher, _Scorer

# the worker, with its score loop's take replaced by one that fails (as a broken publisher or feature step would)
FAILING_WORKER = """
import streaming.worker.loop as loop
async def take(self, records, tokens):
    raise RuntimeError("injected failure in take")
loop.ScoreLoop.take = take
from streaming.cli import main
main()
"""


@pytest.fixture
def codec_(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


@pytest.mark.integration
def test_a_failed_handler_ends_the_process_and_its_records_are_redelivered(servers: Servers, models_dir: Path,
                                                                           codec_: Codec) -> None:
    env = worker_env(servers, models_dir)
    ids = [unique("fatal") for _ in range(5)]
    prod = EventProducer(servers.bootstrap, codec_, "transaction", env["STREAMING_TOPIC_EVENTS"], key_fields=["card_id"])
    for eid in ids:
        prod.send(transaction(eid, card="cf"))
    assert prod.close() == 0
    log = servers.run_dir / f"{env['STREAMING_APP_ID']}-failing.log"
    proc = spawn([sys.executable, "-c", FAILING_WORKER, "worker"], log, tie_to_parent=True,
                 env={**os.environ, **env, "STREAMING_LOG_LEVEL": "info"})
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == EXIT_CRASH, text[-2000:]
    assert "injected failure in take" in text and f"exits with status {EXIT_CRASH}" in text

    worker = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()  # the supervisor's restart
    try:
        msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"],
                          lambda got: set(ids) <= {p["event_id"] for p in decoded(codec_, "prediction", got)}, 60)
    finally:
        worker.stop()
    assert set(ids) <= {p["event_id"] for p in decoded(codec_, "prediction", msgs)}


class _FailingScorer(_Scorer):
    async def score(self, rows: Sequence[Any], *, wait_log: bool = True) -> ScoredBatch:
        raise RuntimeError("inference broke")


async def test_a_failed_inference_loop_is_reported_at_once() -> None:
    failures: list[BaseException] = []
    loop = ScoreLoop(_FailingScorer(), _Publisher(), StaticPolicy(4, 0.001), _Models(), Metrics(),  # type: ignore[arg-type]
                     queue_rows=16, take_rows=8, on_failure=failures.append)
    await loop.take([InRecord(b"k", b"ok", "events", 0, 0, None, 0)], [0])
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [str(f) for f in failures] == ["inference broke"]  # reported without waiting for the next fetch
