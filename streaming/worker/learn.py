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

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streaming.events.deadletter import DeadLetter
from streaming.features.store import ServedVector
from streaming.online.monitor import STATES
from streaming.online.request import RetrainRequest
from streaming.worker.records import InRecord, OutRecord
from streaming.worker.retry import until_stored
from streaming.worker.runtime import Runtime

__all__ = ["LabelProcessor", "LearnedBatch"]

log = logging.getLogger(__name__)


@dataclass
class LearnedBatch:
    out: list[OutRecord]
    joined: int
    unjoined: int
    invalid: int
    requests: list[RetrainRequest]
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
        self.learned: dict[str, int] = {}  # labels partition -> highest offset the learner has learned from

    @property
    def full(self) -> bool:
        """As many labels wait as the pipeline allows: the caller should pause the label consumer."""
        return len(self.waiting) >= self.wait_max

    def _dead(self, rec: InRecord, stage: str, exc: BaseException, outcome: str) -> OutRecord:
        dl = DeadLetter.of(rec, stage, exc)
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
        requests: list[RetrainRequest] = []
        rt.watch_active()  # a new model: its monitors start from scratch
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
        claimed = await self._claim([sv.event_id for _, sv in learnable],
                                    [f"{w.rec.partition}:{w.rec.offset}" for w, _ in learnable]) if learnable else []
        duplicates = 0
        for (w, sv), holder in zip(learnable, claimed, strict=True):
            done.append(w.token)
            if not self._new(w.rec, holder):
                duplicates += 1  # learned before (a redelivered or a second label): not twice
                continue
            try:
                req = self._learn(w.lab, sv)
            except Exception as exc:  # the learner or a monitor raised on this label
                unlearnable += 1
                out.append(self._dead(w.rec, "label_learn", exc, "unlearnable"))
                continue
            self.learned[str(w.rec.partition)] = max(w.rec.offset, self.learned.get(str(w.rec.partition), -1))
            joined += 1
            if req is not None:
                requests.append(req)
        requests = await self.claim_requests(requests)
        if duplicates:
            m.labels.labels("duplicate").inc(duplicates)
        m.labels_waiting.set(len(self.waiting))
        out.extend(self.request_records(requests))
        m.labels.labels("joined").inc(joined)
        m.learner_labels.labels(rt.pipeline.name).set(rt.learner.seen)
        for scorer, values in rt.evaluator.report().items():
            for metric, v in values.items():
                if metric != "n":
                    m.online_metric.labels(rt.pipeline.name, scorer, metric).set(v)
        self.export_monitors()
        return LearnedBatch(out, joined, unjoined, 0, requests, unlearnable, duplicates, done, len(self.waiting))

    async def _claim(self, event_ids: list[str], sources: list[str]) -> list[str | None]:
        """Who learned each label before (:meth:`FeatureStore.claim_labels`), retried while the store fails."""
        return await until_stored(lambda: self.rt.store.claim_labels(event_ids, sources), op="claim_labels",
                                  what="label claim (labels paused)", metrics=self.rt.metrics,
                                  max_backoff_s=self.max_backoff_s)

    def _new(self, rec: InRecord, holder: str | None) -> bool:
        """Whether to learn this label: claimed now, or claimed by this very record before and not in the
        learner yet (a redelivery after a restart whose checkpoint predates it)."""
        if holder is None:
            return True
        return holder == f"{rec.partition}:{rec.offset}" and rec.offset > self.learned.get(str(rec.partition), -1)

    async def claim_requests(self, requests: list[RetrainRequest]) -> list[RetrainRequest]:
        """The requests this worker publishes: each model version's drift is claimed once in Redis, by
        whichever worker and monitor group gets there first (the others count it as deduplicated)."""
        kept = []
        for req in requests:
            ttl = max(self.rt.pipeline.drift.cooldown_s, 1.0)
            first = await until_stored(functools.partial(self.rt.store.claim_drift, req.dedupe_key, req.request_id, ttl),
                                       op="claim_drift", what="drift claim", metrics=self.rt.metrics,
                                       max_backoff_s=self.max_backoff_s)
            if first:
                kept.append(req)
                log.warning("drift: %s on %s %s (%s %.4f vs %.4f); retrain requested (%s)", req.monitor, req.model,
                            req.model_version, req.signal, req.statistic, req.threshold, req.dedupe_key)
            else:
                self.rt.metrics.retrain_deduplicated.labels(req.model).inc()
        return kept

    def request_records(self, requests: list[RetrainRequest]) -> list[OutRecord]:
        rt = self.rt
        out = []
        for req in requests:
            rt.metrics.retrain_requests.labels(req.model, req.monitor).inc()
            out.append(OutRecord(rt.settings.topic_retrain, req.model.encode(),
                                 rt.codec.encode("retrain_request", req.to_record())))
        return out

    def export_monitors(self) -> None:
        m = self.rt.metrics
        for mon in self.rt.monitors.monitors:
            m.drift_statistic.labels(mon.spec.name, mon.spec.signal).set(mon.statistic)
            m.drift_state.labels(mon.spec.name).set(STATES[mon.state])

    async def watch_served(self) -> LearnedBatch:
        """Feed the scores and vectors served since the last call to the label-free monitors (off the
        scoring path: the worker calls this twice a second); the requests they raise."""
        rt = self.rt
        rt.watch_active()
        group = rt.monitors
        requests: list[RetrainRequest] = []
        while rt.served_samples:
            version, scores, X, times = rt.served_samples.popleft()
            if version != group.version:
                continue  # served by the previous model
            for signal, values in (("score", scores), ("features", X)):
                if signal in group.signals:
                    req = group.observe_batch(signal, values, times, self.offsets)
                    if req is not None:
                        requests.append(req)
        requests = await self.claim_requests(requests)
        self.export_monitors()
        return LearnedBatch(self.request_records(requests), 0, 0, 0, requests)

    def _learn(self, lab: dict[str, Any], sv: ServedVector) -> RetrainRequest | None:
        """Learn from one joined label, evaluate the scorers, update the error monitors; a retrain request."""
        rt = self.rt
        y = int(lab["label"])
        x = dict(zip(self.names, sv.x, strict=True))
        learner_p = rt.learner.predict(x)  # before learning from it: prequential
        rt.learner.learn(x, bool(y))
        rt.evaluator.update("model", y, sv.score)
        if learner_p is not None:  # a cold learner abstains: nothing to evaluate
            rt.evaluator.update("learner", y, learner_p)
        if sv.shadow_score is not None:
            rt.evaluator.update("shadow", y, sv.shadow_score)
        if sv.model_version != rt.monitors.version:
            return None  # scored by an earlier model: learn from it, do not judge the current one
        before = [mon.detections for mon in rt.monitors.monitors]
        req = rt.monitors.observe("error", abs(y - sv.score), sv.event_time, self.offsets)
        for mon, n in zip(rt.monitors.monitors, before, strict=True):
            if mon.detections > n:
                rt.metrics.drift_detections.labels(mon.spec.name).inc()
        return req
