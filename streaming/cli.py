"""``streaming ...``: the user's commands.

Every command reads the one settings object (``STREAMING_*`` variables); a
problem the user can fix is one ``error:`` line and a non-zero exit.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from streaming.errors import UserError
from streaming.settings import Settings

__all__ = ["main", "cli"]

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn :class:`UserError` into one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _settings() -> Settings:
    return Settings.from_env()


def _check_share(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is None:
        return None
    from streaming.infra.cpushare import check_share

    try:
        return check_share(value)
    except UserError as exc:
        raise click.BadParameter(str(exc)) from None


#: ``--cpu-share S``: the whole run on a fraction of the machine (streaming/infra/cpushare.py)
_cpu_share_option = click.option(
    "--cpu-share", "cpu_share", type=float, default=None, callback=_check_share, metavar="S",
    help="Run everything (this command, the broker, Redis, the worker, the generator) on this fraction of the "
         "machine's CPU, 0 < S <= 1: a cgroup CPU quota they share (needs root and cgroup v1).")


def _share_fields(share: float | None, group: Any) -> dict[str, Any]:
    """What every JSON output records of ``--cpu-share``."""
    return {"cpu_share": share, **({"cpu_throttled": group.throttled()} if group is not None else {})}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streaming")
def cli() -> None:
    """Streaming real-time inference: Kafka events in, Redis features, ONNX scores, River learning and drift.

    Settings come from STREAMING_* environment variables (docs/contract.md).
    """


# -- embedded stack ----------------------------------------------------------
@cli.command()
@click.option("--secure", is_flag=True,
              help="Serve the broker over TLS only, with a certificate authority made for this run (docs/security.md).")
@_friendly
def up(secure: bool) -> None:
    """Start the embedded broker (Tansu) and Redis (or adopt the one at STREAMING_REDIS_URL)."""
    from streaming.infra.redact import redact_url
    from streaming.infra.stack import Stack

    state = Stack(_settings(), secure=secure).up()
    for name, svc in state.services.items():
        owner = f"pid {svc.pid}" if svc.pid else "external"
        click.echo(f"{name:7} {redact_url(svc.url):32} port {svc.port:<6} {owner}" + (" TLS" if svc.ca else ""))
    broker = state.services.get("broker")
    if broker is not None and broker.ca:
        click.echo(f"the broker speaks TLS only; clients need:\n"
                   f"  export STREAMING_KAFKA_SECURITY_PROTOCOL=SSL STREAMING_KAFKA_SSL_CA={broker.ca}")
    elif secure:
        click.echo("the broker was already running without TLS: `streaming down` first, then `streaming up --secure`")


@cli.command()
@_friendly
def down() -> None:
    """Stop what `streaming up` started."""
    from streaming.infra.stack import Stack

    stopped = Stack(_settings()).down()
    click.echo("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def status(as_json: bool) -> None:
    """Show the embedded stack's services, ports and whether they answer."""
    from streaming.infra.redact import redact_url
    from streaming.infra.stack import Stack

    state = Stack(_settings()).state
    services = []
    for name, svc in state.services.items():
        running = svc.running
        services.append({"name": name, "url": redact_url(svc.url), "port": svc.port, "pid": svc.pid,
                         "up": running, "tls_ca": svc.ca})
        if not as_json:
            owner = f"pid {svc.pid}" if svc.pid else "external"
            click.echo(f"{name:7} {redact_url(svc.url):32} port {svc.port:<6} {owner:12} {'up' if running else 'DOWN'}")
    ok = bool(services) and all(s["up"] for s in services)
    if not services and not as_json:
        click.echo("not running (start it with `streaming up`)")
    if as_json:
        click.echo(orjson.dumps({"running": bool(services), "ok": ok, "services": services}).decode())
    sys.exit(0 if ok else 1)


# -- worker ------------------------------------------------------------------
@cli.command()
@_friendly
def worker() -> None:
    """Run the Faust worker: score events, learn from labels, watch drift."""
    from streaming.worker.run import run_worker

    run_worker(_settings())


