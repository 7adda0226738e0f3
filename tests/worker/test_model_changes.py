"""Model changes without a stop: hot swap under load, shadow, rollback, a corrupt model refused."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from streaming.demo import scrape
from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.infra.processes import free_port
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, unique, worker_env
from tests.helpers import decoded, read_until, transaction

pytestmark = pytest.mark.integration


@pytest.fixture
def registry_copy(models_dir: Path, tmp_path: Path) -> Path:
    """A registry of our own: v1 (the session's model) and v2 (the same model, another version)."""
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    from streaming.inference.registry import ModelRegistry

    reg = ModelRegistry(root, "fraud")
    v1 = reg.active()
    reg.write(v1.onnx_path.read_bytes(), {**v1.metadata, "note": "v2 for the swap test"})
    reg.activate("v1")
    return root


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streaming", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_swap_shadow_rollback_and_refusal(servers: Servers, registry_copy: Path, schema_registry) -> None:  # type: ignore[no-untyped-def]
    env = worker_env(servers, registry_copy, STREAMING_METRICS_PORT=str(free_port()), STREAMING_BATCH_MAX_ROWS="64")
    codec = Codec(schema_registry)
    worker = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()
    full_env = worker.env
    prod = EventProducer(servers.bootstrap, codec, "transaction", env["STREAMING_TOPIC_EVENTS"],
                         key_fields=["card_id"], linger_ms=5)
    ids: list[str] = []

    def send(n: int, pace_s: float = 0.0) -> None:
        for i in range(n):
            eid = unique("swap")
            ids.append(eid)
            prod.send(transaction(eid, card=f"cs{i % 9}"))
            if pace_s:
                time.sleep(pace_s)
        prod.flush()

    try:
        send(300, pace_s=0.002)
        # shadow v2, then activate it while events flow, then roll back
        assert cli(full_env, "models", "shadow", "v2").returncode == 0
        send(300, pace_s=0.005)
        assert cli(full_env, "models", "activate", "v2").returncode == 0
        send(600, pace_s=0.005)
        assert cli(full_env, "models", "rollback").returncode == 0
        send(600, pace_s=0.005)
        # a corrupt v3: `activate` refuses it; forced into the pointer, the worker refuses it and v1 serves on
        from streaming.inference.registry import ModelRegistry

        reg = ModelRegistry(registry_copy, "fraud")
        v3 = reg.write(b"corrupt", {"inputs": reg.active().inputs})
        v3.onnx_path.write_bytes(b"garbage that is not the recorded model")
        refused = cli(full_env, "models", "activate", "v3")
        assert refused.returncode == 2 and "does not match its recorded sha256" in refused.stderr
        (registry_copy / "fraud" / "active.json").write_text('{"version": "v3", "history": ["v1"]}')
        time.sleep(2.5)
        send(300, pace_s=0.002)
        msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"],
                          lambda got: len(got) >= len(ids), timeout=60)
        url = f"http://127.0.0.1:{env['STREAMING_METRICS_PORT']}/metrics"
        samples = scrape(url)
        assert worker.alive
    finally:
        prod.close()
        worker.stop()

    preds = decoded(codec, "prediction", msgs)
    seen = Counter(p["event_id"] for p in preds)
    assert set(seen) == set(ids) and max(seen.values()) == 1  # nothing lost, nothing scored twice
    order = [p["model_version"] for p in preds]  # one partition: predictions are in event order
    changes = [(a, b) for a, b in itertools.pairwise(order) if a != b]
    assert changes == [("v1", "v2"), ("v2", "v1")]  # activate, rollback; the corrupt v3 never served
    by_batch: dict[tuple[int, int], set[str]] = {}
    for p in preds:
        by_batch.setdefault((p["received_at"], p["batch_size"]), set()).add(p["model_version"])
    assert all(len(v) == 1 for v in by_batch.values())  # the version changes at a batch boundary
    assert samples[("streaming_model_refused_total", (("role", "active"),))] == 1.0
    assert samples[("streaming_model_changes_total", (("role", "shadow"),))] >= 2  # on, then off when promoted
    assert samples[("streaming_shadow_score_diff_count", ())] >= 1  # shadow scored and compared
    assert ("streaming_model_info", (("model", "fraud"), ("provider", "CPUExecutionProvider"),
                                     ("version", "v1"))) in samples
