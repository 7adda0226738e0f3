"""The learn step: join labels to the vectors served, learn, evaluate, watch drift.

Every label ends one of four ways, each counted (``streaming_labels_total{outcome}``): joined
(learned from and evaluated), a duplicate (its event's label was learned before: a redelivery or
a second label; not learned twice), or dead-lettered with its reason: undecodable or beyond the
pipeline's limits (``label_decode``), no served vector in the feature log (``label_join``: never
scored within the wait, or older than the log's TTL), or a vector that cannot be learned from
(``label_learn``: an unreadable log entry, a vector built by another feature spec, a learner
that raised). None is acked silently.

A label that arrives before its event's vector is logged (the log is written after scoring, in
the background) waits for it, up to ``[learner] label_wait`` and at most ``label_wait_max`` labels
at once: :meth:`LabelProcessor.retry` joins the waiting ones again (the worker calls it twice a
second), and only then is a label's token returned to be acknowledged. A feature-store error is
retried with backoff, like the score path's: the label handler waits, so the consumer pauses and
nothing is acked meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streaming.drift.monitor import DriftMonitor
from streaming.features.store import ServedVector
from streaming.worker.records import InRecord, OutRecord
from streaming.worker.retry import until_stored
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
    duplicates: int = 0
    done: list[Any] = field(default_factory=list)  # tokens of the labels finished here (joined or dead-lettered)
    waiting: int = 0  # labels left waiting for their vector


@dataclass
class _Label:
    rec: InRecord
    lab: dict[str, Any]
    token: Any
    since: float  # time.monotonic() when it first found no vector


class LabelProcessor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.names = rt.vectors.names
        self.spec_version = rt.vectors.spec_version
        self.offsets: dict[str, int] = {}
        self.max_backoff_s = 5.0
        self.wait_s = rt.pipeline.learner.label_wait_s
        self.wait_max = rt.pipeline.learner.label_wait_max
        self.log_ttl_s = rt.settings.feature_log_ttl_s
        self.waiting: list[_Label] = []

    @property
    def full(self) -> bool:
        """As many labels wait as the pipeline allows: the caller should pause the label consumer."""
        return len(self.waiting) >= self.wait_max

    def _dead(self, rec: InRecord, stage: str, exc: BaseException, outcome: str) -> OutRecord:
        dl = dead_letter(rec, stage, exc)
        m = self.rt.metrics
        m.deadletters.labels(stage).inc()
        m.labels.labels(outcome).inc()
        key, value, headers = dl.parts(self.rt.pipeline.limits.dead_letter_bytes)
        return OutRecord(self.rt.settings.topic_dlq, key, value, headers)

    async def _read_served(self, event_ids: list[str]) -> list[ServedVector | ValueError | None]:
        """The served vectors, retried with backoff while the feature store fails (the consumer waits)."""
        return await until_stored(lambda: self.rt.store.read_served(event_ids), op="read_served",
                                  what="feature log read (labels paused)", metrics=self.rt.metrics,
                                  max_backoff_s=self.max_backoff_s)

    async def process(self, records: Sequence[InRecord], tokens: Sequence[Any] | None = None) -> LearnedBatch:
        """Decode, join and learn a consumer batch of labels; the unjoined ones wait (see :meth:`retry`)."""
        rt = self.rt
        out: list[OutRecord] = []
        done: list[Any] = []
        labels: list[_Label] = []
        limits = rt.pipeline.limits
        now = time.monotonic()
        toks: Sequence[Any] = tokens if tokens is not None else [None] * len(records)
        for rec, tok in zip(records, toks, strict=True):
            try:
                labels.append(_Label(rec, rt.codec.decode("label", rec.value, limits), tok, now))
            except Exception as exc:  # one record's failure is that record's dead letter
                out.append(self._dead(rec, "label_decode", exc, "invalid"))
                done.append(tok)
            self.offsets[str(rec.partition)] = rec.offset
        batch = await self._join(labels, out, done)
        batch.invalid = len(records) - len(labels)
        return batch

    async def retry(self) -> LearnedBatch:
        """Join the waiting labels again; those that waited ``label_wait`` in vain become dead letters."""
        labels, self.waiting = self.waiting, []
        return await self._join(labels, [], [])

    async def _join(self, labels: list[_Label], out: list[OutRecord], done: list[Any]) -> LearnedBatch:
        rt = self.rt
        m = rt.metrics
        served = await self._read_served([str(w.lab["event_id"]) for w in labels]) if labels else []
        joined = unjoined = unlearnable = 0
        requests: list[dict[str, Any]] = []
        active = rt.models.active.tag
        if any(mon.model_version != active for mon in rt.monitors):  # a new model: watch it from scratch
            rt.monitors = [DriftMonitor(mon.spec, rt.pipeline.name, active) for mon in rt.monitors]
        now = time.monotonic()
        now_ms = time.time() * 1000
        learnable: list[tuple[_Label, ServedVector]] = []
        for w, sv in zip(labels, served, strict=True):
            rec, lab = w.rec, w.lab
            if sv is None:
                old = rec.timestamp_ms is not None and now_ms - rec.timestamp_ms > self.log_ttl_s * 1000
                if not old and now - w.since < self.wait_s:
                    self.waiting.append(w)  # its event's vector may not be logged yet
                    continue
                unjoined += 1
                why = (f"older than the feature log's TTL ({self.log_ttl_s}s)" if old
                       else f"not scored within {self.wait_s:g}s of the label")
                out.append(self._dead(rec, "label_join", LookupError(
                    f"no served vector for event {lab['event_id']!r} ({why})"), "unjoined"))
            elif isinstance(sv, ValueError):
                unlearnable += 1
                out.append(self._dead(rec, "label_learn", sv, "unlearnable"))
            elif sv.feature_spec != self.spec_version or len(sv.x) != len(self.names):
                unlearnable += 1
                out.append(self._dead(rec, "label_learn", ValueError(
                    f"vector built by feature spec {sv.feature_spec or 'unknown'!r} ({len(sv.x)} values), the "
                    f"worker's is {self.spec_version!r} ({len(self.names)} values)"), "unlearnable"))
            else:
                learnable.append((w, sv))
                continue
            done.append(w.token)
        claimed = await self._claim([sv.event_id for _, sv in learnable]) if learnable else []
        duplicates = 0
        for (w, sv), new in zip(learnable, claimed, strict=True):
            done.append(w.token)
            if not new:
                duplicates += 1  # learned before (a redelivered or a second label): not twice
                continue
            try:
                requests.extend(self._learn(w.lab, sv))
            except Exception as exc:  # the learner or a monitor raised on this label
                unlearnable += 1
                out.append(self._dead(w.rec, "label_learn", exc, "unlearnable"))
                continue
            joined += 1
        if duplicates:
            m.labels.labels("duplicate").inc(duplicates)
        m.labels_waiting.set(len(self.waiting))
        for req in requests:
            m.retrain_requests.labels(req["model"], req["monitor"]).inc()
            out.append(OutRecord(rt.settings.topic_retrain, req["model"].encode(), rt.codec.encode("retrain_request", req)))
        m.labels.labels("joined").inc(joined)
        for scorer, values in rt.evaluator.report().items():
            for metric, v in values.items():
                if metric != "n":
                    m.online_metric.labels(rt.pipeline.name, scorer, metric).set(v)
        return LearnedBatch(out, joined, unjoined, 0, requests, unlearnable, duplicates, done, len(self.waiting))

    async def _claim(self, event_ids: list[str]) -> list[bool]:
        """Which labels are new (:meth:`FeatureStore.claim_labels`), retried while the feature store fails."""
        return await until_stored(lambda: self.rt.store.claim_labels(event_ids), op="claim_labels",
                                  what="label claim (labels paused)", metrics=self.rt.metrics,
                                  max_backoff_s=self.max_backoff_s)

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
