"""The score step: decode, features, inference, predictions (one micro-batch).

Bad input becomes a dead letter with its reason: whatever one record raises
while it is decoded, checked against the pipeline's limits, or turned into
features is that record's dead letter, never the batch's failure. A failing
model falls back to the online learner (flagged); a failing feature store is
retried with backoff, which blocks the agent and so pauses consumption
(nothing is lost); a batch the feature script refuses (a Redis script error,
not a connection error) is split until the record behind it is found and
dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import ResponseError

from streaming.events.codec import DecodeError
from streaming.events.deadletter import DeadLetter
from streaming.events.limits import LimitError, check_magnitudes
from streaming.events.producer import entity_key
from streaming.features.store import ServedVector, WindowResult
from streaming.inference.session import OnnxModel
from streaming.pipeline.spec import FieldFeature
from streaming.worker.records import InRecord, OutRecord
from streaming.worker.retry import until_stored
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
        self.limits = rt.pipeline.limits
        self.max_future_s = rt.pipeline.limits.max_future_s
        # the numeric fields that reach a window sum or the vector: bounded by the limits' max_abs_number
        pipeline = rt.pipeline
        self.numeric_fields = sorted({f.field for f in pipeline.window_features if f.field is not None}
                                     | {f.field for f in pipeline.features if isinstance(f, FieldFeature)
                                        and f.equals is None})

    def _dlq(self, rec: InRecord, stage: str, exc: BaseException) -> OutRecord:
        dl = DeadLetter.of(rec, stage, exc)
        self.rt.metrics.deadletters.labels(stage).inc()
        self.rt.metrics.events.labels("deadletter").inc()
        key, value, headers = dl.parts(self.rt.pipeline.limits.dead_letter_bytes)
        return OutRecord(self.topic_dlq, key, value, headers)

    def _check(self, ev: dict[str, Any], now_us: int) -> None:
        """The event's time is plausible and every value the features read is finite."""
        name = self.rt.pipeline.event.time_field
        t = ev[name]
        if not isinstance(t, int) or isinstance(t, bool) or t <= 0:
            raise DecodeError(f"{name} must be positive epoch microseconds, got {t!r}")
        ahead_s = (t - now_us) / 1e6
        if ahead_s > self.max_future_s:
            raise DecodeError(f"{name} {t} is {ahead_s:.0f}s ahead of the worker's clock (limit max_future "
                              f"{self.max_future_s:g}s; epoch microseconds expected)")
        try:
            check_magnitudes(ev, self.numeric_fields, self.limits)
        except LimitError as exc:
            raise DecodeError(str(exc)) from None

    async def _windows(self, events: list[dict[str, Any]], partitions: list[int]) -> list[WindowResult] | None:
        """The batch's window features; None when the store failed and the pipeline says to use defaults.

        Raises ResponseError when the feature script refused the batch (see :meth:`_split_windows`)."""
        delay = 0.05
        while True:
            t0 = time.perf_counter()
            try:
                result = await self.rt.store.update_and_read(events, partitions, clock_s=time.time())
                self.rt.metrics.store_seconds.labels("update_and_read").observe(time.perf_counter() - t0)
                return result
            except ResponseError:
                self.rt.metrics.store_errors.labels("update_and_read").inc()
                raise  # the script refused this batch's data: retrying it would fail forever
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
                fb = self._fallback_score(X[i])
                scores[i] = np.nan if fb is None else fb  # NaN: the learner abstains, the row's dead letter
                self.rt.metrics.fallback.labels(reasons[i] if fb is not None else "abstained").inc()
        return scores, reasons

    def _fallback_score(self, row: np.ndarray) -> float | None:
        """The rule's score, or the online learner's (None while it is cold: it abstains)."""
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

    def _learner_score(self, row: np.ndarray) -> float | None:
        return self.rt.learner.predict(dict(zip(self.names, row.tolist(), strict=True)))

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
        now_us = _now_us()
        limits = self.limits
        for rec, tok in zip(records, toks, strict=True):
            try:
                ev = rt.codec.decode(self.subject, rec.value, limits)
                self._check(ev, now_us)
                good.append((rec, ev, tok))
            except Exception as exc:  # whatever one record raises is that record's dead letter
                dead.append((self._dlq(rec, "decode", exc), tok))
        m.stage.labels("decode").observe(time.perf_counter() - t0)
        if not good:
            return Prepared(dead, [])
        t1 = time.perf_counter()
        good, windows, degraded = await self._split_windows(good, dead)
        if not good:
            return Prepared(dead, [])
        if degraded:
            m.events.labels("degraded").inc(len(good))
        features_at = _now_us()
        m.stage.labels("features").observe(time.perf_counter() - t1)
        rows = self._rows(good, windows, degraded, features_at, dead)
        return Prepared(dead, rows)

    async def _split_windows(self, good: list[tuple[InRecord, dict[str, Any], Any]],
                             dead: list[tuple[OutRecord, Any]],
                             ) -> tuple[list[tuple[InRecord, dict[str, Any], Any]], list[WindowResult], bool]:
        """The window features of ``good``; a batch the feature script refuses is halved until the record
        behind the refusal is alone, and that record goes to ``dead`` (the script writes only at its end,
        so a refused call changed nothing)."""
        try:
            found = await self._windows([ev for _, ev, _ in good], [rec.partition for rec, _, _ in good])
        except ResponseError as exc:
            if len(good) == 1:
                rec, _, tok = good[0]
                dead.append((self._dlq(rec, "features", exc), tok))
                return [], [], False
            half = len(good) // 2
            a, wa, da = await self._split_windows(good[:half], dead)
            b, wb, db = await self._split_windows(good[half:], dead)
            if da or db:  # the store went down meanwhile: defaults for all of them (flagged)
                return a + b, [self._defaults] * (len(a) + len(b)), True
            return a + b, wa + wb, False
        if found is None:
            return good, [self._defaults] * len(good), True
        return good, found, False

    def _rows(self, good: list[tuple[InRecord, dict[str, Any], Any]], windows: list[WindowResult], degraded: bool,
              features_at: int, dead: list[tuple[OutRecord, Any]]) -> list[Row]:
        """The rows ready for inference; a record whose vector cannot be built or is not finite is a dead letter."""
        vectors = self.rt.vectors
        try:
            X = vectors.matrix([ev for _, ev, _ in good], [w.values for w in windows])
            ok = np.isfinite(X).all(axis=1)
            if ok.all():
                return [Row(rec, ev, w, X[i], degraded, features_at, tok)
                        for i, ((rec, ev, tok), w) in enumerate(zip(good, windows, strict=True))]
        except Exception:
            pass
        rows = []
        for (rec, ev, tok), w in zip(good, windows, strict=True):
            try:
                x = np.asarray(vectors.row(ev, w.values), dtype=np.float32)
                if not np.isfinite(x).all():
                    raise ValueError("the feature vector is not finite: "
                                     + ", ".join(n for n, v in zip(vectors.names, x, strict=True) if not np.isfinite(v)))
                rows.append(Row(rec, ev, w, x, degraded, features_at, tok))
            except Exception as exc:  # this record's vector: its dead letter
                dead.append((self._dlq(rec, "features", exc), tok))
        return rows

    async def _log_served(self, served: list[ServedVector]) -> None:
        """Write the served vectors to the feature log, retried with backoff until Redis takes them.

        The predictions go out meanwhile; the labels need the vectors (a vector never logged makes its
        label a ``label_join`` dead letter), and a connection kept from before a Redis restart fails
        once before the client reconnects. While writes are pending, at most ``max_log_tasks`` run and
        the next batch waits (:meth:`score`), so a long outage pauses scoring rather than piling up."""
        t0 = time.perf_counter()
        await until_stored(lambda: self.rt.store.log_served(served), op="log_served",
                           what=f"feature log write of {len(served)} vectors", metrics=self.rt.metrics,
                           max_backoff_s=self.max_backoff_s)
        self.rt.metrics.store_seconds.labels("log_served").observe(time.perf_counter() - t0)

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
        served_rows: list[int] = []
        produced: list[int] = []
        duplicates = late = 0
        challenger = rt.settings.challenger
        any_degraded = False
        abstained = 0
        for i, r in enumerate(rows):
            rec, ev, w = r.rec, r.ev, r.window
            score = float(scores[i])
            if not np.isfinite(score):  # the model failed and the learner abstains: no score to publish
                abstained += 1
                out.append(self._dlq(rec, "inference", RuntimeError(
                    f"the model failed ({reasons[i]}) and the online learner abstains ({rt.learner.seen} of "
                    f"{rt.learner.warmup} labels learned); replay it once the model serves (streaming dlq replay)")))
                continue
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
                served_rows.append(i)
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
        if rt.watches_served and served:  # the label-free monitors, off this path (LabelProcessor.watch_served)
            rt.served_samples.append((tag, np.array([v.score for v in served]), X[served_rows],
                                      np.array([v.event_time for v in served], dtype=np.int64)))
        m.events.labels("scored").inc(len(rows) - abstained)
        if duplicates:
            m.events.labels("duplicate").inc(duplicates)
        if late:
            m.events.labels("late").inc(late)
        return ScoredBatch(out, produced, len(rows) - abstained, abstained, duplicates,
                           service_s=self.run_s + (time.perf_counter() - t_build))

    async def process(self, records: Sequence[InRecord]) -> ScoredBatch:
        """Prepare and score a consumer batch as one inference batch (dead letters first)."""
        prepared = await self.prepare(records)
        dead = [o for o, _ in prepared.dead]
        if not prepared.rows:
            return ScoredBatch(dead, [], 0, len(dead), 0)
        batch = await self.score(prepared.rows)
        return ScoredBatch(dead + batch.out, batch.produced_ms, batch.scored, len(dead) + batch.deadletters,
                           batch.duplicates)
