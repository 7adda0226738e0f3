"""The real worker (a child process) on the real broker and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming.demo import scrape
from streaming.events.codec import Codec
from streaming.events.producer import EventProducer
from streaming.events.schemas import SchemaRegistry
from streaming.infra.processes import free_port
from streaming.worker.process import WorkerProcess
from tests.conftest import Servers, pipeline_variant, unique, worker_env
from tests.helpers import decoded, produce_raw, read_until, transaction

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(servers: Servers, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # the error monitor only: this module's traffic is nothing like the generator's, which the label-free
    # monitors would rightly call drift (tests/worker/test_drift.py covers them)
    pipeline = pipeline_variant(tmp_path_factory.mktemp("pipeline") / "pipeline.toml", monitors=("model_error",))
    return worker_env(servers, models_dir, pipeline=pipeline, STREAMING_METRICS_PORT=str(free_port()))


@pytest.fixture(scope="module")
def worker(env: dict[str, str], servers: Servers) -> Iterator[WorkerProcess]:
    w = WorkerProcess(env, servers.run_dir / f"{env['STREAMING_APP_ID']}.log").start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def codec(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


def predictions_for(servers: Servers, env: dict[str, str], codec: Codec, ids: set[str], timeout: float = 30):
    msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_PREDICTIONS"],
                      lambda got: ids <= {p["event_id"] for p in decoded(codec, "prediction", got)}, timeout)
    return [p for p in decoded(codec, "prediction", msgs) if p["event_id"] in ids]


def test_plain_json_from_the_cli_comes_out_as_a_prediction(worker: WorkerProcess, env: dict[str, str],
                                                          servers: Servers, codec: Codec) -> None:
    eid = unique("json")
    line = json.dumps(transaction(eid, card="cj", amount=42.0)) + "\n"
    done = subprocess.run([sys.executable, "-m", "streaming", "produce", "-", "--format", "json"], input=line,
                          text=True, capture_output=True, env={**worker.env}, timeout=60)
    assert done.returncode == 0, done.stderr
    [pred] = predictions_for(servers, env, codec, {eid})
    assert pred["key"] == "cj" and pred["model"] == "fraud" and pred["model_version"] == "v1"
    assert 0.0 <= pred["score"] <= 1.0 and pred["decision"] == (pred["score"] >= 0.5)
    assert pred["fallback"] is None
    assert pred["produced_at"] <= pred["received_at"] <= pred["features_at"] <= pred["predicted_at"]


def test_garbage_goes_to_the_dead_letter_topic_with_its_reason(worker: WorkerProcess, env: dict[str, str],
                                                              servers: Servers) -> None:
    garbage = b"\xde\xad\xbe\xef " + unique("junk").encode()
    produce_raw(servers.bootstrap, env["STREAMING_TOPIC_EVENTS"], [garbage], key=b"k-garbage")
    msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_DLQ"], lambda got: any(m.value() == garbage for m in got))
    [dl] = [m for m in msgs if m.value() == garbage]
    headers = {k: v.decode() for k, v in dl.headers()}
    assert dl.key() == b"k-garbage"
    assert headers["dlq.topic"] == env["STREAMING_TOPIC_EVENTS"] and headers["dlq.stage"] == "decode"
    assert headers["dlq.error_class"] == "DecodeError" and "not JSON and not Avro" in headers["dlq.reason"]
    assert worker.alive


def test_avro_batch_every_event_scored_once_and_labels_learned(worker: WorkerProcess, env: dict[str, str],
                                                               servers: Servers, codec: Codec) -> None:
    prod = EventProducer(servers.bootstrap, codec, "transaction", env["STREAMING_TOPIC_EVENTS"],
                         key_fields=["card_id"], linger_ms=5)
    ids = [unique("avro") for _ in range(300)]
    for i, eid in enumerate(ids):
        prod.send(transaction(eid, card=f"cb{i % 7}", amount=10.0 + i))
    assert prod.close() == 0
    preds = predictions_for(servers, env, codec, set(ids))
    assert sorted(p["event_id"] for p in preds) == sorted(ids)  # each exactly once
    # learning: labels join the served vectors
    labels = EventProducer(servers.bootstrap, codec, "label", env["STREAMING_TOPIC_LABELS"], linger_ms=5)
    for p in preds:
        labels.send({"event_id": p["event_id"], "label": int(p["decision"]), "label_time": p["predicted_at"]})
    labels.send({"event_id": unique("never-scored"), "label": 1, "label_time": 1})
    assert labels.close() == 0
    url = f"http://127.0.0.1:{env['STREAMING_METRICS_PORT']}/metrics"
    deadline = time.monotonic() + 20
    joined = waiting = 0.0
    lag_key = ("streaming_consumer_lag_messages", (("partition", "0"), ("topic", env["STREAMING_TOPIC_EVENTS"])))
    while time.monotonic() < deadline:
        samples = scrape(url)
        joined = samples.get(("streaming_labels_total", (("outcome", "joined"),)), 0.0)
        # the never-scored label waits for a vector ([learner] label_wait, 30 s), then becomes a dead letter
        waiting = samples.get(("streaming_labels_waiting", ()), 0.0)
        if joined >= len(ids) and waiting == 1 and lag_key in samples:
            break
        time.sleep(0.2)
    assert joined >= len(ids) and waiting == 1
    assert samples[("streaming_events_total", (("outcome", "scored"),))] >= len(ids) + 1
    assert samples[("streaming_e2e_latency_seconds_count", ())] >= len(ids)
    assert samples[("streaming_model_info", (("model", "fraud"), ("provider", "CPUExecutionProvider"),
                                             ("version", "v1")))] == 1.0
    assert samples.get(lag_key, -1.0) >= 0  # the gauge is exported (every 5 s)
    # the adaptive policy dispatched every scored row, each dispatch with its reason and timings
    dispatches = sum(v for (n, _), v in samples.items() if n == "streaming_batch_dispatches_total")
    reasons = {dict(lab)["reason"] for (n, lab), v in samples.items() if n == "streaming_batch_dispatches_total" and v}
    assert dispatches >= 1 and reasons <= {"keeps_up", "full", "deadline", "overload"}
    assert samples[("streaming_batch_run_seconds_count", (("kind", "actual"),))] == dispatches
    assert samples[("streaming_batch_queue_wait_seconds_count", ())] == dispatches
    assert samples[("streaming_batch_size_sum", ())] == samples[("streaming_events_total", (("outcome", "scored"),))]


def test_drift_in_the_labels_publishes_a_retrain_request(worker: WorkerProcess, env: dict[str, str],
                                                        servers: Servers, codec: Codec) -> None:
    prod = EventProducer(servers.bootstrap, codec, "transaction", env["STREAMING_TOPIC_EVENTS"],
                         key_fields=["card_id"], linger_ms=5)
    ids = [unique("drift") for _ in range(3000)]
    for i, eid in enumerate(ids):
        prod.send(transaction(eid, card=f"cd{i % 50}"))
    assert prod.close() == 0
    preds = {p["event_id"]: p for p in predictions_for(servers, env, codec, set(ids), timeout=60)}
    labels = EventProducer(servers.bootstrap, codec, "label", env["STREAMING_TOPIC_LABELS"], linger_ms=5)
    for i, eid in enumerate(ids):  # the truth agrees with the model, then suddenly contradicts it
        agree = int(preds[eid]["decision"])
        labels.send({"event_id": eid, "label": agree if i < 1500 else 1 - agree, "label_time": 1})
    assert labels.close() == 0
    def requests(got: list) -> list[dict]:
        return decoded(codec, "retrain_request", got)

    msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_RETRAIN"], requests, timeout=30)
    time.sleep(2.0)  # any second request would be on the topic by now
    msgs = read_until(servers.bootstrap, env["STREAMING_TOPIC_RETRAIN"], requests, timeout=30)
    reqs = requests(msgs)
    assert len(reqs) == 1, "one retrain request per drift"
    req = reqs[0]
    assert req["model"] == "fraud" and req["model_version"] == "v1" and req["signal"] == "error"
    assert req["monitor"] == "model_error" and req["dedupe_key"].startswith("fraud:v1:")
    assert req["statistic"] > req["threshold"]  # the error's recent mean against its mean while OK
    assert all(m.key() == b"fraud" for m in msgs)
