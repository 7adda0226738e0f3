"""``streaming bench pipeline``: every system forwards every event on the real broker and Redis.

One short low-rate step per system (the capacity search itself is the load test's, tested in
tests/loadtest). The Quix forwarder needs its own venv: built here when missing (about 20 s and
PyPI, which the test command reaches anyway), then cached in .streaming/bench-venvs/quix as
``streaming bench pipeline`` caches it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from loadtest.session import LoadSession
from streaming.bench.pipeline import quix_forward, quixenv
from streaming.bench.pipeline.report import write_pipeline_report
from streaming.bench.pipeline.systems import SYSTEMS, system_for
from streaming.settings import Settings
from tests.conftest import Servers


@pytest.fixture(scope="module")
def session(servers: Servers, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadSession:
    run_dir = tmp_path_factory.mktemp("bench-pipeline")
    settings = Settings.from_env({}, broker_url=servers.bootstrap, redis_url=servers.redis_url,
                                 models_dir=str(models_dir), run_dir=str(run_dir))
    with LoadSession(settings, lambda _m: None) as s:
        yield s


@pytest.mark.integration
@pytest.mark.parametrize("name", SYSTEMS)
def test_each_system_forwards_every_event(session: LoadSession, name: str) -> None:
    qpy = None
    if name == "quix_forward":
        qpy = quixenv.quix_python(quixenv.default_venv())  # builds the venv the first time
    rate = 40.0 if name == "naive" else 150.0
    s = session.run(profile="poisson", rate=rate, duration_s=1.5, slo_p99_ms=5000, show_progress=False,
                    system=system_for(name, session, quix_python=qpy), drain_s=15)
    assert s["sent"] > 0.5 * rate
    assert s["missing"] == 0 and s["duplicates"] == 0, s
    assert s["slo_pass"] is True
    assert 0 < s["p50_ms"] <= s["p99_ms"] < 5000
    # predictions carry the stage breakdown; forwarded events only their id
    assert bool(s["stages_ms"]) == (name in ("naive", "worker"))
    # CPU of Redis (INFO cpu), the generator, the reader process and the system's own process
    # (the broker's too when the session's stack started it; here the test session's stack did)
    assert {"redis", "load_generator", "load_reader"} <= set(s["cpu_pct"])
    assert (name in s["cpu_pct"]) == (name != "bare_broker")


def test_quix_script_imports_nothing_of_ours_and_maps_the_settings() -> None:
    tree = ast.parse(Path(quix_forward.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "streaming" not in imported and "loadtest" not in imported
    kw = quix_forward.application_kwargs({"bootstrap": "h:1", "group": "g", "fetch_wait_ms": 7, "linger_ms": 2.5,
                                          "acks": "all", "session_timeout_s": 6, "commit_interval_s": 1})
    assert kw["broker_address"] == "h:1" and kw["consumer_group"] == "g"
    assert kw["consumer_extra_config"] == {"fetch.wait.max.ms": 7, "session.timeout.ms": 6000,
                                           "heartbeat.interval.ms": 2000}
    assert kw["producer_extra_config"] == {"linger.ms": 2.5, "acks": "all"}
    json.dumps(kw)  # plain values only


def test_quix_venv_is_rebuilt_for_another_requirement(tmp_path: Path) -> None:
    venv = tmp_path / "quix"
    assert not quixenv.ready(venv)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / ".streaming-requirement").write_text("quixstreams==0.1\n")
    assert not quixenv.ready(venv)
    (venv / ".streaming-requirement").write_text(quixenv.QUIX_REQUIREMENT + "\n")
    assert quixenv.ready(venv)


def test_report_has_the_table_and_the_plot(tmp_path: Path) -> None:
    step = {"rate": 100.0, "achieved_rate": 99.0, "p50_ms": 10.0, "p99_ms": 20.0, "missing": 0,
            "generator_lag_max_ms": 1.0, "slo_pass": True, "verdict": "pass", "cpu_pct": {"broker": 5.0}}
    bad = {**step, "rate": 150.0, "p99_ms": 80.0, "slo_pass": False, "verdict": "FAIL"}
    result = {"bench": "pipeline", "worker_over_naive": 2.0, "minutes": 1.0,
              "systems": {"worker": {"description": "ours", "max_rate_at_slo": 100.0, "first_failing_rate": 150.0,
                                     "capped": False, "at_max": step, "at_first_failing": bad, "curve": [step, bad]}},
              "settings": {"slo_p99_ms": 50.0, "step_duration_s": 30.0, "max_rate": 40000.0, "machine": "x"}}
    text = write_pipeline_report(tmp_path, result).read_text()
    assert "| worker | **100** | 20.0 | 150/s: p99 80.0 ms" in text
    assert "| worker_over_naive | 2.00 |" in text
    assert (tmp_path / "pipeline_capacity.png").stat().st_size > 0
