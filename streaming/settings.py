"""The one settings object.

This is the only module that reads the environment. Every setting has an
environment variable ``STREAMING_<NAME>`` (upper case); :data:`FIELDS` lists
them with their defaults and documentation, and ``docs/contract.md`` is written
from the same table (a test checks that they agree).

>>> s = Settings.from_env({"STREAMING_PRODUCER_LINGER_MS": "20"})
>>> s.producer_linger_ms
20.0
>>> Settings.from_env({"STREAMING_PRODUCER_ACKS": "maybe"})
Traceback (most recent call last):
...
streaming.errors.ConfigError: STREAMING_PRODUCER_ACKS='maybe' is not one of: 0, 1, all
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError

__all__ = ["PREFIX", "FIELDS", "Settings", "SettingDoc", "project_root"]

PREFIX = "STREAMING_"


def project_root() -> Path:
    """The source tree that holds ``schemas/`` and ``models/``."""
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SettingDoc:
    """How a setting is parsed and what it means."""

    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


def _setting(default: Any, doc: str, *, choices: tuple[str, ...] = (), minimum: float | None = None,
             secret: bool = False) -> Any:
    """A setting; a ``secret`` one is left out of the settings' repr (and so of any log line that prints them)."""
    return field(default=default, repr=not secret, metadata={"doc": SettingDoc(doc, choices, minimum)})


