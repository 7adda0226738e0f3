from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest

from streaming.events.codec import Codec, DecodeError
from streaming.events.schemas import SchemaRegistry
from streaming.settings import project_root

SAMPLES = {
    "transaction": {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 12.5, "country": "US",
                    "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": 1_700_000_000_000_000},
    "label": {"event_id": "e1", "label": 1, "label_time": 1_700_000_000_000_000},
    "prediction": {"event_id": "e1", "key": "c1", "model": "fraud", "model_version": "v1", "score": 0.25,
                   "decision": False, "challenger_score": None, "fallback": None, "flags": [], "event_time": 1,
                   "produced_at": 2, "received_at": 3, "features_at": 4, "inference_started_at": 5,
                   "predicted_at": 6, "batch_size": 1},
    "retrain_request": {"request_id": "r", "dedupe_key": "d", "model": "fraud", "model_version": "v1",
                        "monitor": "m", "monitor_params": {"delta": "0.002"}, "signal": "error", "statistic": 0.2,
                        "threshold": 0.01, "severity": "critical", "window_start": 1, "window_end": 2,
                        "sample_count": 10, "offsets": {"0": 5}, "reference_snapshot_id": None, "detected_at": 3},
}


@pytest.fixture(scope="module")
def codec(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


@pytest.mark.parametrize("subject", sorted(SAMPLES))
def test_avro_round_trip_in_confluent_framing(codec: Codec, subject: str) -> None:
    data = codec.encode(subject, SAMPLES[subject])
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == codec.registry.latest(subject).id
    assert codec.decode(subject, data) == SAMPLES[subject]


@pytest.mark.parametrize("subject", sorted(SAMPLES))
def test_json_is_accepted_and_validated(codec: Codec, subject: str) -> None:
    assert codec.decode(subject, json.dumps(SAMPLES[subject]).encode()) == SAMPLES[subject]


def test_json_gets_defaults_filled(codec: Codec) -> None:
    pred = {k: v for k, v in SAMPLES["prediction"].items() if k not in ("challenger_score", "fallback", "flags")}
    out = codec.decode("prediction", json.dumps(pred).encode())
    assert out["challenger_score"] is None and out["flags"] == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty value"),
        (b"\x00\x00\x00", "truncated"),
        (b"\x00\x00\x00\x03\xe7xx", "unknown schema id 999"),
        (b"\x00\x00\x00\x00\x03\x02", "expected 'transaction'"),
        (b"\x00\x00\x00\x00\x01\xff", "bad Avro body"),
        (b"hello", "not JSON and not Avro"),
        (b"[1, 2]", "expected an object"),
        (b'{"event_id": "x"}', "does not match schema"),
        (b'{"event_id": "x", "card_id": "c", "merchant_id": "m", "amount": "lots", "country": "US", '
         b'"card_country": "US", "channel": "pos", "mcc": "x", "event_time": 1}', "does not match schema"),
    ],
)
def test_undecodable_input_says_why(codec: Codec, data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        codec.decode("transaction", data)


def test_every_schema_version_is_backward_compatible(schema_registry: SchemaRegistry) -> None:
    """Data written with any older version reads with the latest (new fields need defaults)."""
    checked = 0
    for subject in schema_registry.subjects:
        latest = schema_registry.latest(subject)
        for old in schema_registry.versions(subject):
            sample = SAMPLES.get(subject)
            if sample is None:
                continue
            record = {f["name"]: sample[f["name"]] for f in old.raw["fields"]}
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, old.parsed, record)
            buf.seek(0)
            read = fastavro.schemaless_reader(buf, old.parsed, latest.parsed)
            assert {k: read[k] for k in record} == record
            for f in latest.raw["fields"]:
                if f["name"] not in record:
                    assert "default" in f, f"{subject}: new field {f['name']} has no default"
            checked += 1
    assert checked >= len(SAMPLES)


def test_schema_files_match_the_registry() -> None:
    reg = json.loads((project_root() / "schemas" / "registry.json").read_text())
    ids = [e["id"] for e in reg["schemas"]]
    assert len(ids) == len(set(ids)), "schema ids are never reused"
    on_disk = {p.name for p in (project_root() / "schemas").glob("*.avsc")}
    assert on_disk == {e["file"] for e in reg["schemas"]}
