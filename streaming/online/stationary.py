"""``streaming drift calibrate``: every monitor's threshold set for a false-alarm rate on stationary streams.

The pipeline's generator plays ``streams`` streams of ``length`` events each, with no drift switch and
seeds of their own (not the training seed); their vectors are computed with the serving path's feature
semantics (:func:`streaming.training.dataset.featurize`) and scored by the active model version. Each
monitor's signal is then replayed through :func:`streaming.online.calibrate.calibrate`: the error
``|label - score|`` for ``error`` monitors, the score for ``score`` monitors, the vectors for
``features`` monitors (against the version's reference snapshot). The most sensitive setting with at
most ``target`` false alarms per stream is written into the pipeline file's ``[[monitors]]`` params
(comments and layout kept), unless it is a dry run.

A stream is the span one monitor should stay quiet over: its length in events is the unit of the target
(``target`` 0.05 on streams of 20,000 events: at most one false DRIFT per 400,000 events, or labels).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streaming.inference.registry import ModelRegistry
from streaming.online.calibrate import Calibration, calibrate, calibrate_features
from streaming.online.detectors import ReferenceSnapshot
from streaming.pipeline.spec import Pipeline
from streaming.synthetic.registry import generator_for
from streaming.training.dataset import featurize

__all__ = ["MonitorCalibration", "calibrate_pipeline", "write_calibration"]


@dataclass(frozen=True)
class MonitorCalibration:
    monitor: str
    signal: str
    calibration: Calibration

    def as_dict(self) -> dict[str, Any]:
        c = self.calibration
        return {"monitor": self.monitor, "signal": self.signal, "detector": c.kind, "param": c.param,
                "value": c.value, "false_alarms_per_stream": c.false_alarms, "per_10k": c.per_10k,
                "target": c.target, "met": c.met, "samples": c.samples, "streams": c.streams}

    def line(self) -> str:
        c = self.calibration
        return (f"{self.monitor:14} {c.kind:12} {c.param} = {c.value:.4g}: {c.false_alarms:.3f} false alarms per "
                f"stream (target {c.target:g}){'' if c.met else ' - TARGET MISSED at the least sensitive setting'}")


def _stream_signals(pipeline: Pipeline, onnx: Any, *, length: int, seed: int,
                    rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stationary stream: vectors, labels and the active model's scores."""
    gen = generator_for(pipeline, rate=rate, seed=seed, start_us=0)
    ds = featurize(pipeline, list(itertools.islice(gen, length)))
    scores = onnx.predict(ds.X.astype(np.float32)).astype(np.float64)
    return ds.X, ds.y, scores


def calibrate_pipeline(pipeline: Pipeline, registry: ModelRegistry, *, streams: int = 10, length: int = 20_000,
                       target: float = 0.05, seed: int = 1000,
                       progress: Callable[[str], None] = lambda _m: None) -> list[MonitorCalibration]:
    """Calibrate every monitor of ``pipeline`` against its active model version (see the module's text)."""
    from streaming.inference.session import OnnxModel

    active = registry.active()
    model = OnnxModel(active, provider="cpu")
    reference = ReferenceSnapshot.load(active.reference_path) if active.reference_path.exists() else None
    rate = float(pipeline.model.train.get("rate", 200))
    data = []
    t0 = time.monotonic()
    for i in range(streams):
        data.append(_stream_signals(pipeline, model, length=length, seed=seed + i, rate=rate))
        progress(f"stationary stream {i + 1}/{streams}: {length:,} events ({time.monotonic() - t0:.0f}s)")
    names = list(pipeline.model.inputs)
    out = []
    for spec in pipeline.monitors:
        t1 = time.monotonic()
        if spec.signal == "features":
            if reference is None:
                raise ValueError(f"{active.name} {active.version} has no reference snapshot; run `streaming train`")
            params = dict(spec.params)
            chosen = list(params.pop("features", names))
            cols = [names.index(f) for f in chosen]
            cal = calibrate_features({"names": chosen, **params}, [X[:, cols] for X, _, _ in data],
                                     reference=reference, target_false_alarms=target)
        else:
            signal: Sequence[np.ndarray] = ([np.abs(y - s) for _, y, s in data] if spec.signal == "error"
                                            else [s for _, _, s in data])
            if spec.detector in ("psi", "ks") and reference is None:
                raise ValueError(f"{active.name} {active.version} has no reference snapshot; run `streaming train`")
            cal = calibrate(spec.detector, spec.params, signal, target_false_alarms=target, reference=reference,
                            signal="score" if spec.signal == "score" else None)
        mc = MonitorCalibration(spec.name, spec.signal, cal)
        progress(f"{mc.line()} ({time.monotonic() - t1:.1f}s)")
        out.append(mc)
    return out


def write_calibration(path: Path, results: Sequence[MonitorCalibration]) -> None:
    """Write each calibrated value into the pipeline file's ``[[monitors]]`` params, keeping its comments."""
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    by_name = {r.monitor: r for r in results}
    for mon in doc.get("monitors", []):
        r = by_name.get(str(mon["name"]))
        if r is None:
            continue
        params = mon.get("params")
        if params is None:
            params = tomlkit.inline_table()
            mon["params"] = params
        for key, value in r.calibration.params().items():
            if key == "names":
                continue
            params[key] = float(f"{value:.4g}") if isinstance(value, float) else value
    path.write_text(tomlkit.dumps(doc))


