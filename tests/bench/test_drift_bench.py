"""``streaming bench drift``: the SEA generator, the SEA pipeline, the scoring of requests, and one short run.

The pure parts are tested on their own: the SEA stream (deterministic per seed, the concept switching at
the drift position and nowhere on a stationary stream, the width River's sigmoid needs), the registry's
``sea`` kind, the delay / false-alarm / target arithmetic and the replayed baselines. One integration run
plays a short drift stream and a stationary one through the session's broker, Redis and a real worker.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from river import metrics
from river.datasets import synth

from streaming.bench.drift import DriftPlan, load_sea, run_drift_bench
from streaming.bench.drift_score import (
    detection_targets,
    replay,
    request_counts,
    river_accuracy,
    score_requests,
    summarise,
    targets,
)
from streaming.errors import PipelineError
from streaming.inference.registry import ModelRegistry
from streaming.online.detectors import Level
from streaming.online.learners import build_learner
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings, project_root
from streaming.synthetic.fraud import FraudGenerator, Labelled
from streaming.synthetic.registry import GENERATORS, generator_for
from streaming.synthetic.sea import SEA_THRESHOLDS, SEAGenerator, min_width
from tests.conftest import Servers


def take(gen: SEAGenerator, n: int) -> list[Labelled]:
    return list(itertools.islice(gen, n))


def concept(item: Labelled, threshold: float) -> int:
    return int(item.event["x1"] + item.event["x2"] > threshold)


@pytest.fixture(scope="module")
def sea() -> Pipeline:
    pipeline, _ = load_sea(project_root() / "schemas")
    return pipeline


# -- the SEA generator ------------------------------------------------------------------------------------------
def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = take(SEAGenerator(rate=500, seed=4, drift_position=2000, width=50), 4000)
    b = take(SEAGenerator(rate=500, seed=4, drift_position=2000, width=50), 4000)
    c = take(SEAGenerator(rate=500, seed=5, drift_position=2000, width=50), 4000)
    assert [(x.event, x.label, x.pattern) for x in a] == [(x.event, x.label, x.pattern) for x in b]
    assert [x.event["x1"] for x in a] != [x.event["x1"] for x in c]
    assert len({x.event["event_id"] for x in a}) == 4000
    # a fixed pace: event i at start + i / rate
    assert [x.event["event_time"] for x in a[:3]] == [0, 2000, 4000]
    assert {x.event["key"] for x in a} == {f"s{i}" for i in range(64)}
    assert all(0.0 <= x.event[f] <= 10.0 for x in a for f in ("x1", "x2", "x3"))


def test_the_concept_switches_at_the_drift_position() -> None:
    gen = SEAGenerator(rate=500, seed=1, variant=2, drift_variant=3, drift_position=3000, width=50, noise=0.0)
    stream = take(gen, 6000)
    # noise-free: every label is its own concept's x1 + x2 > threshold
    for x in stream:
        assert x.label == concept(x, SEA_THRESHOLDS[2 if x.pattern == "before" else 3])
    early, late = stream[: 3000 - 300], stream[3000 + 300:]
    assert {x.pattern for x in early} == {"before"} and {x.pattern for x in late} == {"after"}
    # the switch changes the labels of the events between the two thresholds (about a fifth of them)
    changed = [x for x in late if concept(x, 7.0) != x.label]
    assert 0.15 < len(changed) / len(late) < 0.27
    assert all(7.0 < x.event["x1"] + x.event["x2"] <= 9.5 for x in changed)


def test_a_stationary_stream_keeps_its_concept_and_shares_the_drift_streams_first_part() -> None:
    stationary = take(SEAGenerator(rate=500, seed=1, variant=2, noise=0.1), 6000)
    assert {x.pattern for x in stationary} == {"before"}
    agree = [x.label == concept(x, 7.0) for x in stationary]
    # 10 % of the labels flipped, evenly over the stream
    assert 0.87 < np.mean(agree[:3000]) < 0.93 and 0.87 < np.mean(agree[3000:]) < 0.93
    drifting = take(SEAGenerator(rate=500, seed=1, variant=2, noise=0.1, drift_position=3000, width=50), 6000)
    before = [x for x in drifting if x.pattern == "before"]
    assert [x.event["x1"] for x in before] == [x.event["x1"] for x in stationary[: len(before)]]


def test_the_width_must_keep_rivers_sigmoid_finite() -> None:
    # River 0.26's ConceptDriftStream overflows with width 1 far from the position: the reason for min_width
    with pytest.raises(OverflowError):
        list(itertools.islice(synth.ConceptDriftStream(synth.SEA(seed=1), synth.SEA(variant=3, seed=2),
                                                       position=5000, width=1, seed=1), 10))
    for position in (200, 5000, 100_000):
        w = min_width(position)
        assert 4 * (position - 1) / w < math.log(1.7e308)
        list(itertools.islice(synth.ConceptDriftStream(synth.SEA(seed=1), synth.SEA(variant=3, seed=2),
                                                       position=position, width=w, seed=1), 10))
    with pytest.raises(ValueError, match="use at least 29"):
        SEAGenerator(rate=500, drift_position=5000, width=1)
    with pytest.raises(ValueError, match="variant"):
        SEAGenerator(rate=500, variant=7)


# -- the registry and the pipeline -----------------------------------------------------------------------------
def test_the_registry_builds_the_sea_generator_from_the_pipeline(sea: Pipeline) -> None:
    assert GENERATORS == ("fraud", "sea")
    gen = generator_for(sea, rate=500, seed=2, start_us=1_000_000, drift_at_us=1_000_000 + 10_000_000,
                        id_prefix="t")
    assert isinstance(gen, SEAGenerator)
    assert (gen.drift_position, gen.variant, gen.drift_variant, gen.noise) == (5000, 2, 3, 0.1)
    assert next(gen).event["event_id"] == "t2-0"
    # a far drift: the configured width (50) is raised to one that does not overflow
    far = generator_for(sea, rate=500, seed=2, start_us=0, drift_at_us=400_000_000)
    assert isinstance(far, SEAGenerator) and far.drift_position == 200_000 and far.width == min_width(200_000) > 50
    assert generator_for(sea, rate=500, seed=2, start_us=0).drift_position is None  # type: ignore[attr-defined]


def test_the_fraud_kind_is_unchanged_and_an_unknown_kind_names_both(sea: Pipeline) -> None:
    fraud = dataclasses.replace(sea, generator={"kind": "fraud", "fraud_rate": 0.05})
    gen = generator_for(fraud, rate=100, seed=1, start_us=0)
    assert isinstance(gen, FraudGenerator) and gen.fraud_rate == 0.05
    with pytest.raises(PipelineError, match="fraud, sea"):
        generator_for(dataclasses.replace(sea, generator={"kind": "nope"}), rate=1, seed=1, start_us=0)
    with pytest.raises(PipelineError, match=r"\[generator\] SEA variant"):
        generator_for(dataclasses.replace(sea, generator={"kind": "sea", "variant": 9}), rate=1, seed=1, start_us=0)


def test_the_sea_pipeline_declares_what_the_bench_needs(sea: Pipeline) -> None:
    assert sea.name == "sea" and sea.event.schema == "sea_event"
    assert sea.model.inputs == ("x1", "x2", "x3")
    assert sea.learner.kind == "logistic_regression" and sea.learner.warmup == 0
    assert [m.signal for m in sea.monitors] == ["error"]
    # one request per drift: the group's cooldown outlasts a run (10,000 events at 500/s: 20 s)
    assert sea.drift.cooldown_s >= 600


def test_the_calibrated_monitor_on_v1_detects_the_drift_and_stays_quiet_without_it(sea: Pipeline,
                                                                                   tmp_path: Path) -> None:
    from streaming.inference.session import OnnxModel
    from streaming.training.job import train_pipeline

    model = OnnxModel(train_pipeline(sea, ModelRegistry(tmp_path, "sea")), provider="cpu")
    rows = []
    for seed, position in ((11, 5000), (12, 5000), (11, None), (12, None)):
        items = take(SEAGenerator(rate=500, seed=seed, variant=2, drift_variant=3, noise=0.1, width=50,
                                  drift_position=position), 10_000)
        X = np.array([[x.event[f] for f in ("x1", "x2", "x3")] for x in items], dtype=np.float32)
        errors = np.abs(np.array([x.label for x in items]) - model.predict(X))
        times = [int(x.event["event_time"]) for x in items]
        at = replay(errors.tolist(), times, sea.monitors, sea.drift)
        rows.append({"stationary": position is None,
                     **score_requests(request_counts(at, start_us=0, rate=500), drift_position=position, width=50)})
    assert detection_targets(rows) == {"delay_le_1000": True, "one_request_per_drift": True, "no_false_alarms": True}


# -- the scoring ---------------------------------------------------------------------------------------------
def test_request_counts_and_delays() -> None:
    counts = request_counts([10_002_000, 10_000_000], start_us=10_000_000, rate=500)
    assert counts == [1, 2]
    # a request in the transition just before the position: a detection with a negative delay, not a false alarm
    assert score_requests([4_980], drift_position=5000, width=50) == {"requests": 1, "false_alarms": 0,
                                                                       "delay": -20, "at": [4_980]}
    # before the onset: a false alarm; the delay comes from the first request after it
    assert score_requests([4_900, 6_200, 5_400], drift_position=5000, width=50) == {
        "requests": 3, "false_alarms": 1, "delay": 400, "at": [4_900, 5_400, 6_200]}
    assert score_requests([], drift_position=5000, width=50)["delay"] is None


def test_targets_fail_for_the_reason_they_name() -> None:
    good = {"stationary": False, "delay": 400, "requests": 1, "false_alarms": 0, "labels_published": 10_000,
            "labels_joined": 10_000, "accuracy_gap_points": 0.05}
    quiet = {**good, "stationary": True, "delay": None, "requests": 0}
    assert all(targets([good, quiet]).values())
    assert targets([{**good, "delay": 1001}, quiet])["delay_le_1000"] is False
    assert targets([{**good, "delay": None, "requests": 0}, quiet])["delay_le_1000"] is False
    assert targets([{**good, "requests": 2}, quiet])["one_request_per_drift"] is False
    assert targets([{**good, "requests": 2, "false_alarms": 1}, quiet])["one_request_per_drift"] is False
    assert targets([good, {**quiet, "requests": 1, "false_alarms": 1}])["no_false_alarms"] is False
    assert targets([good, {**quiet, "labels_joined": 9_989}])["labels_joined_999"] is False
    assert targets([good, {**quiet, "labels_joined": 9_990}])["labels_joined_999"] is True
    assert targets([good, {**quiet, "accuracy_gap_points": 0.51}])["accuracy_within_05"] is False
    # nothing to judge is not a pass
    assert detection_targets([quiet])["delay_le_1000"] is False
    s = summarise([good, {**good, "delay": 800}, quiet])
    assert (s["delay_max"], s["delay_mean"], s["requests_per_drift"], s["false_alarms_stationary"]) == (800, 600.0,
                                                                                                        [1, 1], 0)


def test_the_baselines_under_the_group_rules(sea: Pipeline) -> None:
    times = [i * 2000 for i in range(6000)]
    errors = [0.1] * 3000 + [0.6] * 3000
    always = replay(errors, times, sea.monitors, sea.drift, scripted=Level.DRIFT)
    never = replay(errors, times, sea.monitors, sea.drift, scripted=Level.OK)
    ours = replay(errors, times, sea.monitors, sea.drift)
    # always-fire: its first label, then the monitor stays in DRIFT and the group in its cooldown
    assert always == [0] and never == []
    assert len(ours) == 1 and 3000 * 2000 <= ours[0] < 3200 * 2000
    rows = [{"stationary": False, **score_requests(request_counts(a, start_us=0, rate=500), drift_position=3000,
                                                   width=50)} for a in (always, never, ours)]
    assert [r["false_alarms"] for r in rows] == [1, 0, 0]
    assert [r["delay"] is None for r in rows] == [True, True, False]


def test_rivers_accuracy_is_a_predict_then_learn_loop(sea: Pipeline) -> None:
    items = take(SEAGenerator(rate=500, seed=3, variant=2, drift_variant=3, drift_position=1000, width=50), 2000)
    xs = [{f: float(x.event[f]) for f in ("x1", "x2", "x3")} for x in items]
    ys = [x.label for x in items]
    model, acc = build_learner(sea.learner), metrics.Accuracy()
    for x, y in zip(xs, ys, strict=True):
        acc.update(bool(y), model.predict_one(x))
        model.learn_one(x, bool(y))
    assert river_accuracy(sea.learner, xs, ys) == pytest.approx(acc.get())
    assert 0.7 < acc.get() < 0.95


# -- one short run through the real stack ----------------------------------------------------------------------
@pytest.mark.integration
def test_a_short_run_through_the_worker(servers: Servers, tmp_path: Path) -> None:
    settings = Settings.from_env({}, broker_url=servers.bootstrap, redis_url=servers.redis_url,
                                 run_dir=str(tmp_path))
    plan = DriftPlan(seeds=(1,), lags=(0,), length=3000, drift_position=1500)
    lines: list[str] = []
    result = run_drift_bench(settings, quick=True, progress=lines.append, plan=plan)
    drift, stationary = result["runs"]
    assert (drift["stationary"], stationary["stationary"]) == (False, True)
    assert drift["requests"] == drift["requests_counted_by_worker"] == 1 and drift["monitors"] == ["model_error"]
    assert 0 <= drift["delay"] <= 1000 and drift["false_alarms"] == 0
    assert stationary["requests"] == 0
    for row in result["runs"]:
        assert row["labels_published"] == 3000 and row["labels_joined"] >= 2997
        assert 0.7 < row["learner_accuracy"] < 0.95 and abs(row["accuracy_gap_points"]) <= 0.5
        assert row["labels_waiting_max"] >= 0 and row["behind_schedule_max_s"] < 5
    assert all(result["targets"].values()), result["targets"]
    assert set(result["targets"]) == {"delay_le_1000", "one_request_per_drift", "no_false_alarms",
                                      "labels_joined_999", "accuracy_within_05"}
    # the baselines, replayed on the same errors: always-fire alarms on its first label, never-fire misses
    assert result["baseline_targets"]["always_fire"]["no_false_alarms"] is False
    assert result["baseline_targets"]["never_fire"]["delay_le_1000"] is False
    assert result["aggregate"]["always_fire"]["false_alarms_stationary"] == 1
    assert {"cpus", "python", "river"} <= set(result["machine"])
    assert len(lines) >= 3 and "targets" in lines[-1]
