"""The learn step: join labels to the vectors served, learn, evaluate, watch drift.

Every label ends one of three ways, each counted (``streaming_labels_total{outcome}``): joined
(learned from and evaluated), or dead-lettered with its reason: undecodable or beyond the
pipeline's limits (``label_decode``), no served vector in the feature log (``label_join``:
never scored, or older than the log's TTL), or a vector that cannot be learned from
(``label_learn``: an unreadable log entry, a vector built by another feature spec, a learner
that raised). None is acked silently. A feature-store error is retried with backoff, like the
score path's: the label handler waits, so the consumer pauses and nothing is acked meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streaming.drift.monitor import DriftMonitor
from streaming.features.store import ServedVector
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
    unlearnable: int = 0


class LabelProcessor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.names = rt.vectors.names
        self.spec_version = rt.vectors.spec_version
        self.offsets: dict[str, int] = {}
        self.max_backoff_s = 5.0

    def _dead(self, rec: InRecord, stage: str, exc: BaseException, outcome: str) -> OutRecord:
        dl = dead_letter(rec, stage, exc)
        m = self.rt.metrics
        m.deadletters.labels(stage).inc()
        m.labels.labels(outcome).inc()
        key, value, headers = dl.parts(self.rt.pipeline.limits.dead_letter_bytes)
        return OutRecord(self.rt.settings.topic_dlq, key, value, headers)

    async def _read_served(self, event_ids: list[str]) -> list[ServedVector | ValueError | None]:
        """The served vectors, retried with backoff while the feature store fails (the consumer waits)."""
        delay = 0.05
        while True:
            try:
                return await self.rt.store.read_served(event_ids)
            except Exception as exc:  # redis raises several types; all mean "retry"
                self.rt.metrics.store_errors.labels("read_served").inc()
                log.warning("feature log read failed (%s: %s); retrying in %.2fs (labels paused)",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def process(self, records: Sequence[InRecord]) -> LearnedBatch:
        rt = self.rt
        m = rt.metrics
        out: list[OutRecord] = []
        labels: list[tuple[InRecord, dict[str, Any]]] = []
        limits = rt.pipeline.limits
        for rec in records:
            try:
                lab = rt.codec.decode("label", rec.value, limits)
                labels.append((rec, lab))
            except Exception as exc:  # one record's failure is that record's dead letter
                out.append(self._dead(rec, "label_decode", exc, "invalid"))
            self.offsets[str(rec.partition)] = rec.offset
        invalid = len(out)
        served = await self._read_served([str(lab["event_id"]) for _, lab in labels]) if labels else []
        joined = unjoined = unlearnable = 0
        requests: list[dict[str, Any]] = []
        active = rt.models.active.tag
        if any(mon.model_version != active for mon in rt.monitors):  # a new model: watch it from scratch
            rt.monitors = [DriftMonitor(mon.spec, rt.pipeline.name, active) for mon in rt.monitors]
        for (rec, lab), sv in zip(labels, served, strict=True):
            if sv is None:
                unjoined += 1
                out.append(self._dead(rec, "label_join", LookupError(
                    f"no served vector for event {lab['event_id']!r} (never scored, or older than the feature "
                    "log's TTL)"), "unjoined"))
                continue
            if isinstance(sv, ValueError):
                unlearnable += 1
                out.append(self._dead(rec, "label_learn", sv, "unlearnable"))
                continue
            if sv.feature_spec != self.spec_version or len(sv.x) != len(self.names):
                unlearnable += 1
                out.append(self._dead(rec, "label_learn", ValueError(
                    f"vector built by feature spec {sv.feature_spec or 'unknown'!r} ({len(sv.x)} values), the "
                    f"worker's is {self.spec_version!r} ({len(self.names)} values)"), "unlearnable"))
                continue
            try:
                requests.extend(self._learn(lab, sv))
            except Exception as exc:  # the learner or a monitor raised on this label
                unlearnable += 1
                out.append(self._dead(rec, "label_learn", exc, "unlearnable"))
                continue
            joined += 1
        for req in requests:
            m.retrain_requests.labels(req["model"], req["monitor"]).inc()
            out.append(OutRecord(rt.settings.topic_retrain, req["model"].encode(), rt.codec.encode("retrain_request", req)))
        m.labels.labels("joined").inc(joined)
        for scorer, values in rt.evaluator.report().items():
            for metric, v in values.items():
                if metric != "n":
                    m.online_metric.labels(rt.pipeline.name, scorer, metric).set(v)
        return LearnedBatch(out, joined, unjoined, invalid, requests, unlearnable)

    def _learn(self, lab: dict[str, Any], sv: ServedVector) -> list[dict[str, Any]]:
        """Learn from one joined label, evaluate the scorers, update the monitors; the retrain requests."""
        rt = self.rt
        m = rt.metrics
        y = int(lab["label"])
        x = dict(zip(self.names, sv.x, strict=True))
        learner_p = float(rt.learner.predict_proba_one(x).get(True, 0.0))
        rt.learner.learn_one(x, bool(y))
        rt.evaluator.update("model", y, sv.score)
        rt.evaluator.update("learner", y, learner_p)
        if sv.shadow_score is not None:
            rt.evaluator.update("shadow", y, sv.shadow_score)
        requests = []
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
        return requests
