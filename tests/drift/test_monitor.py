from __future__ import annotations

import random

import pytest

from streaming.drift.monitor import DriftMonitor
from streaming.events.codec import Codec
from streaming.events.schemas import SchemaRegistry
from streaming.pipeline.spec import MonitorSpec

S = 1_000_000


def feed(mon: DriftMonitor, values: list[float], start_s: float = 0.0) -> list[dict]:
    out = []
    for i, v in enumerate(values):
        req = mon.update(v, int((start_s + i * 0.01) * S), {"0": i})
        if req is not None:
            out.append(req)
    return out


def errors(n: int, rate: float, rng: random.Random) -> list[float]:
    return [1.0 if rng.random() < rate else 0.0 for _ in range(n)]


@pytest.mark.parametrize("detector,params", [("adwin", {"delta": 0.002}),
                                             ("page_hinkley", {"threshold": 20.0, "min_instances": 100})])
def test_no_drift_no_request(detector: str, params: dict) -> None:
    mon = DriftMonitor(MonitorSpec("m", detector, "error", params), "fraud", "v1")
    assert feed(mon, errors(20_000, 0.02, random.Random(1))) == []
    assert mon.state == "ok"


def test_a_shift_fires_once_then_cools_down(schema_registry: SchemaRegistry) -> None:
    rng = random.Random(2)
    mon = DriftMonitor(MonitorSpec("err", "adwin", "error", {"delta": 0.002}, cooldown_s=60), "fraud", "v7")
    values = errors(5000, 0.01, rng) + errors(5000, 0.2, rng)  # 100 s of samples
    reqs = feed(mon, values)
    assert len(reqs) == 1 and mon.state == "drift"
    req = reqs[0]
    assert req["model_version"] == "v7" and req["signal"] == "error" and req["severity"] == "warning"
    assert req["statistic"] > req["threshold"]  # the error rose above its reference
    assert 0.005 < req["threshold"] < 0.02
    assert req["window_start"] <= req["window_end"] and req["sample_count"] >= 4000
    Codec(schema_registry).encode("retrain_request", req)  # valid per the Avro schema
    # after the cooldown (60 s of event time) a new episode may fire again, with a new dedupe key
    later = feed(mon, errors(3000, 0.2, rng) + errors(6000, 0.6, rng), start_s=200)
    assert mon.state in ("ok", "drift")
    assert all(r["dedupe_key"] != req["dedupe_key"] for r in later)
