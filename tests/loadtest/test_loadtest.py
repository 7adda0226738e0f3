"""The load test harness against a real worker on the embedded broker and a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from loadtest.schedule import Phase, schedule
from streaming.settings import project_root
from tests.conftest import Servers

pytestmark = pytest.mark.integration


def cli(servers: Servers, models_dir: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMING_")}
    env.update({"STREAMING_BROKER_URL": servers.bootstrap, "STREAMING_REDIS_URL": servers.redis_url,
                "STREAMING_MODELS_DIR": str(models_dir), "STREAMING_RUN_DIR": str(tmp_path)})
    return subprocess.run([sys.executable, "-m", "streaming", "loadtest", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=project_root())


def test_a_short_run_reports_and_gives_a_verdict(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    done = cli(servers, models_dir, tmp_path, "--profile", "poisson", "--rate", "300", "--duration", "4",
               "--slo-p99-ms", "5000", "--report", str(report), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("target_rate", "achieved_rate", "p50_ms", "p99_ms", "p999_ms", "missing", "duplicates", "slo_pass",
                "actual_p99_ms", "generator_lag_max_ms", "stages_ms", "dead_letters"):
        assert key in result
    assert result["missing"] == 0 and result["duplicates"] == 0 and result["slo_pass"] is True
    assert 0.95 * result["target_rate"] <= result["achieved_rate"] <= 1.05 * result["target_rate"]
    assert result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"]
    assert set(result["stages_ms"]) == {"broker_and_fetch", "features", "queue", "inference", "publish_and_read"}
    # the worker's own e2e histogram, same run: every scored event once (the warm-up subtracted), and never
    # more events over the SLO than the load test's actual-send view (which adds the reader's fetch)
    view = result["worker_histogram"]
    assert view["worker_e2e_count"] == result["sent"]
    assert view["worker_share_over_slo"] <= view["loadtest_share_over_slo_actual"] <= \
        view["loadtest_share_over_slo_intended"]
    for name in ("report.md", "latency_over_time.png", "percentile_spectrum.png", "rate_and_batch.png"):
        assert (report / name).stat().st_size > 0
    # the run's worker kept its features under its own namespace, dropped after the run
    client = redis.Redis.from_url(servers.redis_url)
    assert not list(client.scan_iter(match="lt-*", count=1000))
    client.close()


def test_an_impossible_slo_fails_with_exit_code_1(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    done = cli(servers, models_dir, tmp_path, "--rate", "200", "--duration", "2", "--slo-p99-ms", "0.001",
               "--report", str(tmp_path / "r"), "--json")
    assert done.returncode == 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["slo_pass"] is False and result["missing"] == 0


def test_capacity_search(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    done = cli(servers, models_dir, tmp_path, "capacity", "--slo-p99-ms", "5000", "--step-duration", "2",
               "--start-rate", "200", "--max-rate", "250", "--report", str(tmp_path / "cap"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["max_rate_at_slo"] == 200.0  # passes at 200; the next step (300) exceeds --max-rate
    assert len(result["curve"]) == 1 and result["curve"][0]["slo_pass"]
    assert (tmp_path / "cap" / "capacity.png").stat().st_size > 0


def test_schedules() -> None:
    step = list(schedule("step", rate=0, duration_s=0, steps=[Phase(100, 2), Phase(1000, 1)], seed=3))
    first, second = [t for t in step if t < 2], [t for t in step if t >= 2]
    assert 150 < len(first) < 250 and 800 < len(second) < 1200
    burst = list(schedule("burst", rate=10, duration_s=6, burst_every_s=2, burst_size=100, seed=1))
    assert sum(1 for t in burst if t == 2.0) == 100 and sum(1 for t in burst if t == 4.0) == 100
    assert list(schedule("replay", rate=0, duration_s=1.5, replay=[0.0, 0.5, 1.0, 2.0])) == [0.0, 0.5, 1.0]
