"""The learn step: join labels to the vectors served, learn, evaluate, watch drift."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streaming.drift.monitor import DriftMonitor
from streaming.events.codec import DecodeError
from streaming.worker.records import InRecord, OutRecord
from streaming.worker.runtime import Runtime
from streaming.worker.score import dead_letter

__all__ = ["LabelProcessor", "LearnedBatch"]

log = logging.getLogger(__name__)


@dataclass
class LearnedBatch:
    out: list[OutRecord]
    joined: int
    unjoined: int
    invalid: int
    requests: list[dict[str, Any]]


class LabelProcessor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.names = rt.vectors.names
        self.offsets: dict[str, int] = {}

    async def process(self, records: Sequence[InRecord]) -> LearnedBatch:
        rt = self.rt
        m = rt.metrics
        out: list[OutRecord] = []
        labels: list[tuple[InRecord, dict[str, Any]]] = []
        for rec in records:
            try:
                labels.append((rec, rt.codec.decode("label", rec.value)))
            except DecodeError as exc:
                dl = dead_letter(rec, "label_decode", exc)
                out.append(OutRecord(rt.settings.topic_dlq, rec.key, rec.value, dl.headers()))
                m.deadletters.labels("label_decode").inc()
                m.labels.labels("invalid").inc()
            self.offsets[str(rec.partition)] = rec.offset
        invalid = len(out)
        served = await rt.store.read_served([lab["event_id"] for _, lab in labels]) if labels else []
        joined = unjoined = 0
        requests: list[dict[str, Any]] = []
        active = rt.models.active.tag
        if any(mon.model_version != active for mon in rt.monitors):  # a new model: watch it from scratch
            rt.monitors = [DriftMonitor(mon.spec, rt.pipeline.name, active) for mon in rt.monitors]
        for (_rec, lab), sv in zip(labels, served, strict=True):
            if sv is None:
                unjoined += 1
                continue
            joined += 1
            y = int(lab["label"])
            x = dict(zip(self.names, sv.x, strict=True))
            learner_p = float(rt.learner.predict_proba_one(x).get(True, 0.0))
            rt.learner.learn_one(x, bool(y))
            rt.evaluator.update("model", y, sv.score)
            rt.evaluator.update("learner", y, learner_p)
            if sv.shadow_score is not None:
                rt.evaluator.update("shadow", y, sv.shadow_score)
            for mon in rt.monitors:
                if mon.model_version != sv.model_version:
                    continue  # scored by an earlier model: learn from it, do not judge the current one
                value = abs(y - sv.score) if mon.spec.signal == "error" else sv.score
                before = mon.detections
                req = mon.update(value, sv.event_time, self.offsets)
                if mon.detections > before:
                    m.drift_detections.labels(mon.spec.name).inc()
                m.drift_statistic.labels(mon.spec.name, mon.spec.signal).set(mon.statistic)
                m.drift_state.labels(mon.spec.name).set(1 if mon.state == "drift" else 0)
                if req is not None:
                    requests.append(req)
                    log.warning("drift detected by %s (%s): %.4f vs reference %.4f", mon.spec.name,
                                mon.spec.signal, req["statistic"], req["threshold"])
        for req in requests:
            m.retrain_requests.labels(req["model"], req["monitor"]).inc()
            out.append(OutRecord(rt.settings.topic_retrain, req["model"].encode(), rt.codec.encode("retrain_request", req)))
        m.labels.labels("joined").inc(joined)
        if unjoined:
            m.labels.labels("unjoined").inc(unjoined)
        for scorer, values in rt.evaluator.report().items():
            for metric, v in values.items():
                if metric != "n":
                    m.online_metric.labels(rt.pipeline.name, scorer, metric).set(v)
        return LearnedBatch(out, joined, unjoined, invalid, requests)
