"""`streaming drift calibrate`: thresholds measured on stationary streams and written into the pipeline file."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

from streaming.settings import project_root
from tests.test_cli import run


def test_calibrate_writes_every_monitors_threshold_and_keeps_the_comments(models_dir: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.toml"
    shutil.copy(project_root() / "models" / "fraud" / "pipeline.toml", pipeline)
    before = tomllib.loads(pipeline.read_text())
    env = {"STREAMING_PIPELINE": str(pipeline), "STREAMING_MODELS_DIR": str(models_dir),
           "STREAMING_RUN_DIR": str(tmp_path)}
    done = run("drift", "calibrate", "--streams", "4", "--length", "4000", "--target", "0.5", "--json", env=env,
               timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["written"] and [m["monitor"] for m in result["monitors"]] == ["model_error", "score_psi", "features"]
    assert all(m["met"] and m["false_alarms_per_stream"] <= 0.5 and m["samples"] > 0 for m in result["monitors"])
    after = tomllib.loads(pipeline.read_text())
    for m in result["monitors"]:
        [mon] = [x for x in after["monitors"] if x["name"] == m["monitor"]]
        assert mon["params"][m["param"]] == float(f"{m['value']:.4g}")
    # the other params and the file's comments are kept
    assert [x["params"]["window"] for x in after["monitors"][1:]] == [x["params"]["window"]
                                                                      for x in before["monitors"][1:]]
    assert after["monitors"][2]["params"]["features"] == before["monitors"][2]["params"]["features"]
    assert "# the online learner (River)" in pipeline.read_text()


def test_a_dry_run_writes_nothing(models_dir: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.toml"
    shutil.copy(project_root() / "models" / "fraud" / "pipeline.toml", pipeline)
    text = pipeline.read_text()
    done = run("drift", "calibrate", "--streams", "2", "--length", "2000", "--target", "1", "--dry-run",
               env={"STREAMING_PIPELINE": str(pipeline), "STREAMING_MODELS_DIR": str(models_dir),
                    "STREAMING_RUN_DIR": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dry run: nothing written" in done.stdout and pipeline.read_text() == text
