"""A RetrainRequest is a valid Avro record of the retrain_request subject, both ways."""

from __future__ import annotations

from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.online.request import RetrainRequest


def test_a_request_round_trips_through_the_avro_schema(schema_registry: SchemaRegistry) -> None:
    codec = Codec(schema_registry)
    req = RetrainRequest.new(model="fraud", model_version="v3", monitor="model_error+score_psi", signal="error",
                             statistic=0.31, threshold=0.04, window_start=1, window_end=2, sample_count=900,
                             dedupe_key="fraud:v3:2", offsets={"0": 41, "3": 7}, severity="critical",
                             monitor_params={"detectors": "adwin,psi"}, reference_snapshot_id="fraud:v3")
    back = RetrainRequest.from_record(codec.decode("retrain_request", codec.encode("retrain_request", req.to_record())))
    assert back == req and back.request_id and back.detected_at > 0
