"""Redis down: the score step pauses and resumes (default), or scores with default features."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from streaming.events.codec import Codec
from streaming.infra.processes import free_port, spawn, terminate, wait_for_port
from streaming.worker.records import InRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import ScoreProcessor
from tests.conftest import ROOT, Servers, settings_from, worker_env
from tests.helpers import transaction

pytestmark = pytest.mark.integration


class OwnRedis:
    """A redis-server of this test's own, to stop and start."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc = None

    def start(self) -> None:
        self.proc = spawn([shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--save", "",
                           "--bind", "127.0.0.1"], self.tmp / "redis.log", tie_to_parent=True)
        assert wait_for_port("127.0.0.1", self.port, 10)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc.pid)
            self.proc.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def records(codec: Codec, n: int, card: str = "c1") -> list[InRecord]:
    now = time.time_ns() // 1000
    return [InRecord(card.encode(), codec.encode("transaction", transaction(f"deg-{now}-{i}", card=card)), "events",
                     0, i, now // 1000, now) for i in range(n)]


def runtime(servers: Servers, models_dir: Path, redis_url: str, pipeline: Path) -> Runtime:
    env = worker_env(servers, models_dir, pipeline=pipeline, STREAMING_REDIS_URL=redis_url)
    return Runtime.build(settings_from(env))


async def test_pause_then_resume(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    rds = OwnRedis(tmp_path)
    rds.start()
    try:
        rt = runtime(servers, models_dir, rds.url, ROOT / "models" / "fraud" / "pipeline.toml")
        proc = ScoreProcessor(rt)
        proc.max_backoff_s = 0.2
        rds.stop()
        task = asyncio.create_task(proc.process(records(rt.codec, 5)))
        await asyncio.sleep(1.5)
        assert not task.done()  # paused, not dropped, not crashed
        errors = rt.metrics.store_errors.labels("update_and_read")._value.get()
        assert errors >= 2
        rds.start()
        batch = await asyncio.wait_for(task, 10)
        assert batch.scored == 5 and all(r.topic == rt.settings.topic_predictions for r in batch.out)
        preds = [rt.codec.decode("prediction", r.value) for r in batch.out]
        assert all("default_features" not in p["flags"] for p in preds)
        await rt.store.close()
    finally:
        rds.stop()


async def test_default_features_when_the_pipeline_says_so(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    text = (ROOT / "models" / "fraud" / "pipeline.toml").read_text()
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(text.replace("slo_p99_ms = 50", 'slo_p99_ms = 50\non_store_error = "default"'))
    rds = OwnRedis(tmp_path)
    rds.start()
    rt = runtime(servers, models_dir, rds.url, pipeline)
    rds.stop()
    batch = await asyncio.wait_for(ScoreProcessor(rt).process(records(rt.codec, 4)), 10)
    preds = [rt.codec.decode("prediction", r.value) for r in batch.out]
    assert len(preds) == 4 and all(p["flags"] == ["default_features"] for p in preds)
    assert rt.metrics.events.labels("degraded")._value.get() == 4
    assert rt.metrics.store_errors.labels("log_served")._value.get() == 1
