"""``streaming bench drift``: River's SEA concept drift replayed through the real broker, Redis and worker.

The stream is River's :class:`~river.datasets.synth.ConceptDriftStream` of two SEA variants
(:mod:`streaming.synthetic.sea`, through the SEA pipeline's ``[generator]``: variant 2, ``x1 + x2 > 7``,
drifting to variant 3, ``> 9.5``, 10 % label noise), ``length`` events at a fixed ``rate`` with the drift at
``drift_position``; for each seed one run per label lag (labels right after their events, and ``lag`` events
later) and one stationary run of the same length (no drift switch). Every run is played through a fresh
worker serving the SEA pipeline (:mod:`streaming.bench.sea`) on fresh topics
(:mod:`streaming.bench.drift_stack`), with a v1 model the bench trains on the stationary "before" concept
into a temporary registry (``[model.train]``; the monitors' thresholds were calibrated on that model, see
:func:`calibrate_sea`).

Per run: the retrain requests on the run's retrain topic (their detection delay in events after the drift
point and false alarms, :mod:`streaming.bench.drift_score`), the labels joined over the labels published,
and the learner's prequential accuracy through the pipeline (the worker's ``streaming_online_metric``) next
to River's own ``progressive_val_score`` of the same learner (``build_learner`` of the pipeline's
``[learner]``) on the same events in stream order. Baselines in the same run, on the same data: the run's
error sequence (``|label - v1 score|``, the v1 ONNX model scoring the stream offline) replayed through an
always-firing and a never-firing detector under the same monitor and group rules, and through the
pipeline's own monitors (``offline``: what the worker does when it learns the labels in stream order).

The result carries ``targets`` (:func:`streaming.bench.drift_score.targets`), the baselines' detection
targets, every run's row, aggregates and the machine.
"""

from __future__ import annotations

import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streaming.bench.drift_score import (
    detection_targets,
    replay,
    request_counts,
    river_accuracy,
    score_requests,
    summarise,
    targets,
)
from streaming.bench.drift_stack import StackRun, endpoints, run_through_stack
from streaming.bench.sea import PIPELINE_FILE
from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.inference.registry import ModelRegistry
from streaming.online.detectors import Level
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from streaming.synthetic.fraud import Labelled
from streaming.synthetic.registry import generator_for
from streaming.synthetic.sea import SEAGenerator

if TYPE_CHECKING:
    from streaming.inference.session import OnnxModel

__all__ = ["FULL", "NOTES", "QUICK", "DriftPlan", "calibrate_sea", "load_sea", "run_drift_bench"]


@dataclass(frozen=True)
class DriftPlan:
    """Which runs: a drift run per seed and label lag (events), a stationary run per seed (lag 0)."""

    seeds: tuple[int, ...] = (1, 2, 3)
    lags: tuple[int, ...] = (0, 500)
    length: int = 10_000
    drift_position: int = 5_000
    rate: float = 500.0
    stationary: bool = True


FULL = DriftPlan()
QUICK = DriftPlan(seeds=(1,))

#: how to read the result (carried in it)
NOTES = (
    "delay: River's 1-based sample count of the event whose event_time is the request's window_end, minus the drift "
    "position; a request before position - width is a false alarm",
    "accuracy: River's progressive_val_score decides a tie (p = 0.5, the untrained learner's first score) False, the "
    "worker's evaluator True (score >= 0.5): up to one label apart, 0.01 points at 10,000 labels",
    "order: the worker learns labels in join order; a label that arrives before its event's vector is logged waits "
    "(labels_waiting_max) and is learned later, so with lag 0 the learner and the monitor see a slightly different "
    "order than the stream's (offline replays and River's score use the stream's order)",
)


def load_sea(schemas_dir: Path) -> tuple[Pipeline, Codec]:
    """The SEA pipeline (its own event schema registered beside the project's) and a codec for it."""
    registry = SchemaRegistry.from_dir(schemas_dir)
    return load_pipeline(PIPELINE_FILE, registry), Codec(registry)


def _stream(pipeline: Pipeline, plan: DriftPlan, seed: int, position: int | None) -> Callable[[int, str], list[Labelled]]:
    def make(start_us: int, id_prefix: str) -> list[Labelled]:
        drift_at = None if position is None else start_us + round(position * 1e6 / plan.rate)
        gen = generator_for(pipeline, rate=plan.rate, seed=seed, start_us=start_us, drift_at_us=drift_at,
                            id_prefix=id_prefix)
        assert isinstance(gen, SEAGenerator) and gen.drift_position == position, "the SEA pipeline's generator"
        return list(itertools.islice(gen, plan.length))

    return make


