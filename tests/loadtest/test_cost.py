"""Cost per event, the downward capacity search and the verdict: pure functions, no broker."""

from __future__ import annotations

from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from loadtest.runner import LoadResult, cpu_us_per_event, request_delta, requests_per_event, sustained_rate
from loadtest.session import capacity_search
from loadtest.share import join_stack
from loadtest.verdict import verdict_text
from streaming.observability.kafka_requests import window_delta
from streaming.settings import Settings


def _result(**kw: Any) -> LoadResult:
    h = HdrHistogram(1, 120_000_000, 3)
    for v in (5_000, 8_000, 12_000):
        h.record_value(v)
    base: dict[str, Any] = {"target_rate": 2000.0, "achieved_rate": 1990.0, "sent": 4000, "matched": 4000,
                            "missing": 0, "duplicates": 0, "generator_lag_max_ms": 2.0, "intended": h, "actual": h,
                            "stages_ms": {}}
    return LoadResult(**{**base, **kw})


def test_cpu_and_requests_per_event_in_the_summary() -> None:
    r = _result(cpu_s={"worker": 1.96, "broker": 0.8, "redis": 0.0},
                requests={"worker": {"produce": 400.0, "fetch": 1000.0}, "load_reader": {"produce": 0.0, "fetch": 800.0}},
                cpu_pct={"worker": 98.0, "broker": 40.0, "redis": 0.0})
    s = r.summary(50.0)
    assert s["cpu_us_per_event"] == {"worker": 490.0, "broker": 200.0, "redis": 0.0}  # 1.96 s / 4,000 events
    assert s["broker_requests_per_event"] == {"worker": {"produce": 0.1, "fetch": 0.25},
                                              "load_reader": {"produce": 0.0, "fetch": 0.2}}
    assert s["broker_requests"]["worker"] == {"produce": 400, "fetch": 1000}
    assert cpu_us_per_event({"worker": 1.0}, 0) == {} and requests_per_event({"w": {"fetch": 1}}, 0) == {}


def test_request_delta_between_two_scrapes() -> None:
    assert request_delta({"produce": 3, "fetch": 10}, {"produce": 5, "fetch": 70}) == {"produce": 2.0, "fetch": 60.0}
    assert request_delta({"produce": 3}, None) is None
    assert request_delta({"produce": 9, "fetch": 0}, {"produce": 1, "fetch": 5}) is None  # restarted: no figure


def test_window_delta_interpolates_and_never_extrapolates() -> None:
    samples = [(0.0, "a", {"produce": 0.0, "fetch": 0.0}), (1.0, "a", {"produce": 10.0, "fetch": 100.0})]
    assert window_delta(samples, 0.2, 0.7) == pytest.approx({"produce": 5.0, "fetch": 50.0})
    # a window past the last sample counts only up to it
    assert window_delta(samples, 0.5, 5.0) == pytest.approx({"produce": 5.0, "fetch": 50.0})


def test_sustained_rate_of_a_slow_but_steady_and_of_a_falling_behind_system() -> None:
    steady = [1_500_000 + 500 * i for i in range(2001)]  # 2,000/s arriving 0.5 s late for a 1 s window
    assert sustained_rate(steady, 1_000_000, 2_500_000) == 2000.0
    behind = [1_000_000 + 1000 * i for i in range(2000)]  # 1,000/s while 2,000/s were sent
    assert sustained_rate(behind, 1_000_000, 2_000_000) == 1000.0


def test_capacity_search_goes_down_when_the_first_step_fails() -> None:
    tried: list[float] = []

    def probe(rate: float) -> bool:
        tried.append(rate)
        return rate <= 180

    good, bad = capacity_search(probe, start_rate=1000, max_rate=40_000, factor=2, refine=1)
    assert tried == [1000, 500, 250, 125, 187.5]  # down by the factor until a pass, then one bisection
    assert (good, bad) == (125, 187.5)


def test_capacity_search_down_stops_at_the_floor() -> None:
    tried: list[float] = []
    good, bad = capacity_search(lambda r: tried.append(r) or False, start_rate=10, max_rate=100, factor=2)
    assert tried == [10, 5, 2.5, 1.25]  # 10/2**4 would be below 1 event/s
    assert (good, bad) == (0.0, 1.25)
    tried.clear()
    capacity_search(lambda r: tried.append(r) or False, start_rate=100, max_rate=100, factor=1.5, min_rate=50)
    assert tried == [100, 100 / 1.5]


