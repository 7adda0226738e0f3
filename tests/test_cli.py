"""The command line as a new user meets it: help, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.settings import project_root
from tests.conftest import Servers, worker_env


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMING_")}
    return subprocess.run([sys.executable, "-m", "streaming", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout, cwd=project_root())


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for f in fragments:
        assert f in lines[0]


def test_help_lists_the_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for cmd in ("up", "down", "status", "worker", "produce", "consume", "train", "models", "demo"):
        assert f"  {cmd} " in done.stdout


def test_worker_with_the_broker_down(tmp_path: Path) -> None:
    done = run("worker", env={"STREAMING_BROKER_URL": "127.0.0.1:1", "STREAMING_RUN_DIR": str(tmp_path)})
    assert_one_line_error(done, 3, "127.0.0.1:1", "does not answer", "streaming up")


def test_worker_without_any_broker_configured(tmp_path: Path) -> None:
    done = run("worker", env={"STREAMING_RUN_DIR": str(tmp_path)})
    assert_one_line_error(done, 3, "no Kafka broker configured", "streaming up")


def test_worker_with_a_pipeline_naming_an_unknown_field(tmp_path: Path) -> None:
    text = (project_root() / "models" / "fraud" / "pipeline.toml").read_text()
    bad = tmp_path / "pipeline.toml"
    bad.write_text(text.replace('field = "amount"\ntransform', 'field = "amt"\ntransform'))
    done = run("worker", env={"STREAMING_PIPELINE": str(bad), "STREAMING_BROKER_URL": "127.0.0.1:1"})
    assert_one_line_error(done, 2, str(bad), "unknown field 'amt'")


def test_a_bad_setting(tmp_path: Path) -> None:
    done = run("worker", env={"STREAMING_PRODUCER_ACKS": "most"})
    assert_one_line_error(done, 2, "STREAMING_PRODUCER_ACKS='most'", "0, 1, all")


@pytest.mark.integration
def test_worker_with_no_model(servers: Servers, tmp_path: Path) -> None:
    done = run("worker", env=worker_env(servers, tmp_path / "empty"))
    assert_one_line_error(done, 2, "no model for pipeline 'fraud'", "streaming train")


@pytest.mark.integration
def test_worker_with_redis_down(servers: Servers, tmp_path: Path) -> None:
    env = worker_env(servers, tmp_path, STREAMING_REDIS_URL="redis://127.0.0.1:1/0")
    done = run("worker", env=env)
    assert_one_line_error(done, 3, "Redis at redis://127.0.0.1:1/0 does not answer")


def test_status_when_nothing_runs(tmp_path: Path) -> None:
    done = run("status", env={"STREAMING_RUN_DIR": str(tmp_path)})
    assert done.returncode == 1 and "streaming up" in done.stdout


def test_produce_reports_bad_lines(servers: Servers, tmp_path: Path) -> None:
    env = worker_env(servers, tmp_path)
    good = {"event_id": "p1", "card_id": "c", "merchant_id": "m", "amount": 1.0, "country": "US",
            "card_country": "US", "channel": "pos", "mcc": "x", "event_time": 1}
    src = tmp_path / "events.jsonl"
    src.write_text(json.dumps(good) + "\n" + '{"event_id": "p2"}\n' + "not json\n")
    done = run("produce", str(src), env=env)
    assert done.returncode == 1
    assert "line 2: skipped" in done.stderr and "line 3: skipped" in done.stderr
    assert "produced 1 records" in done.stderr


def test_demo_refuses_a_negative_linger() -> None:
    done = run("demo", "--linger-ms", "-1")  # refused before anything starts (no broker, no worker)
    assert done.returncode == 2
    assert "--linger-ms" in done.stderr and "-1.0 is not in the range x>=0" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["demo"], ["loadtest"], ["loadtest", "capacity"], ["bench", "pipeline"]])
@pytest.mark.parametrize("share", ["0", "1.5", "-0.2", "nan"])
def test_cpu_share_outside_0_1_is_refused_before_anything_starts(args: list[str], share: str) -> None:
    from click.testing import CliRunner

    from streaming.cli import cli

    done = CliRunner().invoke(cli, [*args, "--cpu-share", share], env={"STREAMING_BROKER_URL": "127.0.0.1:1"})
    assert done.exit_code == 2, done.output
    assert "Invalid value for '--cpu-share'" in done.output
    assert "must be a fraction of the machine in (0, 1]" in done.output
    assert "Traceback" not in done.output


def test_cpu_share_is_offered_by_the_commands_that_run_load() -> None:
    from click.testing import CliRunner

    from streaming.cli import cli

    for args in (["demo"], ["loadtest"], ["loadtest", "capacity"], ["bench", "pipeline"]):
        done = CliRunner().invoke(cli, [*args, "--help"])
        assert done.exit_code == 0 and "--cpu-share S" in done.output, args
    done = CliRunner().invoke(cli, ["bench", "pipeline", "--help"])
    assert "--cost-rates" in done.output and "--floor-rate" in done.output


def test_bench_pipeline_refuses_bad_cost_rates() -> None:
    from click.testing import CliRunner

    from streaming.cli import cli

    done = CliRunner().invoke(cli, ["bench", "pipeline", "--cost-rates", "400,lots"])
    assert done.exit_code == 2 and "error: bad --cost-rates '400,lots'" in done.output, done.output


def test_retrain_once_on_an_empty_topic(servers: Servers, models_dir: Path) -> None:
    env = worker_env(servers, models_dir)
    done = run("retrain", "--once", "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"outcomes": []}


def test_status_and_models_list_print_json(servers: Servers, models_dir: Path, tmp_path: Path) -> None:
    done = run("status", "--json", env={"STREAMING_RUN_DIR": str(servers.run_dir)})
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout.strip().splitlines()[-1])
    assert st["running"] and st["ok"] and {s["name"] for s in st["services"]} == {"broker", "redis"}
    assert all(s["up"] and s["port"] > 0 for s in st["services"])
    empty = run("status", "--json", env={"STREAMING_RUN_DIR": str(tmp_path)})
    assert empty.returncode == 1 and json.loads(empty.stdout) == {"running": False, "ok": False, "services": []}
    done = run("models", "list", "--json", env={"STREAMING_MODELS_DIR": str(models_dir)})
    assert done.returncode == 0, done.stderr
    ml = json.loads(done.stdout.strip().splitlines()[-1])
    assert ml["model"] == "fraud" and ml["active"] == "v1" and ml["shadow"] is None
    [v1] = [v for v in ml["versions"] if v["version"] == "v1"]
    assert v1["active"] and len(v1["sha256"]) == 64 and 0.5 < v1["roc_auc"] <= 1.0
