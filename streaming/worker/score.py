"""The score step: decode, features, inference, predictions (one micro-batch).

Bad input becomes a dead letter with its reason; a failing model falls back
to the online learner (flagged); a failing feature store is retried with
backoff, which blocks the agent and so pauses consumption (nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.events.codec import DecodeError
from streaming.events.deadletter import DeadLetter
from streaming.events.producer import entity_key
from streaming.features.store import ServedVector, WindowResult
from streaming.inference.session import OnnxModel
from streaming.worker.records import InRecord, OutRecord
from streaming.worker.runtime import Runtime

__all__ = ["Prepared", "Row", "ScoreProcessor", "ScoredBatch"]

log = logging.getLogger(__name__)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class Row:
    """One event ready for inference: its record, decoded event, window features and vector."""

    rec: InRecord
    ev: dict[str, Any]
    window: WindowResult
    x: np.ndarray
    degraded: bool
    features_at: int  # epoch µs when its features were ready
    token: Any = None  # what the caller acks once the prediction is on the broker


@dataclass
class Prepared:
    dead: list[tuple[OutRecord, Any]]  # dead letters and their tokens
    rows: list[Row]


@dataclass
class ScoredBatch:
    out: list[OutRecord]
    produced_ms: list[int]  # Kafka timestamps of the scored events (for e2e latency)
    scored: int
    deadletters: int
    duplicates: int
    #: what the batch cost that scales with its rows: inference timed on its thread plus building the
    #: records; not the wait for the event loop, which a busy loop stretches whatever the batch size
    service_s: float = 0.0


def dead_letter(rec: InRecord, stage: str, exc: BaseException) -> DeadLetter:
    return DeadLetter(
        rec.key, rec.value, rec.topic, rec.partition, rec.offset, rec.timestamp_ms, stage, type(exc).__name__, str(exc)
    )


class ScoreProcessor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.subject = rt.pipeline.event.schema
        self.topic_predictions = rt.settings.topic_predictions
        self.topic_dlq = rt.settings.topic_dlq
        self.threshold = rt.pipeline.threshold
        self.names = rt.vectors.names
        self.max_backoff_s = 5.0
        self.spec_version = rt.vectors.spec_version
        self._defaults = WindowResult([0.0] * len(rt.pipeline.window_features), applied=False)
        # ONNX Runtime releases the GIL: inference runs here while the event loop goes on with Kafka I/O
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._log_tasks: set[asyncio.Task[None]] = set()
        self.run_s = 0.0  # inference time measured on the inference thread (see ScoredBatch.service_s)
        self.max_log_tasks = 8

    def _dlq(self, rec: InRecord, stage: str, exc: BaseException) -> OutRecord:
        dl = dead_letter(rec, stage, exc)
        self.rt.metrics.deadletters.labels(stage).inc()
        self.rt.metrics.events.labels("deadletter").inc()
        return OutRecord(self.topic_dlq, rec.key, rec.value, dl.headers())

    def _check(self, ev: dict[str, Any]) -> None:
        t = ev[self.rt.pipeline.event.time_field]
        if not isinstance(t, int) or t <= 0:
            raise DecodeError(f"{self.rt.pipeline.event.time_field} must be positive epoch microseconds, got {t!r}")
        for f in self.rt.pipeline.window_features:
            if f.field is not None and not math.isfinite(float(ev[f.field] or 0.0)):
                raise DecodeError(f"{f.field} is not a finite number: {ev[f.field]!r}")

    async def _windows(self, events: list[dict[str, Any]]) -> list[WindowResult] | None:
        """The batch's window features; None when the store failed and the pipeline says to use defaults."""
        delay = 0.05
        while True:
            t0 = time.perf_counter()
            try:
                result = await self.rt.store.update_and_read(events)
                self.rt.metrics.store_seconds.labels("update_and_read").observe(time.perf_counter() - t0)
                return result
            except Exception as exc:  # redis raises several types; all mean "retry"
                self.rt.metrics.store_errors.labels("update_and_read").inc()
                if self.rt.pipeline.on_store_error == "default":
                    log.warning("feature store failed (%s: %s); scoring with default features", type(exc).__name__, exc)
                    return None
                log.warning("feature store failed (%s: %s); retrying in %.2fs (consumption paused)",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def _predict(self, model: OnnxModel, X: np.ndarray) -> np.ndarray:
        """The model's scores: on the event loop when the batch is cheap (:meth:`OnnxModel.runs_inline`),
        else on the inference thread (ONNX Runtime releases the GIL: the loop goes on with Kafka I/O)."""
        if model.runs_inline(len(X)):
            return self._timed(model, X)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._timed, model, X)

    def _timed(self, model: OnnxModel, X: np.ndarray) -> np.ndarray:
        """``model.predict`` on the inference thread, adding its own run time to ``self.run_s``."""
        t0 = time.perf_counter()
        try:
            return model.predict(X)
        finally:
            self.run_s += time.perf_counter() - t0

    async def _scores(self, model: OnnxModel, X: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        reasons: list[str | None] = [None] * len(X)
        try:
            scores = (await self._predict(model, X)).astype(np.float64)
        except Exception as exc:
            log.error("inference failed (%s: %s); using the online learner", type(exc).__name__, exc)
            scores = np.full(len(X), np.nan)
            reasons = ["inference_error"] * len(X)
        bad = ~np.isfinite(scores)
        if bad.any():
            for i in np.flatnonzero(bad):
                reasons[i] = reasons[i] or "nan_score"
                scores[i] = self._fallback_score(X[i])
                self.rt.metrics.fallback.labels(reasons[i]).inc()
        return scores, reasons

    def _fallback_score(self, row: np.ndarray) -> float:
        fb = self.rt.pipeline.model.fallback
        if fb.kind == "rule" and fb.feature is not None:
            return 1.0 if float(row[self.names.index(fb.feature)]) > fb.above else 0.0
        return self._learner_score(row)

    async def _shadow_scores(self, shadow: OnnxModel, X: np.ndarray, active: np.ndarray) -> np.ndarray | None:
        """Score the batch with the shadow model too; compare, never publish."""
        try:
            out = (await self._predict(shadow, X)).astype(np.float64)
        except Exception as exc:
            log.error("shadow model %s failed (%s: %s)", shadow.tag, type(exc).__name__, exc)
            return None
        m = self.rt.metrics
        for diff in np.abs(out - active):
            m.shadow_diff.observe(float(diff))
        disagree = int(np.count_nonzero((out >= self.threshold) != (active >= self.threshold)))
        if disagree:
            m.shadow_disagreements.inc(disagree)
        return out

    def _learner_score(self, row: np.ndarray) -> float:
        proba = self.rt.learner.predict_proba_one(dict(zip(self.names, row.tolist(), strict=True)))
        return float(proba.get(True, 0.0))

    async def prepare(self, records: Sequence[InRecord], tokens: Sequence[Any] | None = None) -> Prepared:
        """Decode a consumer batch and read its window features (one store round trip).

        Returns the dead letters (with their tokens) and the rows ready for
        inference; ``tokens`` (e.g. Faust events to ack later) travel with them.
        """
        rt = self.rt
        m = rt.metrics
        toks: Sequence[Any] = tokens if tokens is not None else [None] * len(records)
        dead: list[tuple[OutRecord, Any]] = []
        good: list[tuple[InRecord, dict[str, Any], Any]] = []
        t0 = time.perf_counter()
        for rec, tok in zip(records, toks, strict=True):
            try:
                ev = rt.codec.decode(self.subject, rec.value)
                self._check(ev)
                good.append((rec, ev, tok))
            except (DecodeError, KeyError, TypeError, ValueError) as exc:
                dead.append((self._dlq(rec, "decode", exc), tok))
        m.stage.labels("decode").observe(time.perf_counter() - t0)
        if not good:
            return Prepared(dead, [])
        events = [ev for _, ev, _ in good]
        t1 = time.perf_counter()
        found = await self._windows(events)
        degraded = found is None
        windows = found if found is not None else [self._defaults] * len(events)
        if degraded:
            m.events.labels("degraded").inc(len(events))
        features_at = _now_us()
        m.stage.labels("features").observe(time.perf_counter() - t1)
        X = rt.vectors.matrix(events, [w.values for w in windows])
        rows = [Row(rec, ev, w, X[i], degraded, features_at, tok)
                for i, ((rec, ev, tok), w) in enumerate(zip(good, windows, strict=True))]
        return Prepared(dead, rows)

    async def _log_served(self, served: list[ServedVector]) -> None:
        """Write the served vectors to the feature log (best effort: the predictions go out regardless)."""
        t0 = time.perf_counter()
        try:
            await self.rt.store.log_served(served)
            self.rt.metrics.store_seconds.labels("log_served").observe(time.perf_counter() - t0)
        except Exception as exc:  # redis raises several types
            self.rt.metrics.store_errors.labels("log_served").inc()
            log.warning("feature log write failed (%s: %s)", type(exc).__name__, exc)

    async def flush_logs(self) -> None:
        """Wait for the feature-log writes in flight."""
        while self._log_tasks:
            await asyncio.gather(*list(self._log_tasks))

    async def score(self, rows: Sequence[Row], *, wait_log: bool = True) -> ScoredBatch:
        """Score one inference batch: the active model (and the shadow), predictions, the feature log.

        With ``wait_log=False`` the feature-log write (a Redis round trip) runs in the background
        (at most ``max_log_tasks`` at once) instead of holding up the next batch; labels arrive
        seconds later, long after it has landed.
        """
        rt = self.rt
        m = rt.metrics
        out: list[OutRecord] = []
        X = np.stack([r.x for r in rows])
        model, shadow = rt.models.active, rt.models.shadow  # a model change takes effect between batches
        started = _now_us()
        t2 = time.perf_counter()
        self.run_s = 0.0
        scores, reasons = await self._scores(model, X)
        predicted_at = _now_us()
        m.stage.labels("inference").observe(time.perf_counter() - t2)
        m.batch_size.observe(len(rows))
        shadow_scores = await self._shadow_scores(shadow, X, scores) if shadow is not None else None
        t_build = time.perf_counter()

        spec = rt.pipeline.event
        tag = model.tag
        served: list[ServedVector] = []
        produced: list[int] = []
        duplicates = late = 0
        challenger = rt.settings.challenger
        any_degraded = False
        for i, r in enumerate(rows):
            rec, ev, w = r.rec, r.ev, r.window
            score = float(scores[i])
            flags = []
            if r.degraded:
                flags.append("default_features")
                any_degraded = True
            elif w.late:
                flags.append("late")
                late += 1
            elif not w.applied:
                flags.append("redelivered")
                duplicates += 1
            eid = str(ev[spec.id_field])
            pred = {
                "event_id": eid,
                "key": entity_key(ev, spec.key),
                "model": rt.pipeline.name,
                "model_version": tag,
                "score": score,
                "decision": score >= self.threshold,
                "challenger_score": self._learner_score(X[i]) if challenger else None,
                "fallback": reasons[i],
                "flags": flags,
                "event_time": int(ev[spec.time_field]),
                "produced_at": (rec.timestamp_ms or 0) * 1000,
                "received_at": rec.received_us,
                "features_at": r.features_at,
                "inference_started_at": started,
                "predicted_at": predicted_at,
                "batch_size": len(rows),
            }
            out.append(OutRecord(self.topic_predictions, rec.key, rt.codec.encode("prediction", pred)))
            if not r.degraded:
                served.append(ServedVector(
                    eid, X[i].tolist(), tag, score, int(ev[spec.time_field]), self.spec_version,
                    None if shadow is None else shadow.tag,
                    None if shadow_scores is None else float(shadow_scores[i]),
                ))
            produced.append(rec.timestamp_ms or 0)
        if any_degraded and not served:
            m.store_errors.labels("log_served").inc()  # the store is down: nothing to log (defaults served)
        elif served:
            task = asyncio.ensure_future(self._log_served(served))
            self._log_tasks.add(task)
            task.add_done_callback(self._log_tasks.discard)
            if wait_log or len(self._log_tasks) > self.max_log_tasks:
                await task
        m.events.labels("scored").inc(len(rows))
        if duplicates:
            m.events.labels("duplicate").inc(duplicates)
        if late:
            m.events.labels("late").inc(late)
        return ScoredBatch(out, produced, len(rows), 0, duplicates,
                           service_s=self.run_s + (time.perf_counter() - t_build))

    async def process(self, records: Sequence[InRecord]) -> ScoredBatch:
        """Prepare and score a consumer batch as one inference batch (dead letters first)."""
        prepared = await self.prepare(records)
        dead = [o for o, _ in prepared.dead]
        if not prepared.rows:
            return ScoredBatch(dead, [], 0, len(dead), 0)
        batch = await self.score(prepared.rows)
        return ScoredBatch(dead + batch.out, batch.produced_ms, batch.scored, len(dead), batch.duplicates)