def _summary(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "system": "worker", "slo_pass": False, "generator_kept_up": True, "target_rate": 2000.0,
        "achieved_rate": 1995.0, "sustained_rate": 1320.0, "missing": 812, "p99_ms": 1900.0, "slo_p99_ms": 50.0,
        "generator_lag_max_ms": 4.0,
        "stages_ms": {"broker_and_fetch": {"p50": 4.0, "p99": 20.0}, "features": {"p50": 1.0, "p99": 6.0},
                      "queue": {"p50": 150.0, "p99": 310.0}, "inference": {"p50": 2.0, "p99": 9.0},
                      "publish_and_read": {"p50": 5.0, "p99": 14.0}},
        "cpu_pct": {"broker": 41.0, "redis": 6.0, "worker": 98.0, "load_generator": 20.0, "load_reader": 9.0},
        "cpu_us_per_event": {"broker": 205.0, "redis": 30.0, "worker": 490.0, "load_generator": 100.0,
                             "load_reader": 45.0},
    }
    return {**base, **kw}


def test_verdict_of_a_system_that_fell_behind() -> None:
    text = verdict_text(_summary())
    assert text.startswith("FAIL: the worker fell behind: it scored 1,320 events/s of 2,000 offered (812 events "
                           "never came out); most of the time went to queue (p99 310 ms); "
                           "worker 98 % of a core (490 µs/event), broker 41 % (205 µs/event)")
    assert text.endswith("load_reader 9 % (45 µs/event)")


def test_verdict_of_latency_only_of_the_generator_and_of_a_pass() -> None:
    slow = verdict_text(_summary(sustained_rate=1990.0, missing=0, p99_ms=72.5))
    assert slow.startswith("FAIL: the worker kept up (scored 1,990 events/s of 2,000 offered) but its p99 was 72 ms, "
                           "over the SLO of 50 ms; most of the time went to queue")
    gen = verdict_text(_summary(generator_kept_up=False, achieved_rate=1500.0, generator_lag_max_ms=840.0))
    assert gen.startswith("FAIL: the load generator fell behind: it sent 1,500 events/s of 2,000 planned (up to "
                          "840 ms late)")
    assert "; load_generator 20 % of a core (100 µs/event)" in gen
    ok = verdict_text(_summary(slo_pass=True, sustained_rate=2000.0, missing=0, p99_ms=21.0))
    assert ok.startswith("PASS: the worker scored 2,000 events/s of 2,000 offered, p99 21 ms within the SLO of 50 ms")


def test_verdict_of_a_forwarder_has_no_stage() -> None:
    text = verdict_text(_summary(system="faust_forward", stages_ms={}, cpu_pct={"faust_forward": 100.0},
                                 cpu_us_per_event={"faust_forward": 250.0}))
    assert text == ("FAIL: the Faust forwarder fell behind: it forwarded 1,320 events/s of 2,000 offered (812 events "
                    "never came out); faust_forward 100 % of a core (250 µs/event)")


class _Group:
    def __init__(self, inside: list[int]) -> None:
        self.inside = inside
        self.added: list[int] = []

    def pids(self) -> list[int]:
        return self.inside

    def add(self, pid: int) -> None:
        self.added.append(pid)


def test_join_stack_adds_our_running_broker_and_redis_never_an_external_one(tmp_path: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from streaming.infra import stack

    monkeypatch.setattr(stack.Service, "running", property(lambda self: True))
    me = os.getpid()
    stack.StackState({"broker": stack.Service("broker", "127.0.0.1:1", 1, me),
                      "redis": stack.Service("redis", "redis://127.0.0.1:6379/0", 6379, None)}).save(tmp_path)
    settings = Settings.from_env({}, run_dir=str(tmp_path), broker_url="", redis_url="")
    group = _Group([])
    assert join_stack(group, settings) == [me] and group.added == [me]  # the system Redis (no pid) stays out
    assert join_stack(_Group([me]), settings) == []  # started inside the group already
    assert join_stack(None, settings) == []
    assert join_stack(_Group([]), Settings.from_env({}, run_dir=str(tmp_path), broker_url="h:9092")) == []
