"""Loading ``pipeline.toml`` and checking it against its event schema.

Every problem is reported as one :class:`~streaming.errors.PipelineError`
line naming the file, the entry and what to change.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError, PipelineError
from streaming.events.schemas import Schema, SchemaRegistry
from streaming.inference.batching.buckets import check_buckets
from streaming.pipeline.spec import (
    AGGREGATIONS,
    BATCH_POLICIES,
    LEARNERS,
    BatchingSpec,
    CompareFeature,
    DriftSpec,
    EventSpec,
    FallbackSpec,
    Feature,
    FieldFeature,
    LearnerSpec,
    Limits,
    ModelSpec,
    MonitorSpec,
    Pipeline,
    RatioFeature,
    RetrainSpec,
    WindowFeature,
    parse_duration,
)

__all__ = ["load_pipeline", "LEARNERS", "DETECTORS", "SIGNALS"]

#: the detectors each signal may use (streaming.online.detectors)
SIGNAL_DETECTORS = {
    "error": ("adwin", "ddm", "hddm_w", "page_hinkley"),
    "score": ("psi", "ks", "page_hinkley", "adwin"),
    "features": ("ks",),
}
DETECTORS = tuple(dict.fromkeys(d for ds in SIGNAL_DETECTORS.values() for d in ds))
SIGNALS = tuple(SIGNAL_DETECTORS)
_NUMERIC = {"int", "long", "float", "double", "boolean"}


def _numeric(schema: Schema, name: str) -> bool:
    t = schema.field_type(name)
    if isinstance(t, list):  # a union such as ["null", "double"]
        return all(x == "null" or x in _NUMERIC for x in t) and any(x in _NUMERIC for x in t)
    return t in _NUMERIC


class _Checker:
    def __init__(self, path: Path, schema: Schema) -> None:
        self.path = path
        self.schema = schema

    def fail(self, where: str, msg: str) -> PipelineError:
        return PipelineError(f"{self.path}: {where}: {msg}")

    def field(self, where: str, name: Any, *, numeric: bool = False) -> str:
        if not isinstance(name, str) or name not in self.schema.field_names:
            known = ", ".join(self.schema.field_names)
            return_err = self.fail(where, f"unknown field {name!r} (event fields: {known})")
            raise return_err
        if numeric and not _numeric(self.schema, name):
            raise self.fail(where, f"field {name!r} is not numeric ({self.schema.field_type(name)})")
        return name

    def duration(self, where: str, value: Any) -> int:
        try:
            seconds = parse_duration(value)
        except (ValueError, AttributeError) as exc:
            raise self.fail(where, str(exc)) from None
        if seconds < 1 or seconds != int(seconds):
            raise self.fail(where, f"{value!r} must be a whole number of seconds, at least 1s")
        return int(seconds)


def _table(raw: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise PipelineError(f"{path}: missing [{key}] table")
    return value


def _feature(c: _Checker, i: int, raw: dict[str, Any]) -> Feature:
    name = raw.get("name")
    where = f"features[{i}] {name!r}"
    if not isinstance(name, str) or not name:
        raise c.fail(f"features[{i}]", "every feature needs a name")
    kind = raw.get("kind", "field")
    if kind == "field":
        equals = raw.get("equals")
        transform = raw.get("transform", "identity")
        if transform not in ("identity", "log1p"):
            raise c.fail(where, f"unknown transform {transform!r} (identity, log1p)")
        source = c.field(where, raw.get("field"), numeric=equals is None)
        return FieldFeature(name, source, transform, None if equals is None else str(equals))
    if kind == "compare":
        fields = raw.get("fields")
        if not isinstance(fields, list) or len(fields) != 2:
            raise c.fail(where, "a compare feature needs fields = [a, b]")
        op = raw.get("op", "eq")
        if op not in ("eq", "ne"):
            raise c.fail(where, f"unknown op {op!r} (eq, ne)")
        return CompareFeature(name, (c.field(where, fields[0]), c.field(where, fields[1])), op)
    if kind == "window":
        entity = raw.get("entity")
        if isinstance(entity, str):
            entity = [entity]
        if not isinstance(entity, list) or not entity:
            raise c.fail(where, "a window feature needs entity = [field, ...]")
        ent = tuple(c.field(where, e) for e in entity)
        agg = raw.get("agg")
        if agg not in AGGREGATIONS:
            raise c.fail(where, f"unknown agg {agg!r} ({', '.join(AGGREGATIONS)})")
        fld: str | None = None
        if agg not in ("count", "seconds_since_last"):
            fld = c.field(where, raw.get("field"), numeric=agg != "distinct")
        window = c.duration(where + " window", raw.get("window"))
        bucket = c.duration(where + " bucket", raw.get("bucket", max(1, window // 12)))
        if bucket > window:
            raise c.fail(where, f"bucket {bucket}s is larger than its window {window}s")
        if window % bucket:
            raise c.fail(where, f"window {window}s is not a whole number of {bucket}s buckets")
        return WindowFeature(name, ent, agg, window, bucket, fld)
    if kind == "ratio":
        num, den = raw.get("numerator"), raw.get("denominator")
        if not isinstance(num, str) or not isinstance(den, str):
            raise c.fail(where, "a ratio feature needs numerator and denominator (names of other features)")
        return RatioFeature(name, num, den)
    raise c.fail(where, f"unknown kind {kind!r} (field, compare, window, ratio)")


def _batching(path: Path, raw: Any) -> BatchingSpec:
    """The ``[batching]`` table: the inference batch policy and its parameters."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: [batching] must be a table")
    unknown = sorted(set(raw) - {"policy", "max_rows", "max_wait_ms", "budget_ms", "queue_rows", "buckets"})
    if unknown:
        raise PipelineError(f"{path}: [batching] unknown keys: {', '.join(unknown)}")
    d = BatchingSpec()
    policy = raw.get("policy", d.policy)
    if policy not in BATCH_POLICIES:
        raise PipelineError(f"{path}: [batching] policy must be one of {', '.join(BATCH_POLICIES)}, got {policy!r}")

    def positive(key: str, default: float, *, integer: bool = False) -> Any:
        v = raw.get(key, default)
        ok = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or v <= 0:
            kind = "a positive integer" if integer else "a positive number"
            raise PipelineError(f"{path}: [batching] {key} must be {kind}, got {v!r}")
        return v

    max_rows = positive("max_rows", d.max_rows, integer=True)
    buckets = raw.get("buckets")
    if buckets is not None:
        try:
            buckets = check_buckets(buckets)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: [batching] buckets: {exc}") from None
        if buckets[-1] < max_rows:
            raise PipelineError(f"{path}: [batching] max_rows {max_rows} exceeds the largest bucket {buckets[-1]}")
    queue_rows = positive("queue_rows", 2 * max_rows, integer=True)
    if queue_rows < max_rows:
        raise PipelineError(f"{path}: [batching] queue_rows ({queue_rows}) must hold at least max_rows ({max_rows})")
    return BatchingSpec(
        policy=policy,
        max_rows=max_rows,
        max_wait_ms=float(positive("max_wait_ms", d.max_wait_ms)),
        budget_ms=float(positive("budget_ms", d.budget_ms)),
        queue_rows=queue_rows,
        buckets=buckets,
    )