@dataclass(frozen=True)
class Settings:
    """Settings of the worker and the commands, built once at start-up."""

    # -- where things are
    broker_url: str = _setting(
        "",
        "Kafka bootstrap servers (host:port[,host:port]). Empty: the embedded broker started by `streaming up`.",
    )
    redis_url: str = _setting(
        "",
        "Redis URL. Empty: the Redis recorded by `streaming up` (redis://127.0.0.1:6379/0 when it answers, "
        "else a private redis-server).",
    )
    run_dir: str = _setting(".streaming", "Directory for the embedded stack's pids, ports, logs and the demo's report.")
    pipeline: str = _setting("models/fraud/pipeline.toml", "The pipeline file the worker serves.")
    models_dir: str = _setting("models", "Model registry root: models/<pipeline>/<version>/model.onnx.")
    schemas_dir: str = _setting("schemas", "Directory of Avro schemas and registry.json.")
    # -- topics
    topic_events: str = _setting("events", "Input events topic.")
    topic_predictions: str = _setting("predictions", "Predictions topic.")
    topic_labels: str = _setting("labels", "Ground-truth labels topic.")
    topic_retrain: str = _setting("retrain-requests", "Retrain requests topic.")
    topic_dlq: str = _setting("events-dlq", "Dead letters (original bytes, reason in headers).")
    topic_partitions: int = _setting(
        1,
        "Partitions for topics the system creates. Raise it to spread a topic over several workers; on the embedded "
        "broker (Tansu) every partition adds produce batches, and its cost grows with the batches it stores.",
        minimum=1,
    )
    # -- security: Kafka (every client we create: the worker, the CLI, the load test, the demo)
    kafka_security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security protocol.", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    kafka_sasl_mechanism: str = _setting(
        "SCRAM-SHA-256", "SASL mechanism (with a SASL_* protocol).", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    kafka_sasl_username: str = _setting("", "SASL user name.")
    kafka_sasl_password: str = _setting("", "SASL password. Empty: the password file.", secret=True)
    kafka_sasl_password_file: str = _setting("", "File holding the SASL password (its first line).")
    kafka_ssl_ca: str = _setting("", "PEM file of the CA that signed the brokers' certificates (empty: the system's).")
    kafka_ssl_cert: str = _setting("", "PEM client certificate, for brokers that ask for one (mutual TLS).")
    kafka_ssl_key: str = _setting("", "PEM private key of the client certificate.")
    # -- security: Redis (the URL may carry them too: redis://:password@host, rediss:// for TLS)
    redis_password: str = _setting("", "Redis AUTH password (overrides one in the URL). Empty: the password file, "
                                   "then the URL's.", secret=True)
    redis_password_file: str = _setting("", "File holding the Redis AUTH password (its first line).")
    redis_username: str = _setting("", "Redis ACL user name (empty: the URL's, else the default user).")
    redis_tls_ca: str = _setting("", "PEM CA file for a rediss:// (TLS) Redis.")
    redis_tls_cert: str = _setting("", "PEM client certificate for a Redis that asks for one.")
    redis_tls_key: str = _setting("", "PEM private key of the Redis client certificate.")
    redis_cluster: bool = _setting(
        False, "The Redis URL names a node of a Redis Cluster: keys are routed by slot and each script call touches "
        "one slot.",
    )
    # -- security: models
    model_signing_key: str = _setting(
        "", "Key (at least 16 bytes) of the HMAC-SHA256 that signs model artefacts. When a key is set (here or in "
        "the key file), an unsigned or wrongly signed model is refused. Empty: the key file.", secret=True,
    )
    model_signing_key_file: str = _setting(
        "", "File holding the model-signing key. Empty: no key, models are checked against their sha256 only.",
    )
    # -- worker and Kafka clients
    app_id: str = _setting("streaming-worker", "Faust app id (the consumer group).")
    worker_id: str = _setting(
        "", "This worker's stable name among the workers of one group (a pod or host name). With several workers, "
        "give each its own: the online learner's checkpoint is kept per worker id. Empty: one checkpoint for the "
        "pipeline (one worker).",
    )
    consumer_fetch_max_wait_ms: int = _setting(
        5,
        "Worker consumer fetch max wait. Faust hardcodes 1500 ms; on Tansu it bounds latency directly. Never 0.",
        minimum=1,
    )
    producer_linger_ms: float = _setting(
        1.0,
        "Worker producer linger in ms. A batch's records are sent together, so a short linger already batches them.",
        minimum=0,
    )
    producer_acks: str = _setting("all", "Worker producer acks.", choices=("0", "1", "all"))
    session_timeout_s: float = _setting(
        6.0, "Consumer group session timeout; the group join on Tansu takes half of it.", minimum=1
    )
    commit_interval_s: float = _setting(1.0, "How often acknowledged offsets are committed.", minimum=0.05)
    stop_timeout_s: float = _setting(
        30.0, "After SIGTERM/SIGINT, how long the worker may take to stop cleanly (score what is queued, commit) "
        "before it exits anyway; unacknowledged events are then redelivered. A broker that is gone never answers.",
        minimum=1,
    )
    batch_max_rows: int = _setting(
        512, "Most events the worker decodes and sends to the feature store in one round trip (a larger fetch is "
        "taken in chunks of this size).", minimum=1
    )
    batch_max_wait_ms: float = _setting(
        5.0, "The benchmark's Faust forwarder: longest wait to fill a take_events batch (the worker takes whole "
        "fetches and never waits). Inference batching is the pipeline's [batching].",
        minimum=0.1,
    )
    batch_policy: str = _setting(
        "", "Inference batch policy, overriding the pipeline's [batching] policy: none, static or adaptive "
        "(empty: the pipeline's).", choices=("", "none", "static", "adaptive"),
    )
    log_level: str = _setting("info", "Worker log level.", choices=("crit", "error", "warn", "info", "debug"))
    # -- serving
    onnx_provider: str = _setting(
        "auto", "ONNX Runtime provider: auto (CUDA when it can load), cpu or cuda.", choices=("auto", "cpu", "cuda")
    )
    onnx_threads: int = _setting(1, "ONNX Runtime intra-op threads.", minimum=1)
    feature_log_ttl_s: int = _setting(86400, "How long the served feature vectors are kept for the label join.", minimum=1)
    dedupe_ttl_s: int = _setting(86400, "How long applied event ids are remembered (feature idempotency).", minimum=1)
    redis_prefix: str = _setting(
        "", "Prefix of every feature-store key (empty: the pipeline's name and ':'). The demo and load tests "
        "set their own per run, so that no run sees another's windows.",
    )
    challenger: bool = _setting(True, "Score each event with the online learner too (challenger_score).")
    # -- online learning
    checkpoint_key: str = _setting(
        "", "Key (at least 16 bytes) of the HMAC that signs the learner's checkpoints; every worker of a pipeline "
        "needs the same one. Empty: the key file.", secret=True,
    )
    checkpoint_key_file: str = _setting(
        "", "File holding the checkpoint HMAC key (created with mode 0600 when missing). Empty: "
        "<run_dir>/checkpoint.key.",
    )
    checkpoint_interval_s: float = _setting(
        30.0, "Seconds between checkpoints of the learner, evaluator and monitors (one is also written at a clean "
        "stop; 0 disables them).", minimum=0,
    )
    # -- observability
    metrics_host: str = _setting("127.0.0.1", "Bind address of the worker's /metrics endpoint.")
    metrics_port: int = _setting(9464, "Port of the worker's /metrics endpoint (0 disables it).", minimum=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build the settings from ``STREAMING_*`` variables; ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = PREFIX + f.name.upper()
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif var in env:
                values[f.name] = _parse(var, env[var], f)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def path(self, value: str) -> Path:
        """Resolve a path setting: absolute, relative to the cwd, or to the source tree."""
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists():
            return p
        alt = project_root() / p
        return alt if alt.exists() else p

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser().resolve()

    @property
    def topics(self) -> dict[str, str]:
        return {
            "events": self.topic_events,
            "predictions": self.topic_predictions,
            "labels": self.topic_labels,
            "retrain": self.topic_retrain,
            "dlq": self.topic_dlq,
        }


FIELDS: dict[str, SettingDoc] = {f.name: f.metadata["doc"] for f in dataclasses.fields(Settings)}


def _parse(var: str, raw: str, f: dataclasses.Field[Any]) -> Any:
    doc: SettingDoc = f.metadata["doc"]
    text = raw.strip()
    value: Any
    if f.type in ("int", int):
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not an integer") from None
    elif f.type in ("float", float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a number") from None
    elif f.type in ("bool", bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            value = True
        elif lowered in ("0", "false", "no", "off"):
            value = False
        else:
            raise ConfigError(f"{var}={raw!r} is not a boolean (use true or false)")
    else:
        value = text
    if doc.choices and value not in doc.choices:
        raise ConfigError(f"{var}={raw!r} is not one of: {', '.join(doc.choices)}")
    if doc.minimum is not None and value < doc.minimum:
        raise ConfigError(f"{var}={raw!r} must be at least {doc.minimum:g}")
    return value