def _row(pipeline: Pipeline, model: OnnxModel, plan: DriftPlan, seed: int, lag: int, position: int | None,
         got: dict[str, Any]) -> dict[str, Any]:
    """A run's row: ours through the pipeline, River's accuracy, and the replayed baselines."""
    items: list[Labelled] = got["items"]
    names = list(pipeline.model.inputs)
    xs = [{n: float(it.event[n]) for n in names} for it in items]
    ys = np.array([it.label for it in items], dtype=np.int64)
    times = [int(it.event[pipeline.event.time_field]) for it in items]
    errors = np.abs(ys - model.predict(np.array([[x[n] for n in names] for x in xs], dtype=np.float32)))
    width = int(pipeline.generator.get("width", 50))
    start, rate = got["start_us"], plan.rate

    def scored(window_ends: list[int]) -> dict[str, Any]:
        return score_requests(request_counts(window_ends, start_us=start, rate=rate), drift_position=position,
                              width=width)

    ours = scored([int(r["window_end"]) for r in got["requests"]])
    river = river_accuracy(pipeline.learner, xs, ys.tolist())
    learner = got["learner_accuracy"]
    return {
        "seed": seed, "lag": lag, "stationary": position is None, "drift_position": position, "events": len(items),
        **ours,
        "monitors": sorted({str(r["monitor"]) for r in got["requests"]}),
        "requests_counted_by_worker": got["requests_counted"],
        "drift_detections": got["drift_detections"],
        "labels_waiting_max": got["labels_waiting_max"],
        "labels_published": got["labels_published"], "labels_joined": got["labels_joined"],
        "labels_joined_share": round(got["labels_joined"] / got["labels_published"], 5),
        "label_outcomes": got["label_outcomes"],
        "learner_accuracy": round(learner, 5), "river_accuracy": round(river, 5),
        "accuracy_gap_points": round((learner - river) * 100, 3),
        "model_accuracy": round(got["model_accuracy"], 5),
        "model_error_mean": {"before": round(float(errors[: position or len(items)].mean()), 4),
                             "after": round(float(errors[position:].mean()), 4) if position else None},
        "baselines": {name: {"stationary": position is None,
                             **scored(replay(errors.tolist(), times, pipeline.monitors, pipeline.drift, scripted=lv))}
                      for name, lv in (("offline", None), ("always_fire", Level.DRIFT), ("never_fire", Level.OK))},
        "behind_schedule_max_s": got["behind_schedule_max_s"], "play_s": got["play_s"], "settle_s": got["settle_s"],
        "wall_s": got["wall_s"], "worker_log": got["worker_log"],
    }


def _line(row: dict[str, Any]) -> str:
    kind = "stationary" if row["stationary"] else f"drift at {row['drift_position']:,}"
    return (f"seed {row['seed']} lag {row['lag']} ({kind}): {row['requests']} request(s) at {row['at']}, delay "
            f"{row['delay']}, false alarms {row['false_alarms']}; labels joined {row['labels_joined']:,}/"
            f"{row['labels_published']:,} (at most {row['labels_waiting_max']} waiting); learner accuracy "
            f"{row['learner_accuracy']:.4f} vs River's {row['river_accuracy']:.4f}; baselines: always {row['baselines']['always_fire']['at']}, "
            f"offline {row['baselines']['offline']['at']} ({row['wall_s']:.0f} s)")


def _machine() -> dict[str, Any]:
    import river

    return {"cpus": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "river": river.__version__, "load_avg_start": [round(v, 2) for v in os.getloadavg()]}


