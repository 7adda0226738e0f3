"""The retrain job: a drift monitor's request in, a new model version out (in shadow, promoted when it is better).

:class:`RetrainJob` acts on one :class:`~streaming.online.request.RetrainRequest`; each step is logged (INFO),
reported through ``progress`` and ends in a :class:`RetrainOutcome`:

1. **other_model**: the request is about another pipeline's model; nothing is done.
2. **duplicate**: one request acts per ``dedupe_key``, across processes: the job claims the key with
   ``SET <prefix>retrain:{<dedupe_key>} <request_id> NX EX 7d`` on the feature store's Redis (``prefix`` is
   the store's). A request finding the key held by another request is a duplicate. The same request
   delivered again (its offset was not committed when its process stopped) acts again, unless a version
   was registered for its key already (the registry's ``training_data.dedupe_key``).
3. **stale**: the request names a version that is no longer active (a retrain, or a person, replaced it).
4. **insufficient_data**: the training set (:mod:`streaming.training.logged`: labels joined to the feature
   log, event times in ``[window_end - lookback, now]``) has fewer than ``[retrain] min_rows`` rows, or one
   of its two parts (training, evaluation) holds a single class. The key is released, so a later request
   for the same drift (a monitor that fires again, or a replayed request) can try again once labels have
   arrived.
5. Otherwise the rows, ordered by event time, are split: the most recent ``holdout`` share evaluates, the
   rest trains (:func:`~streaming.training.trainer.train_mlp` with the pipeline's ``[model.train]`` hidden,
   seed and max_iter). The candidate and the active version score the same evaluation rows (ONNX Runtime,
   CPU), each gets a ROC AUC and a log loss; the candidate is registered (its metadata says where its data
   came from and both evaluations) and put in shadow, so the workers score it beside the active version.
6. **promoted**: ``[retrain] auto_promote`` is on and the candidate's ROC AUC is at least the active one's
   plus ``margin``: the candidate is activated (the workers swap to it within a second). **shadowed**:
   otherwise; ``reason`` says why.

An exception on the way (Redis or the broker gone, a corrupt active model) releases the key and propagates.

:func:`run_retrain` is the consumer of the retrain topic behind ``streaming retrain``: it reads the topic
from the offsets committed by the group ``<app_id>-retrain`` (from the beginning when there are none),
handles each request in order and commits its offset once its outcome is decided (at-least-once: a request
handled again is a duplicate). A record that does not decode is logged (ERROR), counted as **invalid** and
committed. The consumer assigns itself every partition rather than joining the group (a join takes seconds
to tens of seconds on the embedded broker, ``docs/platform.md``); the group holds only the offsets, so run
one retrain consumer per group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, Message, TopicPartition
from sklearn.metrics import log_loss, roc_auc_score

from streaming.errors import ModelError, UnreachableError
from streaming.events.codec import Codec, DecodeError
from streaming.events.security import client_config
from streaming.features.store import RedisFeatureStore
from streaming.features.vector import VectorBuilder
from streaming.inference.registry import ModelRegistry, ModelVersion
from streaming.online.detectors import ReferenceSnapshot
from streaming.online.request import RetrainRequest
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from streaming.training.dataset import Dataset
from streaming.training.logged import LabelValues, LoggedStats, logged_dataset, read_label_values
from streaming.training.trainer import train_mlp

__all__ = ["DEDUPE_TTL_S", "OUTCOMES", "RetrainJob", "RetrainOutcome", "dedupe_redis_key", "evaluate", "run_retrain"]

log = logging.getLogger(__name__)

#: how long a dedupe key is held after a request acted on it
DEDUPE_TTL_S = 7 * 86400
OUTCOMES = ("promoted", "shadowed", "insufficient_data", "stale", "duplicate", "other_model", "invalid")
#: compare-and-delete: release a dedupe key only when this request holds it
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

T = TypeVar("T")
Progress = Callable[[str], None]
LabelSource = Callable[[], Awaitable[LabelValues]]


def dedupe_redis_key(prefix: str, dedupe_key: str) -> str:
    """The Redis key a request claims (a hash tag, like the store's other per-item keys).

    >>> dedupe_redis_key("fraud:", "fraud:v1:model_error:3")
    'fraud:retrain:{fraud:v1:model_error:3}'
    """
    return f"{prefix}retrain:{{{dedupe_key}}}"


@dataclass
class RetrainOutcome:
    """What one request came to (``outcome`` is one of :data:`OUTCOMES`)."""

    request_id: str
    dedupe_key: str
    outcome: str
    version: str | None = None  # the version registered (promoted or shadowed)
    rows: int = 0  # rows of the training set (training and evaluation)
    active_auc: float | None = None
    candidate_auc: float | None = None
    reason: str = ""
    seconds: float = 0.0
    active_version: str | None = None
    eval_rows: int = 0
    active_log_loss: float | None = None
    candidate_log_loss: float | None = None
    stats: dict[str, int] = field(default_factory=dict)  # LoggedStats: what became of every label

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for a person.

        >>> RetrainOutcome("r1", "k", "duplicate", reason="k is held by r0").line()
        'r1: duplicate (k is held by r0)'
        """
        parts = [f"{self.request_id}: {self.outcome}"]
        if self.version:
            parts.append(self.version)
        if self.candidate_auc is not None:
            active = "n/a" if self.active_auc is None else f"{self.active_auc:.3f}"
            parts.append(f"ROC AUC {self.candidate_auc:.3f} vs active {active} on {self.eval_rows:,} rows")
        text = " ".join(parts)
        return f"{text} ({self.reason})" if self.reason else text


def _write_reference(mv: ModelVersion, onnx_bytes: bytes, train: Dataset) -> None:
    """The training rows and their scores, sampled: what the label-free monitors compare the served traffic with."""
    ReferenceSnapshot.from_arrays(train.X, _scores(onnx_bytes, train.X), train.feature_names).save(mv.reference_path)


def _scores(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """P(positive) per row from an ONNX model (input ``features``, output ``probabilities`` [N, 2])."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = np.asarray(sess.run(["probabilities" if "probabilities" in names else names[-1]],
                              {sess.get_inputs()[0].name: np.ascontiguousarray(X, dtype=np.float32)})[0])
    return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.reshape(-1)


def evaluate(onnx_bytes: bytes, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ROC AUC and log loss of a model on labelled rows (both classes present)."""
    p = np.clip(_scores(onnx_bytes, X).astype(np.float64), 1e-7, 1 - 1e-7)
    return {"roc_auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, p, labels=[0, 1]))}


def _split(ds: Dataset, holdout: float) -> tuple[Dataset, Dataset]:
    cut = int(len(ds.y) * (1 - holdout))
    part = lambda s: Dataset(ds.X[s], ds.y[s], ds.event_time[s], ds.feature_names)  # noqa: E731
    return part(slice(None, cut)), part(slice(cut, None))


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


class RetrainJob:
    """Acts on retrain requests for one pipeline (see the module docstring).

    ``labels``: where the label records come from (default: the labels topic, read to its end at each
    request). ``labels_timeout_s``: how long that read may take. ``clock``: wall clock in epoch seconds.
    """

    def __init__(self, settings: Settings, pipeline: Pipeline, registry: ModelRegistry, store: RedisFeatureStore,
                 codec: Codec, bootstrap: str, *, progress: Progress | None = None, labels: LabelSource | None = None,
                 labels_timeout_s: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.registry = registry
        self.store = store
        self.codec = codec
        self.bootstrap = bootstrap
        self.progress = progress or (lambda _m: None)
        self.labels_timeout_s = labels_timeout_s
        self.clock = clock
        self._labels = labels or self._read_topic
        self._release = store.client.register_script(_RELEASE)

    async def _read_topic(self) -> LabelValues:
        return await asyncio.to_thread(read_label_values, self.bootstrap, self.settings.topic_labels,
                                       timeout_s=self.labels_timeout_s)

    def _step(self, request: RetrainRequest, message: str) -> None:
        log.info("retrain %s (%s): %s", request.request_id, request.dedupe_key, message)
        self.progress(message)

    def _done(self, out: RetrainOutcome, request: RetrainRequest, t0: float) -> RetrainOutcome:
        out.seconds = round(time.monotonic() - t0, 3)
        self._step(request, f"outcome: {out.line()} in {out.seconds:.1f}s")
        return out

    def _registered_for(self, dedupe_key: str) -> str | None:
        for mv in reversed(self.registry.versions()):
            if (mv.metadata.get("training_data") or {}).get("dedupe_key") == dedupe_key:
                return mv.version
        return None

    async def _claim(self, request: RetrainRequest) -> str | None:
        """Claim the request's dedupe key; None when claimed, else why it is a duplicate."""
        key = dedupe_redis_key(self.store.prefix, request.dedupe_key)
        for _ in range(2):  # a key that expires between the SET and the GET is claimed on the second try
            if await self.store.client.set(key, request.request_id, nx=True, ex=DEDUPE_TTL_S):
                return None
            holder = await self.store.client.get(key)
            if holder is None:
                continue
            holder_id = holder.decode() if isinstance(holder, bytes) else str(holder)
            if holder_id != request.request_id:
                return f"request {holder_id} acted on dedupe key {request.dedupe_key!r}"
            done = self._registered_for(request.dedupe_key)
            if done is not None:
                return f"this request was handled already: {done} was registered for it"
            return None  # delivered again after a stop before it registered a version: act now
        return f"dedupe key {request.dedupe_key!r} is contended"

    async def _unclaim(self, request: RetrainRequest) -> None:
        await self._release(keys=[dedupe_redis_key(self.store.prefix, request.dedupe_key)], args=[request.request_id])

    async def handle(self, request: RetrainRequest) -> RetrainOutcome:
        """Decide and carry out one request (see the module docstring)."""
        t0 = time.monotonic()
        out = RetrainOutcome(request.request_id, request.dedupe_key, "")
        if request.model != self.pipeline.name:
            out.outcome, out.reason = "other_model", f"the request is for model {request.model!r}"
            return self._done(out, request, t0)
        self._step(request, f"{request.monitor} saw {request.signal} drift on {request.model} "
                            f"{request.model_version} ({request.statistic:.4g} vs {request.threshold:.4g})")
        why = await self._claim(request)
        if why is not None:
            out.outcome, out.reason = "duplicate", why
            return self._done(out, request, t0)
        self._step(request, f"claimed dedupe key {request.dedupe_key!r}")
        try:
            return await self._act(request, out, t0)
        except BaseException as exc:
            try:
                await asyncio.shield(self._unclaim(request))
            except Exception as unclaim_exc:  # Redis gone: the key expires in DEDUPE_TTL_S
                log.warning("retrain %s: could not release dedupe key %r (%s) after %s", request.request_id,
                            request.dedupe_key, unclaim_exc, type(exc).__name__)
            raise

    async def _act(self, request: RetrainRequest, out: RetrainOutcome, t0: float) -> RetrainOutcome:
        spec = self.pipeline.retrain
        active = self.registry.active()
        out.active_version = active.version
        if active.version != request.model_version:
            out.outcome = "stale"
            out.reason = f"{active.version} is active, the request is about {request.model_version}"
            return self._done(out, request, t0)
        since_us = request.window_end - int(spec.lookback_s * 1_000_000)
        until_us = int(self.clock() * 1_000_000)
        labels = await self._labels()
        self._step(request, f"read {len(labels.values):,} label records in {labels.seconds:.1f}s")
        ds, stats = await logged_dataset(labels.values, self.store, self.codec, self.pipeline,
                                         since_us=since_us, until_us=until_us, limits=self.pipeline.limits)
        stats = dataclasses.replace(stats, after_start=labels.after_start)
        out.rows, out.stats = stats.rows, stats.as_dict()
        self._step(request, f"joined the feature log: {stats.summary()}")
        train, held = _split(ds, spec.holdout)
        short = self._short(ds, train, held)
        if short:
            await self._unclaim(request)
            out.outcome, out.reason = "insufficient_data", f"{short}; the dedupe key was released"
            return self._done(out, request, t0)
        cfg = self.pipeline.model.train
        hidden = tuple(int(h) for h in cfg.get("hidden", (32, 16)))
        seed, max_iter = int(cfg.get("seed", 7)), int(cfg.get("max_iter", 60))
        self._step(request, f"training on {len(train.y):,} rows, evaluating on the latest {len(held.y):,}")
        trained = await asyncio.to_thread(train_mlp, train, hidden=hidden, seed=seed, max_iter=max_iter,
                                          threshold=self.pipeline.threshold, holdout=spec.holdout,
                                          progress=self.progress)
        out.eval_rows = len(held.y)
        cand = await asyncio.to_thread(evaluate, trained.onnx_bytes, held.X, held.y)
        act, act_why = await asyncio.to_thread(self._evaluate_active, active, held)
        out.candidate_auc, out.candidate_log_loss = cand["roc_auc"], cand["log_loss"]
        if act is not None:
            out.active_auc, out.active_log_loss = act["roc_auc"], act["log_loss"]
        self._step(request, f"evaluated on {len(held.y):,} rows: candidate ROC AUC {cand['roc_auc']:.4f} "
                            f"log loss {cand['log_loss']:.4f}; active {active.version} "
                            + (f"ROC AUC {act['roc_auc']:.4f} log loss {act['log_loss']:.4f}" if act else act_why))
        mv = self.registry.write(trained.onnx_bytes, self._metadata(request, active, trained, train, held, stats,
                                                                    since_us, until_us, cand, act))
        out.version = mv.version
        await asyncio.to_thread(_write_reference, mv, trained.onnx_bytes, train)
        if self.registry.signer is not None:  # reference.json was written after the version: sign them together
            mv = self.registry.sign(mv.version)
        self._step(request, f"registered {mv.version} (sha256 {mv.metadata['sha256'][:12]}) with its reference "
                            "snapshot")
        self.registry.set_shadow(mv.version)
        self._step(request, f"{mv.version} is the shadow version")
        if not spec.auto_promote:
            out.outcome, out.reason = "shadowed", "auto_promote is off"
        elif act is None:
            out.outcome, out.reason = "shadowed", act_why
        elif cand["roc_auc"] >= act["roc_auc"] + spec.margin:
            self.registry.activate(mv.version)
            out.outcome = "promoted"
            out.reason = f"ROC AUC {cand['roc_auc']:.4f} >= {act['roc_auc']:.4f} + margin {spec.margin:g}"
            self._step(request, f"activated {mv.version}")
        else:
            out.outcome = "shadowed"
            out.reason = f"ROC AUC {cand['roc_auc']:.4f} < {act['roc_auc']:.4f} + margin {spec.margin:g}"
        return self._done(out, request, t0)

    def _short(self, ds: Dataset, train: Dataset, held: Dataset) -> str:
        """Why the rows cannot make and judge a model ('' when they can)."""
        spec = self.pipeline.retrain
        if len(ds.y) < spec.min_rows:
            return f"{len(ds.y):,} rows, fewer than min_rows {spec.min_rows:,}"
        for name, part in (("training", train), ("evaluation", held)):
            if len(np.unique(part.y)) < 2:
                return f"the {name} rows ({len(part.y):,}) hold a single class"
        return ""

    def _evaluate_active(self, active: ModelVersion, held: Dataset) -> tuple[dict[str, float] | None, str]:
        inputs = active.metadata.get("inputs")
        if inputs != held.feature_names:
            return None, f"the active version {active.version} takes other inputs than the pipeline's vector"
        try:
            return evaluate(active.verify(), held.X, held.y), ""
        except ModelError as exc:
            return None, f"the active version {active.version} cannot be evaluated: {exc}"

    def _metadata(self, request: RetrainRequest, active: ModelVersion, trained: Any, train: Dataset, held: Dataset,
                  stats: LoggedStats, since_us: int, until_us: int, cand: dict[str, float],
                  act: dict[str, float] | None) -> dict[str, Any]:
        spec = self.pipeline.retrain

        def window(part: Dataset) -> dict[str, int]:
            return {"rows": len(part.y), "positives": int(part.y.sum()),
                    "event_time_start": int(part.event_time.min()), "event_time_end": int(part.event_time.max())}

        return {
            "pipeline": self.pipeline.name,
            "inputs": list(train.feature_names),
            "input_name": "features",
            "output_name": "probabilities",
            "metrics": trained.metrics,
            "params": trained.params,
            "parent": active.version,
            "training_data": {
                "source": "feature_log",
                "request_id": request.request_id,
                "dedupe_key": request.dedupe_key,
                "model_version": request.model_version,
                "monitor": request.monitor,
                "signal": request.signal,
                "labels_topic": self.settings.topic_labels,
                "feature_spec": VectorBuilder(self.pipeline).spec_version,
                "since_us": since_us,
                "until_us": until_us,
                **window(train),
                "labels": stats.as_dict(),
            },
            "evaluation": {
                **window(held),
                "margin": spec.margin,
                "auto_promote": spec.auto_promote,
                "candidate": {k: _num(v) for k, v in cand.items()},
                "active": {"version": active.version, **({k: _num(v) for k, v in act.items()} if act else {})},
            },
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


class _RequestConsumer:
    """The retrain topic, every partition assigned, from the group's committed offsets (blocking calls)."""

    def __init__(self, bootstrap: str, topic: str, group: str, *, fetch_wait_ms: int = 100) -> None:
        self.topic = topic
        self.started_ms = time.time_ns() // 1_000_000
        self._c = Consumer(client_config(bootstrap, {
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_wait_ms,
            "log.connection.close": False,
        }))
        try:
            meta = self._c.list_topics(topic, timeout=10)
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                raise UnreachableError(f"topic {topic} does not exist on {bootstrap}")
            parts = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
            committed = self._c.committed(parts, timeout=10)
            self.ends = {tp.partition: max(0, self._c.get_watermark_offsets(tp, timeout=10)[1]) for tp in parts}
        except KafkaException as exc:
            self._c.close()
            raise UnreachableError(f"cannot read topic {topic} from {bootstrap}: {exc.args[0]}") from None
        except UnreachableError:
            self._c.close()
            raise
        self.start = {tp.partition: tp.offset if tp.offset >= 0 else 0 for tp in committed}
        self._c.assign([TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                        for tp in committed])

    def poll(self, timeout: float) -> list[Message]:
        msgs = self._c.consume(100, timeout)
        for m in msgs:
            err = m.error()
            if err is not None and not err.retriable() and err.fatal():
                raise UnreachableError(f"reading {self.topic}: {err}")
        return [m for m in msgs if m.error() is None]

    def commit(self, msg: Message) -> None:
        done = self._c.commit(offsets=[TopicPartition(self.topic, int(msg.partition() or 0), int(msg.offset() or 0) + 1)],
                              asynchronous=False)
        failed = [tp for tp in done or [] if tp.error is not None]
        if failed:
            raise UnreachableError(f"committing {self.topic} offsets failed: {failed[0].error}")

    def close(self) -> None:
        self._c.close()


async def run_retrain(settings: Settings, *, once: bool = False, timeout_s: float | None = None,
                      progress: Progress | None = None, idle_s: float = 0.5) -> list[RetrainOutcome]:
    """Consume the retrain topic and act on each request (see the module docstring); the outcomes in order.

    ``once``: the requests on the topic when it starts, then return (records written after the start are
    left for the next run). Otherwise run until ``timeout_s`` (None: until cancelled). ``timeout_s`` also
    bounds a ``once`` run (a request being handled is finished first).
    """
    from streaming.events.schemas import SchemaRegistry
    from streaming.events.topics import ensure_topics
    from streaming.infra.redis_client import check_redis
    from streaming.infra.stack import check_broker, resolve_endpoints
    from streaming.pipeline.loader import load_pipeline

    say = progress or (lambda _m: None)
    schemas = SchemaRegistry.from_dir(settings.path(settings.schemas_dir))
    pipeline = load_pipeline(settings.path(settings.pipeline), schemas)
    codec = Codec(schemas)
    bootstrap, redis_url = resolve_endpoints(settings)
    check_broker(bootstrap)
    check_redis(settings, redis_url)
    ensure_topics(bootstrap, [settings.topic_retrain, settings.topic_labels], settings.topic_partitions)
    registry = ModelRegistry.from_settings(settings, pipeline.name)
    store = RedisFeatureStore.connect(settings, redis_url, pipeline, dedupe_ttl_s=settings.dedupe_ttl_s,
                                      log_ttl_s=settings.feature_log_ttl_s, prefix=settings.redis_prefix or None)
    job = RetrainJob(settings, pipeline, registry, store, codec, bootstrap, progress=say)
    group = f"{settings.app_id}-retrain"
    outcomes: list[RetrainOutcome] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    consumer: _RequestConsumer | None = None
    try:
        consumer = await _finished(_RequestConsumer, bootstrap, settings.topic_retrain, group)
        ends = consumer.ends
        reached = {p: consumer.start[p] >= end for p, end in ends.items()}
        past: set[int] = set()
        quiet_since = time.monotonic()
        log.info("retrain: reading %s as group %s from %s (end %s)", settings.topic_retrain, group,
                 consumer.start, ends)
        say(f"reading {settings.topic_retrain} as group {group}")
        while deadline is None or time.monotonic() < deadline:
            msgs = await _finished(consumer.poll, 0.2)
            for msg in msgs:
                p, off = int(msg.partition() or 0), int(msg.offset() or 0)
                if once:
                    end = ends.get(p, 0)
                    ts_type, ts = msg.timestamp()
                    if p in past or (off >= end and ts_type != TIMESTAMP_NOT_AVAILABLE and ts > consumer.started_ms):
                        past.add(p)  # written after the start: the next run's
                        continue
                    if off >= end - 1:
                        reached[p] = True
                outcomes.append(await _handle_record(job, codec, pipeline, msg))
                await _finished(consumer.commit, msg)
            if msgs:
                quiet_since = time.monotonic()
            elif once and all(p in past or reached[p] for p in ends) and time.monotonic() - quiet_since >= idle_s:
                break
        else:
            if once:
                log.warning("retrain: stopped after %gs with requests left on %s", timeout_s, settings.topic_retrain)
    finally:
        if consumer is not None:
            await asyncio.to_thread(consumer.close)
        await store.close()
    return outcomes


async def _finished(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread; when cancelled, the call is waited for before the cancellation goes on (a
    librdkafka call must end before its consumer is closed)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


async def _handle_record(job: RetrainJob, codec: Codec, pipeline: Pipeline, msg: Message) -> RetrainOutcome:
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    try:
        request = RetrainRequest.from_record(codec.decode("retrain_request", msg.value(), pipeline.limits))
    except (DecodeError, TypeError, ValueError) as exc:
        log.error("retrain: skipping the undecodable request at %s: %s", where, exc)
        job.progress(f"skipping the undecodable request at {where}: {exc}")
        return RetrainOutcome("", "", "invalid", reason=f"{where}: {exc}")
    log.info("retrain: request %s at %s", request.request_id, where)
    return await job.handle(request)