# -- data in and out ---------------------------------------------------------
@cli.command()
@click.argument("source", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--topic", help="Topic to publish to (default: the events topic).")
@click.option("--subject", help="Schema subject to validate against (default: the pipeline's event schema).")
@click.option("--format", "fmt", type=click.Choice(["avro", "json", "raw"]), default="avro", show_default=True,
              help="avro: Confluent wire format; json: plain JSON; raw: each line's bytes unchanged, unvalidated.")
@click.option("--synthetic", is_flag=True, help="Generate events with the pipeline's generator instead of reading SOURCE.")
@click.option("--rate", type=float, default=200.0, show_default=True, help="Synthetic events per second.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Synthetic: seconds to run.")
@click.option("--drift-at", type=float, default=None, help="Synthetic: switch the fraud pattern after this many seconds.")
@click.option("--labels/--no-labels", default=False, help="Synthetic: publish labels too, after --label-delay.")
@click.option("--label-delay", type=float, default=5.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@_friendly
def produce(source: str | None, topic: str | None, subject: str | None, fmt: str, synthetic: bool, rate: float,
            duration: float, drift_at: float | None, labels: bool, label_delay: float, seed: int) -> None:
    """Publish events: JSON lines from SOURCE (a file, or - for stdin), or --synthetic ones."""
    from streaming.events.producer import LABEL_LINGER_MS, EventProducer
    from streaming.events.topics import ensure_topics
    from streaming.infra.stack import check_broker, resolve_endpoints
    from streaming.worker.runtime import load_components

    s = _settings()
    _, codec, pipeline = load_components(s)
    bootstrap, _ = resolve_endpoints(s)
    check_broker(bootstrap)
    topic = topic or s.topic_events
    subject = subject or pipeline.event.schema
    ensure_topics(bootstrap, [topic, s.topic_labels], s.topic_partitions)
    key_fields = pipeline.event.key if subject == pipeline.event.schema else ()
    prod = EventProducer(bootstrap, codec, subject, topic, key_fields=key_fields, as_json=fmt == "json")
    if synthetic:
        from streaming.synthetic import Player, generator_for

        now = time.time_ns() // 1000
        gen = generator_for(pipeline, rate=rate, seed=seed, start_us=now,
                            drift_at_us=None if drift_at is None else now + int(drift_at * 1e6),
                            id_prefix=f"p{now // 1_000_000}-")
        lab = EventProducer(bootstrap, codec, "label", s.topic_labels, linger_ms=LABEL_LINGER_MS) if labels else None
        player = Player(gen, prod, lab, id_field=pipeline.event.id_field, time_field=pipeline.event.time_field,
                        label_delay_s=label_delay)
        stats = player.run(duration)
        player.drain_labels(label_delay + 1.0)
        click.echo(f"produced {stats.events} events ({stats.positives} positive), {stats.labels} labels to {topic}; "
                   f"worst lag behind schedule {stats.lag_s * 1000:.0f} ms", err=True)
        return
    if source is None:
        raise UserError("give a SOURCE file (or - for stdin), or --synthetic")
    stream = sys.stdin.buffer if source == "-" else open(source, "rb")
    bad = 0
    with stream:
        for lineno, line in enumerate(stream, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if fmt == "raw":
                prod.send_raw(line)
                continue
            try:
                record = orjson.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                prod.send(record)
            except (ValueError, KeyError) as exc:
                bad += 1
                click.echo(f"line {lineno}: skipped: {exc}", err=True)
    left = prod.flush()
    click.echo(f"produced {prod.sent} records to {topic}" + (f", {bad} bad lines skipped" if bad else ""), err=True)
    if left or bad:
        sys.exit(1)


@cli.command()
@click.argument("topic")
@click.option("--from", "start", type=click.Choice(["beginning", "end"]), default="beginning", show_default=True)
@click.option("--max", "max_records", type=int, default=0, help="Stop after this many records (0: no limit).")
@click.option("--timeout", type=float, default=0.0, help="Stop after this many idle seconds (0: never).")
@_friendly
def consume(topic: str, start: str, max_records: int, timeout: float) -> None:
    """Print TOPIC's records as JSON lines, decoded by the topic's schema (dead letters with their headers)."""
    from streaming.events.reader import TopicReader
    from streaming.infra.stack import check_broker, resolve_endpoints
    from streaming.worker.runtime import load_components

    s = _settings()
    _, codec, pipeline = load_components(s)
    bootstrap, _ = resolve_endpoints(s)
    check_broker(bootstrap)
    subjects = {s.topic_events: pipeline.event.schema, s.topic_predictions: "prediction", s.topic_labels: "label",
                s.topic_retrain: "retrain_request"}
    subject = subjects.get(topic)
    reader = TopicReader(bootstrap, topic, from_beginning=start == "beginning")
    n = 0
    idle_since = time.monotonic()
    try:
        while True:
            msgs = reader.poll(0.2)
            if not msgs:
                if timeout and time.monotonic() - idle_since > timeout:
                    break
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                out: dict[str, Any] = {"partition": msg.partition(), "offset": msg.offset(),
                                       "key": (msg.key() or b"").decode("utf-8", "replace")}
                if subject is not None:
                    try:
                        out["value"] = codec.decode(subject, msg.value())
                    except ValueError as exc:
                        out["undecodable"] = str(exc)
                else:
                    out["value"] = (msg.value() or b"").decode("utf-8", "replace")
                headers = msg.headers()
                if isinstance(headers, list) and headers:
                    out["headers"] = {k: _text(v) for k, v in headers}
                click.echo(orjson.dumps(out).decode())
                n += 1
                if max_records and n >= max_records:
                    return
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()


@cli.group()
def dlq() -> None:
    """Dead letters (STREAMING_TOPIC_DLQ): the original key and value, the reason in dlq.* headers."""


@dlq.command("replay")
@click.option("--reason", "reasons", multiple=True, metavar="TEXT",
              help="Only dead letters whose dlq.reason contains TEXT (repeatable: any of them).")
@click.option("--reason-regex", "reason_regexes", multiple=True, metavar="REGEX",
              help="Only dead letters whose dlq.reason matches REGEX (Python re.search; repeatable).")
@click.option("--stage", "stages", multiple=True, metavar="NAME",
              help="Only dead letters of this dlq.stage, e.g. decode or label_decode (repeatable).")
@click.option("--since", metavar="TIME", help="Only dead letters written at or after TIME (ISO 8601 or epoch ms).")
@click.option("--until", metavar="TIME", help="Only dead letters written before TIME (ISO 8601 or epoch ms).")
@click.option("--to-topic", metavar="T", help="Publish to T instead of each dead letter's dlq.topic.")
@click.option("--dry-run", is_flag=True, help="Print what would be replayed (per source topic and reason); publish nothing.")
@click.option("--limit", type=int, default=None, metavar="N", help="Replay at most N dead letters.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def dlq_replay(reasons: tuple[str, ...], reason_regexes: tuple[str, ...], stages: tuple[str, ...], since: str | None,
               until: str | None, to_topic: str | None, dry_run: bool, limit: int | None, as_json: bool) -> None:
    """Re-publish dead letters' original key and value bytes to their source topic (after a fix)."""
    import re

    from streaming.events.replay import parse_time_ms, replay
    from streaming.infra.stack import check_broker, resolve_endpoints

    patterns: list[str | re.Pattern[str]] = list(reasons)
    for rx in reason_regexes:
        try:
            patterns.append(re.compile(rx))
        except re.error as exc:
            raise UserError(f"bad --reason-regex {rx!r}: {exc}") from None
    since_ms = None if since is None else parse_time_ms(since)
    until_ms = None if until is None else parse_time_ms(until)
    if limit is not None and limit < 1:
        raise UserError(f"bad --limit {limit}: give at least 1")
    s = _settings()
    bootstrap, _ = resolve_endpoints(s)
    check_broker(bootstrap)
    result = replay(bootstrap, s.topic_dlq, stages=stages, reasons=patterns, since_ms=since_ms, until_ms=until_ms,
                    to_topic=to_topic, dry_run=dry_run, limit=limit, progress=True)
    for line in result.summary_lines():
        click.echo(line, err=as_json)
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    if result.skipped_missing_topic:
        sys.exit(1)


# -- models ------------------------------------------------------------------
@cli.command()
@click.option("--seed", type=int, default=None, help="Override the pipeline's training seed.")
@_friendly
def train(seed: int | None) -> None:
    """Train the pipeline's model on synthetic data and register it as the next version."""
    from streaming.inference.registry import ModelRegistry
    from streaming.training.job import train_pipeline
    from streaming.worker.runtime import load_components

    s = _settings()
    _, _, pipeline = load_components(s)
    registry = ModelRegistry.from_settings(s, pipeline.name)
    train_pipeline(pipeline, registry, seed=seed, progress=lambda m: click.echo(f"train: {m}", err=True))


@cli.command()
@click.option("--once", is_flag=True, help="Act on the requests on the topic now, then exit.")
@click.option("--timeout", "timeout_s", type=float, default=None, metavar="S", help="Stop after S seconds.")
@click.option("--nice", type=click.IntRange(0, 19), default=19, show_default=True,
              help="Scheduling niceness: training yields the CPU to the workers on a shared machine.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Threads for training (BLAS/OpenMP).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def retrain(once: bool, timeout_s: float | None, nice: int, threads: int, as_json: bool) -> None:
    """Act on retrain requests: train on the feature log's labelled rows, shadow the new version, promote it
    when it wins by the pipeline's margin ([retrain])."""
    import asyncio
    import os

    from threadpoolctl import threadpool_limits

    from streaming.online.retrain import run_retrain

    os.nice(nice)  # batch work: on a machine it shares with a worker, the worker's latency comes first
    with threadpool_limits(limits=threads):
        outcomes = asyncio.run(run_retrain(_settings(), once=once, timeout_s=timeout_s,
                                           progress=lambda m: click.echo(f"retrain: {m}", err=True)))
    for o in outcomes:
        click.echo(o.line(), err=as_json)
    if as_json:
        click.echo(orjson.dumps({"outcomes": [o.as_dict() for o in outcomes]}).decode())


@cli.group()
def drift() -> None:
    """Drift monitors: calibrate their thresholds."""


@drift.command("calibrate")
@click.option("--streams", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Stationary streams to replay.")
@click.option("--length", type=click.IntRange(1000, 10_000_000), default=20_000, show_default=True,
              help="Events per stream: the span a monitor should stay quiet over.")
@click.option("--target", type=click.FloatRange(0.0, 10.0), default=0.05, show_default=True,
              help="False alarms allowed per stream.")
@click.option("--seed", type=int, default=1000, show_default=True, help="Seed of the first stream.")
@click.option("--dry-run", is_flag=True, help="Print the thresholds; do not write them into the pipeline file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def drift_calibrate(streams: int, length: int, target: float, seed: int, dry_run: bool, as_json: bool) -> None:
    """Set every monitor's threshold for a false-alarm rate, replaying the generator's stationary streams
    scored by the active model, and write them into the pipeline file."""
    from streaming.inference.registry import ModelRegistry
    from streaming.online.stationary import calibrate_pipeline, write_calibration
    from streaming.worker.runtime import load_components

    s = _settings()
    _, _, pipeline = load_components(s)
    registry = ModelRegistry.from_settings(s, pipeline.name)
    results = calibrate_pipeline(pipeline, registry, streams=streams, length=length, target=target, seed=seed,
                                 progress=lambda m: click.echo(f"calibrate: {m}", err=True))
    path = s.path(s.pipeline)
    if not dry_run:
        write_calibration(path, results)
    for r in results:
        click.echo(r.line(), err=as_json)
    click.echo(("dry run: nothing written" if dry_run else f"written into {path}"), err=as_json)
    if as_json:
        click.echo(orjson.dumps({"pipeline": str(path), "written": not dry_run, "target": target,
                                 "streams": streams, "length": length,
                                 "monitors": [r.as_dict() for r in results]}).decode())
    if not all(r.calibration.met for r in results):
        sys.exit(1)


@cli.group()
def models() -> None:
    """The model registry: models/<pipeline>/<version>/."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def models_list(as_json: bool) -> None:
    """List the versions of the pipeline's model."""
    from streaming.inference.registry import ModelRegistry
    from streaming.worker.runtime import load_components

    s = _settings()
    _, _, pipeline = load_components(s)
    reg = ModelRegistry.from_settings(s, pipeline.name)
    versions = reg.versions()
    active = reg.active().version if versions else None
    shadow = reg.pointers()[1] if versions else None
    rows = []
    for v in versions:
        auc = v.metadata.get("metrics", {}).get("roc_auc", v.metadata.get("evaluation", {}).get("candidate", {})
                                                 .get("roc_auc", float("nan")))
        rows.append({"version": v.version, "active": v.version == active, "shadow": v.version == shadow,
                     "created_at": v.metadata.get("created_at"), "roc_auc": auc, "sha256": v.metadata.get("sha256"),
                     "source": v.metadata.get("training_data", {}).get("source", "generator")})
        if not as_json:
            mark = "*" if v.version == active else "s" if v.version == shadow else " "
            click.echo(f"{mark} {v.version:6} {v.metadata.get('created_at', '?'):22} roc_auc {auc:.3f}  "
                       f"sha256 {v.metadata.get('sha256', '?')[:12]}")
    if not versions and not as_json:
        click.echo(f"no versions of {pipeline.name} under {reg.root} (run `streaming train`)")
    if as_json:
        click.echo(orjson.dumps({"model": pipeline.name, "registry": str(reg.root), "active": active,
                                 "shadow": shadow, "versions": rows}).decode())


@models.command("activate")
@click.argument("version")
@_friendly
def models_activate(version: str) -> None:
    """Make VERSION the active model (workers load it at start)."""
    from streaming.inference.registry import ModelRegistry
    from streaming.worker.runtime import load_components

    s = _settings()
    _, _, pipeline = load_components(s)
    mv = ModelRegistry.from_settings(s, pipeline.name).activate(version)
    click.echo(f"active: {mv.name} {mv.version} (running workers switch within a second, between two batches)")


def _registry() -> Any:
    from streaming.inference.registry import ModelRegistry
    from streaming.worker.runtime import load_components

    s = _settings()
    _, _, pipeline = load_components(s)
    return ModelRegistry.from_settings(s, pipeline.name)


@models.command("shadow")
@click.argument("version", required=False)
@click.option("--off", is_flag=True, help="Stop shadow scoring.")
@_friendly
def models_shadow(version: str | None, off: bool) -> None:
    """Score VERSION beside the active model: compared and logged, never published."""
    if off == (version is not None):
        raise UserError("give a VERSION, or --off")
    mv = _registry().set_shadow(None if off else version)
    click.echo("shadow: off" if mv is None else f"shadow: {mv.name} {mv.version}")


@models.command("sign")
@click.argument("versions", nargs=-1)
@click.option("--all", "sign_all", is_flag=True, help="Sign every version on disk.")
@_friendly
def models_sign(versions: tuple[str, ...], sign_all: bool) -> None:
    """Sign VERSIONS under the model-signing key (versions made before the key was set).

    Signing vouches for the files as they are on disk: check them first.
    """
    if sign_all == bool(versions):
        raise UserError("give one or more VERSIONS, or --all")
    reg = _registry()
    if reg.signer is None:
        raise UserError("no model-signing key: set STREAMING_MODEL_SIGNING_KEY or STREAMING_MODEL_SIGNING_KEY_FILE")
    for version in (reg.names() if sign_all else versions):
        mv = reg.sign(version)
        click.echo(f"signed: {mv.name} {mv.version} (key id {reg.signer.key_id})")


@models.command("rollback")
@_friendly
def models_rollback() -> None:
    """Re-activate the version that was active before the current one."""
    mv = _registry().rollback()
    click.echo(f"active: {mv.name} {mv.version} (rolled back)")


# -- benchmarks --------------------------------------------------------------
@cli.group()
def bench() -> None:
    """Benchmarks; each runs its baseline in the same run. With --json the last line is one JSON object."""


@bench.command("drift")
@click.option("--quick", is_flag=True, help="One seed instead of three.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def bench_drift(quick: bool, as_json: bool) -> None:
    """River's SEA concept drift through the real broker, Redis and worker: detection delay, requests per
    drift, false alarms, labels joined, the learner's accuracy against River's own, two baseline detectors."""
    from streaming.bench.drift import run_drift_bench

    result = run_drift_bench(_settings(), quick=quick, progress=lambda m: click.echo(f"bench: {m}", err=True))
    _emit(result, as_json)


@bench.command("learners")
@click.option("--quick", is_flag=True, help="Fewer labels (a smoke run).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def bench_learners(quick: bool, as_json: bool) -> None:
    """CPU per label of every online learner kind against the score step's CPU per event, same run."""
    from streaming.bench.learners import run_learners_bench
    from streaming.inference.registry import ModelRegistry
    from streaming.worker.runtime import load_components

    s = _settings()
    _, codec, pipeline = load_components(s)
    result = run_learners_bench(pipeline, ModelRegistry.from_settings(s, pipeline.name), codec, quick=quick,
                                progress=lambda m: click.echo(f"bench: {m}", err=True))
    if as_json:
        click.echo(orjson.dumps(result).decode())


@bench.command("features")
@click.option("--quick", is_flag=True, help="Fewer events (a smoke run).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("--cluster", is_flag=True,
              help="Ours only, the same events on one private Redis and on a private local 3-node Redis Cluster "
                   "(needs redis-server and redis-cli): Redis CPU and client CPU per event, batch wall p50/p99, "
                   "cluster/single.")
@_friendly
def bench_features(quick: bool, as_json: bool, cluster: bool) -> None:
    """The feature store vs the naive approach (one command per event per aggregate), on a private Redis; with
    --cluster, the feature store on a local 3-node Redis Cluster vs one Redis."""
    from streaming.bench.features import run_cluster_bench, run_features_bench
    from streaming.infra.stack import Stack
    from streaming.worker.runtime import load_components

    s = _settings()
    _, _, pipeline = load_components(s)
    if cluster:
        result = run_cluster_bench(pipeline, quick=quick, say=lambda m: click.echo(m, err=as_json))
        if as_json:
            click.echo(orjson.dumps(result).decode())
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(s.replace(run_dir=tmp), private_redis=True, tie_to_parent=True)
        try:
            url = stack.redis_only().url
            result = run_features_bench(url, pipeline, quick=quick, say=lambda m: click.echo(m, err=as_json))
        finally:
            stack.down()
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


@bench.command("batching")
@click.option("--quick", is_flag=True, help="A short run (about a minute).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports/bench-batching"), show_default=True, help="Where the PNG plots go.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="ONNX Runtime provider (cuda: IO binding, pinned buffers; an error where CUDA cannot load).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def bench_batching(quick: bool, out_dir: Path, provider: str, as_json: bool) -> None:
    """Batch policies (none, a static grid, adaptive) under open-loop Poisson load, in process (docs/batching.md)."""
    from streaming.bench.batching import run_batching_bench

    result = run_batching_bench(quick=quick, out_dir=out_dir, say=lambda m: click.echo(m, err=as_json),
                                provider=provider)
    _emit(result, as_json)


@bench.command("pipeline")
@click.option("--quick", is_flag=True, help="5 s steps, rates doubling, no bisection (a few minutes).")
@click.option("--slo-p99-ms", type=float, default=None, help="SLO (default: the pipeline's slo_p99_ms, 50 ms).")
@click.option("--step-duration", type=float, default=None, help="Seconds each rate is held [30; --quick: 5].")
@click.option("--systems", default="bare_broker,faust_forward,quix_forward,naive,worker", show_default=True,
              help="Comma-separated subset, in the order to run.")
@click.option("--max-rate", type=float, default=None, help="Highest rate tried [40000; --quick: 16000].")
@click.option("--start-rate", "start_rates", multiple=True, metavar="SYSTEM=RATE",
              help="Where a system's search starts (repeatable), e.g. worker=300.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (default: reports/bench-pipeline-<time>/).")
@click.option("--quix-venv", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The Quix Streams venv (default .streaming/bench-venvs/quix; created when missing).")
@click.option("--cost-rates", default="400,2000", show_default=True, metavar="R1,R2,...",
              help="Fixed rates at which faust_forward, quix_forward and worker are measured for CPU and broker "
                   "requests per event ('' for none).")
@click.option("--floor-rate", type=click.FloatRange(min=0), default=25.0, show_default=True,
              help="Rate of the one latency-floor step per system (0: none).")
@_cpu_share_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@_friendly
def bench_pipeline(quick: bool, slo_p99_ms: float | None, step_duration: float | None, systems: str,
                   max_rate: float | None, start_rates: tuple[str, ...], report_dir: Path | None,
                   quix_venv: Path | None, cost_rates: str, floor_rate: float, cpu_share: float | None,
                   as_json: bool) -> None:
    """Capacity at the SLO of a bare broker, a Faust and a Quix forwarder, a naive worker and ours, their cost per
    event at fixed rates and their latency floor (docs/loadtest.md)."""
    from loadtest.share import share_run
    from streaming.bench.pipeline import SYSTEMS, run_pipeline_bench
    from streaming.bench.pipeline.quixenv import default_venv

    names = [n.strip() for n in systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise UserError(f"unknown system(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(SYSTEMS)}")
    starts: dict[str, float] = {}
    for item in start_rates:
        name, _, rate = item.partition("=")
        try:
            starts[name.strip()] = float(rate)
        except ValueError:
            raise UserError(f"bad --start-rate {item!r}: use SYSTEM=RATE") from None
    try:
        rates = [float(r) for r in cost_rates.split(",") if r.strip()]
    except ValueError:
        raise UserError(f"bad --cost-rates {cost_rates!r}: use comma-separated events/s, e.g. 400,2000") from None
    if any(r <= 0 for r in rates):
        raise UserError(f"bad --cost-rates {cost_rates!r}: every rate must be above 0")
    out = report_dir or Path("reports") / time.strftime("bench-pipeline-%Y%m%d-%H%M%S")
    s = _settings()
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    with share_run(cpu_share, s, say) as group:
        result = run_pipeline_bench(s, quick=quick, slo_p99_ms=slo_p99_ms, step_s=step_duration, systems=names,
                                    max_rate=max_rate, start_rates=starts, report_dir=out,
                                    quix_venv=quix_venv or default_venv(), say=say, cost_rates=rates,
                                    floor_rate=floor_rate or None, cpu_share=cpu_share)
        result.update(_share_fields(cpu_share, group))
    click.echo(f"report: {result['report']}", err=True)
    _emit(result, as_json)


# -- load tests --------------------------------------------------------------
def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


@cli.group(invoke_without_command=True)
@click.option("--profile", type=click.Choice(["constant", "poisson", "step", "burst", "replay"]), default="poisson",
              show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Target events/s (base rate for burst).")
@click.option("--duration", type=float, default=30.0, show_default=True, help="Seconds of load.")
@click.option("--steps", default="", help="step profile: RATE:SECONDS,... e.g. 200:10,1800:10,200:10")
@click.option("--burst-every", type=float, default=5.0, show_default=True, help="burst profile: seconds between bursts")
@click.option("--burst-size", type=int, default=500, show_default=True, help="burst profile: events per burst")
@click.option("--replay", "replay_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="replay profile: JSON lines whose event times give the timing")
@click.option("--slo-p99-ms", type=float, default=None, help="SLO (default: the pipeline's slo_p99_ms).")
@click.option("--linger-ms", type=float, default=20.0, show_default=True, help="Generator producer linger.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (default: reports/loadtest-<time>/).")
@_cpu_share_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.pass_context
@_friendly
def loadtest(ctx: click.Context, profile: str, rate: float, duration: float, steps: str, burst_every: float,
             burst_size: int, replay_file: Path | None, slo_p99_ms: float | None, linger_ms: float,
             report_dir: Path | None, cpu_share: float | None, as_json: bool) -> None:
    """Open-loop load test against a fresh worker on fresh topics; exits 1 when the SLO is violated (and says why)."""
    if ctx.invoked_subcommand is not None:
        return
    from loadtest.schedule import parse_steps, replay_offsets
    from loadtest.session import LoadSession
    from loadtest.share import share_run

    s = _settings()
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    try:
        phases = parse_steps(steps) if profile == "step" else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if profile == "step" and not phases:
        raise UserError("--profile step needs --steps RATE:SECONDS,...")
    if profile == "replay" and replay_file is None:
        raise UserError("--profile replay needs --replay FILE")
    with share_run(cpu_share, s, say) as group, LoadSession(s, say, cpu_share=cpu_share) as session:
        replay = replay_offsets(replay_file, session.pipeline.event.time_field) if replay_file else None
        slo = slo_p99_ms or session.pipeline.slo_p99_ms
        out = report_dir or Path("reports") / time.strftime("loadtest-%Y%m%d-%H%M%S")
        result = session.run(profile=profile, rate=rate, duration_s=duration, slo_p99_ms=slo, linger_ms=linger_ms,
                             steps=phases, replay=replay, report_dir=out)
        result.update(_share_fields(cpu_share, group))
    say(result["verdict_text"])
    say(f"p99 {result['p99_ms']} ms (SLO {slo:g} ms), achieved {result['achieved_rate']}/{result['target_rate']:.0f} "
        f"events/s, missing {result['missing']}, duplicates {result['duplicates']}; report {result['report']}")
    _emit(result, as_json)
    sys.exit(0 if result["slo_pass"] else 1)


@loadtest.command("capacity")
@click.option("--slo-p99-ms", type=float, default=None, help="SLO (default: the pipeline's slo_p99_ms).")
@click.option("--step-duration", type=float, default=30.0, show_default=True, help="Seconds per rate step.")
@click.option("--start-rate", type=float, default=1000.0, show_default=True)
@click.option("--max-rate", type=float, default=50000.0, show_default=True)
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@_cpu_share_option
@click.option("--json", "as_json", is_flag=True)
@_friendly
def loadtest_capacity(slo_p99_ms: float | None, step_duration: float, start_rate: float, max_rate: float,
                      report_dir: Path | None, cpu_share: float | None, as_json: bool) -> None:
    """Highest Poisson rate whose p99 stays within the SLO (each step on fresh topics and a fresh worker); searches
    downward when the first step fails."""
    from loadtest.session import LoadSession
    from loadtest.share import share_run

    s = _settings()
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    with share_run(cpu_share, s, say) as group, LoadSession(s, say, cpu_share=cpu_share) as session:
        slo = slo_p99_ms or session.pipeline.slo_p99_ms
        out = report_dir or Path("reports") / time.strftime("capacity-%Y%m%d-%H%M%S")
        result = session.capacity(slo_p99_ms=slo, step_s=step_duration, start_rate=start_rate, max_rate=max_rate,
                                  report_dir=out)
        result.update(_share_fields(cpu_share, group))
    say(f"max rate at p99 <= {slo:g} ms: {result['max_rate_at_slo']:,.0f} events/s")
    _emit(result, as_json)


@cli.command()
@click.option("--quick", is_flag=True, help="A short run for CI: 5,000 events, 2 kills, the Redis outage and the "
              "broker restart (about two minutes).")
@click.option("--events", type=click.IntRange(min=100), default=None, help="Valid events to send [50000; --quick: 5000].")
@click.option("--rate", type=click.FloatRange(min=1), default=None, help="Events per second [400; --quick: 150].")
@click.option("--kills", type=click.IntRange(min=0), default=None, help="Worker SIGKILLs [5; --quick: 2].")
@click.option("--hostile-share", type=click.FloatRange(0, 0.5), default=0.01, show_default=True,
              help="Share of hostile records among the events.")
@click.option("--seed", type=int, default=13, show_default=True, help="Seeds the events and the fault moments.")
@click.option("--json", "as_json", is_flag=True, help="Only the JSON line (no summary lines on stderr).")
@_friendly
def chaos(quick: bool, events: int | None, rate: float | None, kills: int | None, hostile_share: float, seed: int,
          as_json: bool) -> None:
    """Kill the worker, stop Redis and restart the broker under a labelled stream with hostile records; one JSON
    line says what was lost, duplicated or miscounted (docs/reliability.md). Exits 1 unless everything adds up."""
    import dataclasses

    from loadtest.chaos import ChaosPlan, run_chaos, summary_lines

    plan = ChaosPlan.quick(seed) if quick else ChaosPlan(seed=seed)
    plan = dataclasses.replace(plan, hostile_share=hostile_share, events=plan.events if events is None else events,
                               rate=plan.rate if rate is None else rate, kills=plan.kills if kills is None else kills)
    result = run_chaos(_settings(), plan)
    if not as_json:
        for line in summary_lines(result):
            click.echo(line, err=True)
    click.echo(orjson.dumps(result).decode())
    sys.exit(0 if result["ok"] else 1)


# -- the main job ------------------------------------------------------------
@cli.command()
@click.option("--rate", type=float, default=400.0, show_default=True, help="Events per second.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds of events.")
@click.option("--label-delay", type=float, default=3.0, show_default=True, help="Seconds before an event's label.")
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--linger-ms", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="The event generator's producer linger (the labels' is 100 ms).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the summary (default: <run_dir>/demo-summary.json and .txt).")
@click.option("--retrain/--no-retrain", default=True, show_default=True,
              help="Run the retrain job beside the worker (the loop closes within the run).")
@_cpu_share_option
@_friendly
def demo(rate: float, duration: float, label_delay: float, seed: int, linger_ms: float, report: Path | None,
         retrain: bool,
         cpu_share: float | None) -> None:
    """Run everything: stack, model, worker, a minute of events with drift half-way, and a summary."""
    from streaming.demo import run_demo

    ok = run_demo(_settings(), rate=rate, duration=duration, label_delay=label_delay, seed=seed, report=report,
                  retrain=retrain,
                  linger_ms=linger_ms, cpu_share=cpu_share)
    sys.exit(0 if ok else 1)


def main() -> None:
    cli(prog_name="streaming")


if __name__ == "__main__":
    main()
