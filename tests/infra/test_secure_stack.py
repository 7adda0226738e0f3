"""The production path's security, end to end on real servers.

`streaming up --secure` serves the embedded broker over TLS only (a CA made for the run). The worker
and the CLI reach it over TLS, reach a Redis that wants a password, and serve a signed model. Then the
whole run is searched for every secret it was given: the logs, the run directory, the CLI's outputs
and /metrics.

A SASL login that works cannot be tested on the embedded broker: Tansu 0.6 keeps SCRAM users only in
storage engines this build lacks (docs/security.md). What is tested is the other half: our clients do
SASL over TLS, the broker refuses the user, and the user gets one clear line without the password.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiokafka
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streaming.events import security
from streaming.events.codec import Codec
from streaming.events.reader import TopicReader
from streaming.events.schemas import SchemaRegistry
from streaming.events.security import KafkaSecurity
from streaming.inference.registry import ModelRegistry
from streaming.infra.processes import free_port
from streaming.infra.stack import Stack
from streaming.settings import Settings
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, pipeline_variant, unique, worker_env
from tests.features.redis_servers import RedisProcs, needs_redis_server
from tests.helpers import decoded, transaction

pytestmark = [pytest.mark.integration, pytest.mark.security, needs_redis_server,
              pytest.mark.skipif(shutil.which("stunnel4") is None and shutil.which("stunnel") is None,
                                 reason="stunnel is not installed (scripts/setup.sh installs it)")]

#: every secret the run is given; none may appear anywhere the run writes or prints
SECRETS = {
    "redis": f"redis-pw-{uuid.uuid4().hex}",
    "sasl": f"sasl-pw-{uuid.uuid4().hex}",
    "checkpoint": f"ckpt-key-{uuid.uuid4().hex}",
    "signing": f"sign-key-{uuid.uuid4().hex}",
}


@dataclass(frozen=True)
class Secure:
    env: dict[str, str]  # the worker's and the CLI's environment
    ca: Path
    run_dir: Path
    outputs: list[str]  # everything the CLI printed in this module (searched for secrets at the end)


def _cli(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streaming", *args], input=stdin, text=True, capture_output=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("secure")
    run_dir = root / "run"
    redis = RedisProcs(root / "redis")
    port = redis.start("auth", free_port(), "--requirepass", SECRETS["redis"])
    redis_url = f"redis://127.0.0.1:{port}/0"
    settings = Settings(run_dir=str(run_dir), redis_url=redis_url, redis_password=SECRETS["redis"])
    stack = Stack(settings, secure=True, tie_to_parent=True)
    try:
        state = stack.up()
        broker = state.services["broker"]
        assert broker.ca is not None and state.services["redis"].pid is None  # our password-protected Redis
        models = root / "models"
        shutil.copytree(models_dir, models)
        signed = ModelRegistry.from_settings(Settings(models_dir=str(models), model_signing_key=SECRETS["signing"]),
                                             "fraud")
        signed.sign(signed.active_name())
        pipeline = pipeline_variant(root / "pipeline.toml", monitors=("model_error",))
        env = worker_env(Servers(broker.url, redis_url, run_dir), models, pipeline=pipeline,
                         STREAMING_METRICS_PORT=str(free_port()),
                         STREAMING_KAFKA_SECURITY_PROTOCOL="SSL", STREAMING_KAFKA_SSL_CA=broker.ca,
                         # set, though unused with SSL: it must not leak through the settings either
                         STREAMING_KAFKA_SASL_USERNAME="svc", STREAMING_KAFKA_SASL_PASSWORD=SECRETS["sasl"],
                         STREAMING_REDIS_PASSWORD=SECRETS["redis"],
                         STREAMING_CHECKPOINT_KEY=SECRETS["checkpoint"], STREAMING_CHECKPOINT_INTERVAL_S="1",
                         STREAMING_MODEL_SIGNING_KEY=SECRETS["signing"])
        security.configure(KafkaSecurity(protocol="SSL", ca=broker.ca))  # this process's readers
        yield Secure(env, Path(broker.ca), run_dir, [])
    finally:
        security.configure(None)
        stack.down()
        redis.stop()


@pytest.fixture(scope="module")
def worker(secure: Secure) -> Iterator[WorkerProcess]:
    w = WorkerProcess(secure.env, secure.run_dir / "worker.log")
    w.env["STREAMING_LOG_LEVEL"] = "debug"  # the most the worker ever writes
    w.start()
    yield w
    w.stop()


def test_the_worker_scores_over_tls_with_a_password_redis_and_a_signed_model(
        worker: WorkerProcess, secure: Secure, schema_registry: SchemaRegistry) -> None:
    ids = [unique("tls") for _ in range(20)]
    lines = "".join(f"{orjson_line(transaction(eid, card=f'c{i % 4}'))}\n" for i, eid in enumerate(ids))
    done = _cli(secure.env, "produce", "-", "--format", "json", stdin=lines)
    secure.outputs.extend([done.stdout, done.stderr])
    assert done.returncode == 0, done.stderr
    codec = Codec(schema_registry)
    reader = TopicReader(secure.env["STREAMING_BROKER_URL"], secure.env["STREAMING_TOPIC_PREDICTIONS"])
    got: set[str] = set()
    try:
        import time

        deadline = time.monotonic() + 60
        while not set(ids) <= got and time.monotonic() < deadline:
            got |= {p["event_id"] for p in decoded(codec, "prediction", reader.poll(0.1))}
    finally:
        reader.close()
    assert set(ids) <= got
    assert "broker" in worker.tail(200) or worker.alive


def orjson_line(record: dict[str, object]) -> str:
    import orjson

    return orjson.dumps(record).decode()


def test_a_client_without_the_ca_gets_one_line(secure: Secure) -> None:
    env = {k: v for k, v in secure.env.items() if k != "STREAMING_KAFKA_SSL_CA"}
    done = _cli(env, "produce", "--synthetic", "--duration", "0.5", "--rate", "10")
    secure.outputs.extend([done.stdout, done.stderr])
    assert done.returncode == 3
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: the TLS handshake with the Kafka broker") and "STREAMING_KAFKA_SSL_CA" in line


def test_a_plaintext_client_is_told_the_embedded_broker_speaks_tls(secure: Secure) -> None:
    env = {k: v for k, v in secure.env.items() if not k.startswith(("STREAMING_KAFKA_", "STREAMING_BROKER_URL"))}
    done = _cli(env, "produce", "--synthetic", "--duration", "0.5", "--rate", "10")
    secure.outputs.extend([done.stdout, done.stderr])
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "speaks TLS" in line and f"STREAMING_KAFKA_SSL_CA={secure.ca}" in line


def test_sasl_over_tls_reaches_the_broker_and_a_refusal_is_one_line(tmp_path: Path, secure: Secure) -> None:
    """Both client libraries do SCRAM over TLS with a broker that requires SASL; it refuses the user."""
    stack = Stack(Settings(run_dir=str(tmp_path / "run"), redis_url=secure.env["STREAMING_REDIS_URL"],
                           redis_password=SECRETS["redis"]), secure=True, authentication=True, tie_to_parent=True)
    broker = stack.up().services["broker"]
    try:
        assert broker.ca is not None
        env = {**secure.env, "STREAMING_BROKER_URL": broker.url, "STREAMING_KAFKA_SSL_CA": broker.ca,
               "STREAMING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "STREAMING_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
        for args in (("produce", "--synthetic", "--duration", "0.5", "--rate", "10"), ("worker",)):
            done = _cli(env, *args)
            secure.outputs.extend([done.stdout, done.stderr])
            assert done.returncode == 3, done.stderr
            [line] = done.stderr.strip().splitlines()[-1:]
            assert line.startswith("error: the Kafka broker at") and "refused the credentials" in line, line
            assert "SCRAM-SHA-512 as 'svc'" in line and SECRETS["sasl"] not in done.stderr + done.stdout
        # the worker's own client (aiokafka, through Faust's credentials) does the SCRAM exchange over TLS too
        sec = KafkaSecurity(protocol="SASL_SSL", mechanism="SCRAM-SHA-512", username="svc",
                            password=SECRETS["sasl"], ca=broker.ca)
        import asyncio

        async def start() -> BaseException | None:
            p = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.url,
                                          **credentials_to_aiokafka_auth(sec.faust_credentials()))
            try:
                await asyncio.wait_for(p.start(), 20)
                return None
            except Exception as exc:  # aiokafka reads the broker's SCRAM error ("e=...") as a missing "v"
                return exc
            finally:
                await p.stop()

        refused = asyncio.run(start())
        assert isinstance(refused, KeyError) and refused.args == ("v",)
    finally:
        stack.down()


def test_status_and_models_list_show_no_secret(secure: Secure, worker: WorkerProcess) -> None:
    for args in (("status", "--json"), ("models", "list", "--json")):
        done = _cli(secure.env, *args)
        secure.outputs.extend([done.stdout, done.stderr])
        assert done.stdout.strip(), done.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{secure.env['STREAMING_METRICS_PORT']}/metrics", timeout=5) as r:
        secure.outputs.append(r.read().decode())


def test_no_secret_anywhere_in_the_run(secure: Secure, worker: WorkerProcess) -> None:
    """Runs last in this module: every log, every file of the run directory, every output, /metrics."""
    import time

    time.sleep(1.5)  # one checkpoint interval: the sealed checkpoint has been written (to Redis, not here)
    worker.stop()
    texts = {f"output {i}": text for i, text in enumerate(secure.outputs)}
    for path in secure.run_dir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert any("worker.log" in name for name in texts) and len(texts) > 5
    assert "Ready" in texts[str(secure.run_dir / "worker.log")]
    leaks = [(name, which) for name, text in texts.items() for which, secret in SECRETS.items() if secret in text]
    assert leaks == []
