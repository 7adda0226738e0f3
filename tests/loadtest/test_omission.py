"""The harness proves itself: a known stall in a stub system is seen from the intended send time, hidden from the actual one.

The stub is a closed-loop client in front of a system that answers in 1 ms, except
once, when it stalls for 500 ms. A closed-loop client cannot send while it waits,
so the events scheduled during the stall go out late, and each of them, timed
from when it was *actually* sent, looks fast: coordinated omission. The load
test's analysis (the same code a real run uses) must show the stall in the
histogram kept from the *intended* send time.
"""

from __future__ import annotations

from loadtest.reader import ReadResult
from loadtest.runner import _analyse

RATE = 1000  # events/s
N = 5000  # 5 s of schedule
SERVICE_US = 1_000
STALL_AT, STALL_US = 2000, 500_000


def _stub_run() -> tuple[list[tuple[int, bytes, bytes, str]], dict[str, int], ReadResult]:
    plan, actual, read = [], {}, ReadResult()
    free_at = 0  # when the closed-loop client may send again
    for i in range(N):
        intended = i * 1_000_000 // RATE
        eid = f"e{i}"
        sent = max(intended, free_at)
        done = sent + (STALL_US if i == STALL_AT else SERVICE_US)
        free_at = done
        plan.append((intended, b"k", b"v", eid))
        actual[eid] = sent
        read.first[eid] = (done, None)
    return plan, actual, read


def test_the_corrected_histogram_sees_the_stall_the_uncorrected_one_hides() -> None:
    plan, actual, read = _stub_run()
    res = _analyse(plan, actual, read, RATE, plan[0][0], max(actual.values()), lag_max=STALL_US / 1000)
    corrected = res.percentiles(res.intended)
    uncorrected = res.percentiles(res.actual)
    assert res.missing == 0 and res.matched == N
    # ~500 events were scheduled during the stall and waited for it: more than 1% of the run
    assert corrected["p99_ms"] >= 400, corrected
    assert corrected["max_ms"] >= 499, corrected
    # timed from the actual send, only the stalled request itself is slow: the p99 shows nothing
    assert uncorrected["p99_ms"] <= 2, uncorrected
    assert uncorrected["max_ms"] >= 499  # the one stalled request
    # the verdict follows the corrected histogram: a 50 ms SLO fails
    assert res.summary(50.0)["slo_pass"] is False
    assert res.summary(50.0)["actual_p99_ms"] <= 2


def test_without_a_stall_both_histograms_agree() -> None:
    plan, actual, read = _stub_run()
    for intended, *_rest, eid in plan:  # the same run, the stall removed
        actual[eid] = intended
        read.first[eid] = (intended + SERVICE_US, None)
    res = _analyse(plan, actual, read, RATE, plan[0][0], max(actual.values()), lag_max=0.0)
    assert res.percentiles(res.intended)["p99_ms"] == res.percentiles(res.actual)["p99_ms"] <= 1.1
    assert res.summary(50.0)["slo_pass"] is True
