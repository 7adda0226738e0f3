"""The reader process's event-id fast path agrees with a full decode."""

from __future__ import annotations

from loadtest.reader import _Ids, first_string_field
from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry

PRED = {"event_id": "lt1-0-7", "key": "c1", "model": "fraud", "model_version": "v1", "score": 0.2, "decision": False,
        "event_time": 1, "produced_at": 2, "received_at": 3, "features_at": 4, "inference_started_at": 5,
        "predicted_at": 6, "batch_size": 1}
EVENT = {"event_id": "é" * 70, "card_id": "c", "merchant_id": "m", "amount": 1.5, "country": "FR", "card_country": "FR",
         "channel": "pos", "mcc": "fuel", "event_time": 1}


def test_ids_from_avro_bytes_match_a_full_decode(schema_registry: SchemaRegistry) -> None:
    codec = Codec(schema_registry)
    pred = codec.encode("prediction", PRED)
    event = codec.encode("transaction", EVENT)  # a long non-ASCII id: a two-byte length varint
    assert first_string_field(pred) == "lt1-0-7"
    assert first_string_field(event) == EVENT["event_id"]
    assert _Ids(codec, "prediction", "event_id")(pred) == "lt1-0-7"
    assert _Ids(codec, "transaction", "event_id")(event) == EVENT["event_id"]
    # JSON (which the codec accepts) goes through a full decode
    assert _Ids(codec, "prediction", "event_id")(codec.encode_json(PRED)) == "lt1-0-7"
    assert first_string_field(pred[:8]) is None  # truncated