def _drift(path: Path, raw: Any, n_monitors: int) -> DriftSpec:
    """The ``[drift]`` table: K of N monitors, their agreement window, the model's request cooldown."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: [drift] must be a table")
    unknown = sorted(set(raw) - {"require", "agree_within", "cooldown"})
    if unknown:
        raise PipelineError(f"{path}: [drift] unknown keys: {', '.join(unknown)} (known: agree_within, cooldown, "
                            "require)")
    d = DriftSpec()
    require = raw.get("require", d.require)
    if isinstance(require, bool) or not isinstance(require, int) or not 1 <= require <= max(1, n_monitors):
        raise PipelineError(f"{path}: [drift] require must be an integer from 1 to the number of monitors "
                            f"({n_monitors}), got {require!r}")
    try:
        within = parse_duration(raw.get("agree_within", d.agree_within_s))
        cooldown = parse_duration(raw.get("cooldown", d.cooldown_s))
    except ValueError as exc:
        raise PipelineError(f"{path}: [drift] {exc}") from None
    if not 0 < within <= 86400 or not 0 <= cooldown <= 30 * 86400:
        raise PipelineError(f"{path}: [drift] agree_within must be within (0, 1d] and cooldown within [0, 30d]")
    return DriftSpec(require, within, cooldown)


def _retrain(path: Path, raw: Any) -> RetrainSpec:
    """The ``[retrain]`` table: how the retrain job trains, evaluates and promotes a new version."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: [retrain] must be a table")
    known = {"auto_promote", "margin", "lookback", "min_rows", "holdout"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PipelineError(f"{path}: [retrain] unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    d = RetrainSpec()
    auto = raw.get("auto_promote", d.auto_promote)
    if not isinstance(auto, bool):
        raise PipelineError(f"{path}: [retrain] auto_promote must be true or false, got {auto!r}")
    margin = raw.get("margin", d.margin)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= margin <= 1.0:
        raise PipelineError(f"{path}: [retrain] margin must be a number from 0 to 1 (ROC AUC points), got {margin!r}")
    try:
        lookback = parse_duration(raw.get("lookback", d.lookback_s))
    except ValueError as exc:
        raise PipelineError(f"{path}: [retrain] lookback: {exc}") from None
    if not 0 < lookback <= 30 * 86400:
        raise PipelineError(f"{path}: [retrain] lookback must be between 0 and 30d, got {raw.get('lookback')!r}")
    rows = raw.get("min_rows", d.min_rows)
    if isinstance(rows, bool) or not isinstance(rows, int) or not 10 <= rows <= 100_000_000:
        raise PipelineError(f"{path}: [retrain] min_rows must be an integer from 10 to 100000000, got {rows!r}")
    holdout = raw.get("holdout", d.holdout)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0.05 <= holdout <= 0.5:
        raise PipelineError(f"{path}: [retrain] holdout must be a share from 0.05 to 0.5, got {holdout!r}")
    return RetrainSpec(auto, float(margin), lookback, rows, float(holdout))


def _limits(path: Path, raw: Any) -> Limits:
    """The ``[limits]`` table: what one input record may be (sizes, depth, magnitudes, future event times)."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: [limits] must be a table")
    d = Limits()
    known = {"max_value_bytes", "max_depth", "max_string_chars", "max_abs_number", "max_future", "dead_letter_bytes"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PipelineError(f"{path}: [limits] unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")

    def positive_int(key: str, default: int, top: int) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= top:
            raise PipelineError(f"{path}: [limits] {key} must be an integer from 1 to {top}, got {v!r}")
        return v

    magnitude = raw.get("max_abs_number", d.max_abs_number)
    if isinstance(magnitude, bool) or not isinstance(magnitude, int | float) or not 0 < magnitude <= 1e30:
        raise PipelineError(f"{path}: [limits] max_abs_number must be a number above 0 and at most 1e30 "
                            f"(float32 vectors and window sums must not overflow), got {magnitude!r}")
    try:
        future = parse_duration(raw.get("max_future", d.max_future_s))
    except ValueError as exc:
        raise PipelineError(f"{path}: [limits] max_future: {exc}") from None
    if not 0 <= future <= 366 * 86400:
        raise PipelineError(f"{path}: [limits] max_future must be between 0 and 366d, got {raw.get('max_future')!r}")
    return Limits(
        max_value_bytes=positive_int("max_value_bytes", d.max_value_bytes, 16 * 1024 * 1024),
        max_depth=positive_int("max_depth", d.max_depth, 48),  # see check_json_depth: deep values are refused unbuilt
        max_string_chars=positive_int("max_string_chars", d.max_string_chars, 1024 * 1024),
        max_abs_number=float(magnitude),
        max_future_s=future,
        dead_letter_bytes=positive_int("dead_letter_bytes", d.dead_letter_bytes, 16 * 1024 * 1024),
    )


def load_pipeline(path: Path, registry: SchemaRegistry) -> Pipeline:
    """Read and validate a pipeline file; register its own event schema if it has one."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"pipeline file {path} does not exist: set STREAMING_PIPELINE") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML: {exc}") from None

    head = _table(raw, "pipeline", path)
    name = head.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise PipelineError(f"{path}: [pipeline] name must be an identifier, got {name!r}")

    ev = _table(raw, "event", path)
    subject = ev.get("schema")
    if not isinstance(subject, str):
        raise PipelineError(f"{path}: [event] schema must name a schema")
    try:
        if "schema_file" in ev:
            if not isinstance(ev.get("schema_id"), int):
                raise PipelineError(f"{path}: [event] schema_file needs an integer schema_id")
            schema = registry.add_file(path.parent / ev["schema_file"], subject=subject, schema_id=ev["schema_id"])
        else:
            schema = registry.latest(subject)
    except ConfigError as exc:
        raise PipelineError(f"{path}: [event] {exc}") from None
    c = _Checker(path, schema)
    key = ev.get("key")
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not key:
        raise c.fail("[event]", "key must list the entity key fields")
    event = EventSpec(
        schema=subject,
        id_field=c.field("[event] id_field", ev.get("id_field", "event_id")),
        time_field=c.field("[event] time_field", ev.get("time_field", "event_time"), numeric=True),
        key=tuple(c.field("[event] key", k) for k in key),
    )

    feats_raw = raw.get("features")
    if not isinstance(feats_raw, list) or not feats_raw:
        raise PipelineError(f"{path}: declare at least one [[features]] entry")
    features = tuple(_feature(c, i, f) for i, f in enumerate(feats_raw))
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineError(f"{path}: duplicate feature names: {', '.join(dupes)}")
    for i, f in enumerate(features):
        if isinstance(f, RatioFeature):
            for part in (f.numerator, f.denominator):
                if part not in names[:i] or isinstance(features[names.index(part)], RatioFeature):
                    raise c.fail(f"features[{i}] {f.name!r}",
                                 f"{part!r} must name a field, compare or window feature declared before it")

    m = _table(raw, "model", path)
    inputs = m.get("inputs", names)
    if not isinstance(inputs, list) or not inputs:
        raise PipelineError(f"{path}: [model] inputs must list feature names")
    unknown = [i for i in inputs if i not in names]
    if unknown:
        raise PipelineError(f"{path}: [model] inputs name unknown features: {', '.join(map(str, unknown))}")
    fb = m.get("fallback", {"kind": "learner"})
    if isinstance(fb, str):
        fb = {"kind": fb}
    if not isinstance(fb, dict) or fb.get("kind") not in ("learner", "rule"):
        raise PipelineError(f"{path}: [model] fallback must be \"learner\" or a rule table (kind = \"rule\")")
    if fb["kind"] == "rule":
        if fb.get("feature") not in inputs or not isinstance(fb.get("above"), int | float):
            raise PipelineError(f"{path}: [model.fallback] a rule needs feature (a model input) and above (a number)")
    fallback = FallbackSpec(fb["kind"], fb.get("feature"), float(fb.get("above", 0.0)))
    model = ModelSpec(tuple(inputs), dict(m.get("train", {})), fallback)

    lr = raw.get("learner", {"kind": "logistic_regression"})
    if lr.get("kind") not in LEARNERS:
        raise PipelineError(f"{path}: [learner] unknown kind {lr.get('kind')!r} ({', '.join(LEARNERS)})")
    try:
        label_wait = parse_duration(lr.get("label_wait", LearnerSpec.label_wait_s))
    except ValueError as exc:
        raise PipelineError(f"{path}: [learner] label_wait: {exc}") from None
    wait_max = lr.get("label_wait_max", LearnerSpec.label_wait_max)
    if not 0 <= label_wait <= 3600:
        raise PipelineError(f"{path}: [learner] label_wait must be between 0 and 1h, got {lr.get('label_wait')!r}")
    if isinstance(wait_max, bool) or not isinstance(wait_max, int) or not 1 <= wait_max <= 10_000_000:
        raise PipelineError(f"{path}: [learner] label_wait_max must be an integer from 1 to 10000000, got {wait_max!r}")
    warmup = lr.get("warmup", LearnerSpec.warmup)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup <= 10_000_000:
        raise PipelineError(f"{path}: [learner] warmup must be an integer from 0 to 10000000 (labels), got {warmup!r}")
    learner = LearnerSpec(lr["kind"], dict(lr.get("params", {})), label_wait, wait_max, warmup)

    monitors = []
    for i, mon in enumerate(raw.get("monitors", [])):
        where = f"monitors[{i}]"
        if mon.get("detector") not in DETECTORS:
            raise c.fail(where, f"unknown detector {mon.get('detector')!r} ({', '.join(DETECTORS)})")
        if mon.get("signal") not in SIGNALS:
            raise c.fail(where, f"unknown signal {mon.get('signal')!r} ({', '.join(SIGNALS)})")
        allowed = SIGNAL_DETECTORS[mon["signal"]]
        if mon["detector"] not in allowed:
            raise c.fail(where, f"detector {mon['detector']!r} does not watch the {mon['signal']} signal "
                                f"(use {', '.join(allowed)})")
        recover = mon.get("recover", MonitorSpec.recover)
        if isinstance(recover, bool) or not isinstance(recover, int) or not 1 <= recover <= 10_000_000:
            raise c.fail(where, f"recover must be an integer from 1 to 10000000 (samples), got {recover!r}")
        monitors.append(
            MonitorSpec(
                name=str(mon.get("name", f"{mon['detector']}_{mon['signal']}")),
                detector=mon["detector"],
                signal=mon["signal"],
                params=dict(mon.get("params", {})),
                cooldown_s=c.duration(where + " cooldown", mon.get("cooldown", "5m")),
                severity=str(mon.get("severity", "warning")),
                recover=recover,
            )
        )
    names_seen = [m.name for m in monitors]
    if len(set(names_seen)) != len(names_seen):
        raise PipelineError(f"{path}: [[monitors]] names must be unique, got {', '.join(names_seen)}")
    drift = _drift(path, raw.get("drift", {}), len(monitors))

    threshold = head.get("threshold", 0.5)
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise PipelineError(f"{path}: [pipeline] threshold must be between 0 and 1, got {threshold!r}")
    slo = head.get("slo_p99_ms", 50)
    if not isinstance(slo, int | float) or slo <= 0:
        raise PipelineError(f"{path}: [pipeline] slo_p99_ms must be a positive number, got {slo!r}")
    on_error = head.get("on_store_error", "pause")
    if on_error not in ("pause", "default"):
        raise PipelineError(f"{path}: [pipeline] on_store_error must be pause or default, got {on_error!r}")
    return Pipeline(
        batching=_batching(path, raw.get("batching", {})),
        limits=_limits(path, raw.get("limits", {})),
        retrain=_retrain(path, raw.get("retrain", {})),
        drift=drift,
        lateness_s=c.duration("[pipeline] lateness", head.get("lateness", "1m")),
        on_store_error=on_error,
        name=name,
        description=str(head.get("description", "")),
        root=path.parent,
        event=event,
        features=features,
        model=model,
        learner=learner,
        monitors=tuple(monitors),
        threshold=float(threshold),
        slo_p99_ms=float(slo),
        generator=dict(raw.get("generator", {})),
    )
