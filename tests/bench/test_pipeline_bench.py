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
    # cost per event: CPU per process, broker requests per client (librdkafka statistics for the generator and
    # the reader; the Faust peers and our worker from their /metrics, the Quix peer from its statistics file)
    assert set(s["cpu_us_per_event"]) == set(s["cpu_pct"])
    req = s["broker_requests_per_event"]
    assert req["load_generator"]["produce"] > 0 and req["load_generator"]["fetch"] == 0
    assert req["load_reader"]["fetch"] > 0 and req["load_reader"]["produce"] == 0
    if name != "bare_broker":
        assert req[name]["produce"] > 0 and req[name]["fetch"] > 0
    assert s["system"] == name and s["verdict_text"].startswith("PASS: ")


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
    assert "## Cost per event" not in text and "## Latency floor" not in text  # none measured


def test_report_has_the_cost_and_the_floor(tmp_path: Path) -> None:
    from streaming.bench.pipeline.bench import cpu_ratio

    entry = {"p50_ms": 9.0, "p99_ms": 21.0, "missing": 0, "slo_pass": True, "achieved_rate": 400.0,
             "cpu_pct": {"worker": 12.0, "broker": 8.0}, "cpu_us_per_event": {"worker": 300.0, "broker": 200.0},
             "broker_requests_per_event": {"worker": {"produce": 0.05, "fetch": 0.5}}}
    ff = {**entry, "cpu_pct": {"faust_forward": 5.0}, "cpu_us_per_event": {"faust_forward": 120.0}}
    cost = {"faust_forward": {"400": ff}, "worker": {"400": entry}}
    step = {"rate": 100.0, "achieved_rate": 99.0, "p50_ms": 10.0, "p99_ms": 20.0, "missing": 0,
            "generator_lag_max_ms": 1.0, "slo_pass": True, "verdict": "pass", "cpu_pct": {"worker": 5.0},
            "cpu_us_per_event": {"worker": 500.0}, "broker_requests_per_event": {"worker": {"produce": 0.1, "fetch": 2}}}
    result = {"bench": "pipeline", "minutes": 1.0, "cost": cost,
              "worker_over_faust_forward_cpu": cpu_ratio(cost, "worker", "faust_forward"),
              "floor": {"bare_broker": {"rate": 25.0, "p50_ms": 4.0, "p99_ms": 7.5, "missing": 0},
                        "worker": {"rate": 25.0, "p50_ms": 11.0, "p99_ms": 19.0, "missing": 0}},
              "worker_floor_over_bare_p99_ms": 11.5, "cpu_share": 0.5,
              "systems": {"worker": {"description": "ours", "max_rate_at_slo": 100.0, "first_failing_rate": None,
                                     "capped": True, "at_max": step, "at_first_failing": None, "curve": [step]}},
              "settings": {"slo_p99_ms": 50.0, "step_duration_s": 5.0, "max_rate": 100.0, "machine": "x"}}
    assert result["worker_over_faust_forward_cpu"] == {"400": 2.5}
    text = write_pipeline_report(tmp_path, result).read_text()
    assert "| worker | 400 | 9.0 | 21.0 | 0 | pass | **300** | worker 12% (300 µs/ev), broker 8% (200 µs/ev) | " \
           "worker 0.05 / 0.5 |" in text
    assert "Faust forwarder's (`worker_over_faust_forward_cpu`): 400/s: 2.50." in text
    assert "| bare_broker | 25 | 4.0 | 7.5 | 0 |" in text and "p99 minus the bare broker's: 11.5 ms" in text
    assert "worker 5% (500 µs/ev) | worker 0.1 / 2 | pass |" in text  # the curve's row
    assert "`--cpu-share 0.5`" in text
    assert "worker_over_faust_forward_cpu |" not in text  # not among the capacity ratios
