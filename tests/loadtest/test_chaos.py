"""``streaming chaos --quick`` against real processes: its own broker, Redis and worker, killed and restarted.

One run (about a minute and a half) serves every test of the module: the first checks that the
accounting adds up whatever the worker did, the second that the worker lost and miscounted nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.chaos import ChaosPlan, fault_schedule
from streaming.settings import project_root

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    run_dir = tmp_path_factory.mktemp("chaos")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMING_")}
    env.update({"STREAMING_RUN_DIR": str(run_dir), "STREAMING_MODELS_DIR": str(models_dir)})
    done = subprocess.run([sys.executable, "-m", "streaming", "chaos", "--quick", "--json"], capture_output=True,
                          text=True, env=env, timeout=280, cwd=project_root())
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output (status {done.returncode}): {done.stderr[-3000:]}"
    return done.returncode, json.loads(lines[-1]), done.stderr


@pytest.mark.timeout(300)
def test_the_accounting_adds_up(quick: tuple[int, dict[str, Any], str]) -> None:
    code, r, stderr = quick
    assert r["aborted"] is None, r["aborted"]
    plan = ChaosPlan.quick()
    assert r["events_sent"] == plan.events and r["hostile_sent"] == plan.events // 100
    # every record has exactly one outcome
    assert r["predicted"] + r["hostile_predicted"] + r["dead_lettered"] + r["missing"] == \
        r["events_sent"] + r["hostile_sent"]
    assert r["duplicated"] == r["duplicated_flagged"] + r["duplicated_unflagged"]
    assert r["predictions_total"] >= r["predicted"] + r["duplicated"]
    assert r["labels_sent"] == r["events_sent"] and r["labels_joined"] + r["labels_lost"] == r["labels_sent"]
    assert sum(e["events"] for e in r["epochs"]) == r["events_sent"] and len(r["epochs"]) == 2
    # every fault struck
    assert r["worker_kills"] == plan.kills and r["redis_outages"] == 1 and r["broker_restarts"] == 1
    assert r["worker_restarts"] >= r["worker_kills"] and r["redis_outage_s"] >= plan.redis_outage_s
    assert r["broker_recovery_s"] is not None and r["broker_recovered_by"]
    assert len(r["kill_at_events"]) == plan.kills
    assert r["aggregates_checked"] > 1000
    assert code == (0 if r["ok"] else 1)
    assert "result:" not in stderr  # --json: no summary lines


@pytest.mark.timeout(300)
def test_nothing_is_lost_or_counted_twice(quick: tuple[int, dict[str, Any], str]) -> None:
    code, r, _ = quick
    assert r["ok"] and code == 0, r["problems"]
    assert r["missing"] == 0 and r["duplicated_unflagged"] == 0 and r["labels_lost"] == 0
    assert r["aggregates_off_reference"] == 0 and r["hostile_dead_lettered"] == r["hostile_sent"]
    assert r["lost_with_broker"] == 0 and r["worker_stalls"] == 0


def test_the_faults_are_spread_over_the_run() -> None:
    plan = ChaosPlan(events=50_000, kills=5, seed=3)
    faults = fault_schedule(plan)
    assert sorted(k for _, k in faults) == ["broker", "kill", "kill", "kill", "kill", "kill", "redis"]
    at = [n for n, _ in faults]
    assert at == sorted(at) and 0.05 * plan.events < at[0] and at[-1] < 0.95 * plan.events
    assert min(b - a for a, b in itertools.pairwise(at)) > 0.2 * 0.9 * plan.events / len(faults)
    assert faults[0][1] == "kill" and fault_schedule(plan) == faults  # seeded
