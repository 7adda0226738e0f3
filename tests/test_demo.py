"""The main job, shortened: every event produced comes back as exactly one prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.settings import project_root
from tests.conftest import Servers

pytestmark = pytest.mark.integration


def test_short_demo_closes_the_loop(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    """The main job, shortened: every event scored once, and the retrain loop closed within the run: the
    fraud pattern switches, one retrain request, the retrain job's new version promoted and served."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMING_")}
    env.update({"STREAMING_RUN_DIR": str(tmp_path), "STREAMING_MODELS_DIR": str(models_dir),
                "STREAMING_REDIS_URL": servers.redis_url})
    done = subprocess.run([sys.executable, "-m", "streaming", "demo", "--duration", "40", "--rate", "400",
                           "--label-delay", "1"], capture_output=True, text=True, env=env, timeout=400,
                          cwd=project_root())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "demo-summary.json").read_text())
    assert summary["predictions_received"] == summary["events_produced"] > 2000
    assert summary["missing_predictions"] == 0 and summary["duplicate_predictions"] == 0
    assert summary["dead_letters"] == summary["malformed_records_sent"] == 4
    assert summary["labels_joined"] == summary["labels_published"] == summary["events_produced"]
    assert "=== streaming demo summary ===" in done.stdout
    loop = summary["loop"]
    assert loop["requests"] == 1, loop  # one drift, one request
    assert loop["first_request"]["at_s"] > loop["drift_switch_s"], loop  # not a false alarm before the switch
    new = loop["new_version"]
    assert new is not None and new["version"] == "v2" and new["promoted"], loop
    assert new["candidate_rocauc"] > new["active_rocauc"], loop
    assert new["served"] > 0 and sum(loop["served_by_version"].values()) == summary["events_produced"], loop
    assert "v2 promoted; it served" in done.stdout
    assert sorted(p.name for p in (models_dir / "fraud").iterdir() if p.is_dir()) == ["v1"]  # its own registry
    assert (tmp_path / "demo-summary.txt").exists()
    assert not (tmp_path / "stack.json").exists()  # the demo stopped the broker it started


def test_interrupt_stops_everything(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    import signal
    import time

    from streaming.infra.stack import StackState

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMING_")}
    env.update({"STREAMING_RUN_DIR": str(tmp_path), "STREAMING_MODELS_DIR": str(models_dir),
                "STREAMING_REDIS_URL": servers.redis_url})
    proc = subprocess.Popen([sys.executable, "-m", "streaming", "demo", "--duration", "60", "--rate", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=project_root())
    deadline = time.monotonic() + 60
    state = StackState.load(tmp_path)
    while time.monotonic() < deadline and not (tmp_path / "demo-worker.log").exists():
        time.sleep(0.2)
        state = StackState.load(tmp_path)
    broker = state.services["broker"]
    time.sleep(8)  # the worker is starting or running
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"interrupted; stopping" in out
    from streaming.infra.processes import pid_alive

    assert broker.pid is not None and not pid_alive(broker.pid)
    assert not (tmp_path / "stack.json").exists()
    worker_pid = int((tmp_path / "demo-worker.pid").read_text())
    assert not pid_alive(worker_pid)