def run_drift_bench(settings: Settings, *, quick: bool, progress: Callable[[str], None],
                    plan: DriftPlan | None = None) -> dict[str, Any]:
    """The bench (see the module's text); ``plan`` overrides the full or quick plan (tests)."""
    from streaming.inference.session import OnnxModel
    from streaming.training.job import train_pipeline

    plan = plan or (QUICK if quick else FULL)
    t_start = time.monotonic()
    machine = _machine()
    schemas_dir = settings.path(settings.schemas_dir)
    pipeline, codec = load_sea(schemas_dir)
    run_dir = settings.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="drift-models-", dir=run_dir) as tmp:
        registry = ModelRegistry(Path(tmp), pipeline.name)
        mv = train_pipeline(pipeline, registry, progress=lambda m: progress(f"v1: {m}"))
        model = OnnxModel(mv, provider="cpu")
        with endpoints(settings) as (bootstrap, redis_url):
            progress(f"broker {bootstrap}, Redis {redis_url}; {len(plan.seeds)} seed(s) x lags {list(plan.lags)}"
                     f"{' + stationary' if plan.stationary else ''}: {plan.length:,} events at {plan.rate:g}/s each")
            runs: list[tuple[int, int, int | None]] = []
            for seed in plan.seeds:
                runs += [(seed, lag, plan.drift_position) for lag in plan.lags]
                runs += [(seed, 0, None)] if plan.stationary else []
            for k, (seed, lag, position) in enumerate(runs):
                ctx = StackRun(bootstrap, redis_url, codec, pipeline, PIPELINE_FILE, Path(tmp), schemas_dir, run_dir,
                               f"s{seed}l{lag}{'d' if position else 's'}")
                got = run_through_stack(ctx, _stream(pipeline, plan, seed, position), lag=lag, rate=plan.rate)
                rows.append(_row(pipeline, model, plan, seed, lag, position, got))
                progress(f"run {k + 1}/{len(runs)}: {_line(rows[-1])}")
    baselines = {name: [r["baselines"][name] for r in rows] for name in ("offline", "always_fire", "never_fire")}
    result: dict[str, Any] = {
        "bench": "drift",
        "quick": quick,
        "machine": {**machine, "load_avg_end": [round(v, 2) for v in os.getloadavg()]},
        "plan": asdict(plan),
        "stream": {"generator": dict(pipeline.generator), "pipeline": str(PIPELINE_FILE),
                   "learner": {"kind": pipeline.learner.kind, "params": pipeline.learner.params,
                               "warmup": pipeline.learner.warmup},
                   "monitors": [{"name": m.name, "detector": m.detector, "signal": m.signal, "params": m.params,
                                 "cooldown_s": m.cooldown_s} for m in pipeline.monitors],
                   "drift": asdict(pipeline.drift)},
        "model": {"version": mv.version, "roc_auc": round(float(mv.metadata["metrics"]["roc_auc"]), 4),
                  "sha256": mv.metadata["sha256"]},
        "notes": NOTES,
        "runs": rows,
        "aggregate": {
            "ours": {**summarise(rows),
                     "labels_joined_share_min": min(r["labels_joined_share"] for r in rows),
                     "accuracy_gap_points_max": max(abs(r["accuracy_gap_points"]) for r in rows)},
            **{name: summarise(b) for name, b in baselines.items()},
        },
        "targets": targets(rows),
        "baseline_targets": {name: detection_targets(b) for name, b in baselines.items()},
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    progress(f"targets {result['targets']}; always-fire {result['baseline_targets']['always_fire']}, "
             f"never-fire {result['baseline_targets']['never_fire']} ({result['wall_s']:.0f} s)")
    return result


def calibrate_sea(settings: Settings, *, streams: int = 20, length: int = 20_000, target: float = 0.01,
                  write: bool = False, progress: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Calibrate the SEA pipeline's monitors on v1 as the bench trains it (``streaming drift calibrate``
    semantics: :func:`streaming.online.stationary.calibrate_pipeline`); ``write`` stores the values in
    ``pipeline.toml`` (comments kept). How the recorded thresholds were made:
    ``calibrate_sea(Settings.from_env(), write=True)``."""
    from streaming.online.stationary import calibrate_pipeline, write_calibration
    from streaming.training.job import train_pipeline

    pipeline, _ = load_sea(settings.path(settings.schemas_dir))
    with tempfile.TemporaryDirectory(prefix="drift-calibrate-") as tmp:
        registry = ModelRegistry(Path(tmp), pipeline.name)
        train_pipeline(pipeline, registry, progress=progress)
        results = calibrate_pipeline(pipeline, registry, streams=streams, length=length, target=target,
                                     progress=progress)
    if write:
        write_calibration(PIPELINE_FILE, results)
    return [r.as_dict() for r in results]
