"""Batch policies on a fake clock with a synthetic service time (no ONNX, no threads)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.inference.batching import (
    AdaptivePolicy,
    BatchPolicy,
    Dispatch,
    DispatchReason,
    NoBatching,
    QueueState,
    ServiceModel,
    StaticPolicy,
    Wait,
    bucket_for,
    default_buckets,
    make_policy,
    pad,
)

BUCKETS = default_buckets(256)
SLO = 0.050


def linear_cost(bucket: int) -> float:
    """2 ms per batch + 0.25 ms per (padded) row: 500 rows/s one by one, ~3,900 rows/s at 256."""
    return 0.002 + 0.00025 * bucket


def seeded(buckets: tuple[int, ...] = BUCKETS, cost: Callable[[int], float] = linear_cost) -> ServiceModel:
    model = ServiceModel(buckets)
    for _ in range(10):
        for b in buckets:
            model.observe(b, cost(b))
    return model


def poisson(rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5 + 20)))
    return t[t < seconds]


def simulate(policy: BatchPolicy, arrivals: np.ndarray, cost: Callable[[int], float] = linear_cost
             ) -> tuple[np.ndarray, np.ndarray, list[Dispatch]]:
    """Serve ``arrivals`` with one executor on a fake clock, asking the policy as a batcher would.

    Returns each row's latency, each row's completion time, and the dispatches.
    """
    n = len(arrivals)
    latency, completion = np.full(n, np.inf), np.full(n, np.inf)
    dispatches: list[Dispatch] = []
    t, head = 0.0, 0
    while head < n:
        tail = int(np.searchsorted(arrivals, t, "right"))
        if tail == head:
            t = float(arrivals[head])
            continue
        action = policy.next_action(t, QueueState(tail - head, float(arrivals[head]), tail))
        if isinstance(action, Wait):
            nxt = float(arrivals[tail]) if tail < n else math.inf
            t_next = min(action.until_s, nxt)
            assert t_next > t or t_next == nxt, "a Wait must move time forward"
            t = max(t_next, t + 1e-9)
            continue
        assert 1 <= action.rows <= tail - head
        assert action.queue_wait_s == pytest.approx(t - arrivals[head])
        done = t + cost(action.bucket)
        latency[head:head + action.rows] = done - arrivals[head:head + action.rows]
        completion[head:head + action.rows] = done
        policy.observe(action, done - t, list(latency[head:head + action.rows]))
        dispatches.append(action)
        head += action.rows
        t = done
    return latency, completion, dispatches


def prime_rate(policy: AdaptivePolicy, rate: float, until: float) -> int:
    """Feed the policy's arrival-rate estimate ``rate`` rows/s up to ``until`` (queue kept empty)."""
    total = 0
    for k in range(int(rate * until) + 1):
        total = k
        policy.next_action(k / rate, QueueState(0, 0.0, total))
    return total


# -- none ----------------------------------------------------------------------------
def test_none_always_dispatches_one_row() -> None:
    policy = NoBatching(service=seeded((1,)))
    assert policy.next_action(1.0, QueueState(0, 0.0, 0)) == Wait()
    _, _, ds = simulate(policy, poisson(300, 3.0))
    assert len(ds) > 700
    assert all(d.rows == 1 and d.bucket == 1 and d.reason is DispatchReason.SINGLE for d in ds)


# -- static --------------------------------------------------------------------------
def test_static_dispatches_full_batches_at_once() -> None:
    policy = StaticPolicy(64, 0.010, buckets=BUCKETS)
    d = policy.next_action(1.0, QueueState(100, 0.999, 100))
    assert isinstance(d, Dispatch)
    assert (d.rows, d.bucket, d.reason) == (64, 64, DispatchReason.FULL)


def test_static_waits_for_the_oldest_row_then_sends_what_is_queued() -> None:
    policy = StaticPolicy(64, 0.010, buckets=BUCKETS)
    assert policy.next_action(1.000, QueueState(5, 0.998, 5)) == Wait(until_s=pytest.approx(1.008))
    d = policy.next_action(1.008, QueueState(5, 0.998, 5))
    assert isinstance(d, Dispatch)
    assert (d.rows, d.bucket, d.reason) == (5, 8, DispatchReason.MAX_WAIT)


def test_static_in_a_run_sends_after_max_wait_at_low_load_and_full_batches_at_high_load() -> None:
    _, _, low = simulate(StaticPolicy(64, 0.005, buckets=BUCKETS, service=seeded()), poisson(100, 3.0))
    assert all(d.reason is DispatchReason.MAX_WAIT for d in low)
    assert all(d.queue_wait_s == pytest.approx(0.005) for d in low)  # the executor is always free at 100/s
    _, _, high = simulate(StaticPolicy(64, 0.005, buckets=BUCKETS, service=seeded()), poisson(4_000, 3.0))  # above 64-row throughput
    full = [d for d in high if d.reason is DispatchReason.FULL]
    assert len(full) > len(high) / 2
    assert all(d.rows == 64 for d in full)
    assert max(d.rows for d in high) == 64


# -- adaptive ------------------------------------------------------------------------
def test_adaptive_idle_row_goes_at_once() -> None:
    policy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    d = policy.next_action(0.0, QueueState(1, 0.0, 1))
    assert isinstance(d, Dispatch)
    assert (d.rows, d.reason) == (1, DispatchReason.KEEPS_UP)


def test_adaptive_waits_then_dispatches_at_the_deadline_its_model_gives() -> None:
    policy = AdaptivePolicy(0.010, 256, BUCKETS, service=seeded(), guard_s=0.001)
    total = prime_rate(policy, 3_000, 1.0)
    now = 1.0
    # 8 rows queued: not enough to keep up with 3,000/s; the deadline (with one more row, bucket 16) is
    # oldest + 10 ms - p99(16) - guard = oldest + 10 - 6 - 1 ms
    early = policy.next_action(now, QueueState(8, now - 0.002, total + 8))
    assert isinstance(early, Wait)
    assert early.until_s == pytest.approx(now - 0.002 + 0.003)
    late = policy.next_action(now + 0.0015, QueueState(8, now - 0.002, total + 8))
    assert isinstance(late, Dispatch)
    assert late.reason is DispatchReason.DEADLINE and late.rows == 8
    assert late.predicted_s == pytest.approx(linear_cost(8))
    assert late.predicted_latency_s <= policy.budget_s


def test_adaptive_meets_the_slo_below_capacity_with_an_exact_model() -> None:
    for rate in (200, 1_000, 2_500):
        policy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
        latency, _, ds = simulate(policy, poisson(rate, 5.0, seed=rate))
        assert np.isfinite(latency).all()
        assert float(np.max(latency)) <= SLO, rate
        for d in ds:
            assert d.actual_s == pytest.approx(linear_cost(d.bucket))
            if d.reason is DispatchReason.DEADLINE:
                assert d.predicted_latency_s <= policy.budget_s + 1e-9


def test_adaptive_grows_batches_under_load_and_stays_within_max_rows() -> None:
    mean_rows = {}
    for rate in (100, 1_000, 3_000):
        _, _, ds = simulate(AdaptivePolicy(SLO, 128, BUCKETS, service=seeded()), poisson(rate, 4.0, seed=1))
        mean_rows[rate] = float(np.mean([d.rows for d in ds]))
        assert max(d.rows for d in ds) <= 128
    assert mean_rows[100] < 1.5
    assert mean_rows[100] < mean_rows[1_000] < mean_rows[3_000]


def test_adaptive_under_overload_serves_every_row_at_max_rows() -> None:
    # 6,000 rows/s against at most ~3,900 rows/s: nothing is dropped, batches go to max_rows
    latency, _, ds = simulate(AdaptivePolicy(SLO, 256, BUCKETS, service=seeded()), poisson(6_000, 2.0))
    assert np.isfinite(latency).all()
    reasons = {d.reason for d in ds}
    assert DispatchReason.OVERLOAD in reasons
    assert max(d.rows for d in ds) == 256
    assert sum(d.rows for d in ds) == len(latency)


def test_dispatch_is_fifo_and_records_reason_wait_and_prediction() -> None:
    arrivals = np.concatenate([poisson(300, 2.0, seed=2), 2.0 + poisson(3_400, 2.0, seed=3)])
    latency, completion, ds = simulate(AdaptivePolicy(SLO, 256, BUCKETS, service=seeded()), arrivals)
    assert np.all(np.diff(completion) >= 0)  # rows complete in arrival order
    reasons = {d.reason for d in ds}
    assert DispatchReason.KEEPS_UP in reasons  # light load: a row goes when the batch keeps up
    assert reasons & {DispatchReason.FULL, DispatchReason.DEADLINE}  # heavy load: batches fill or hit the deadline
    for d in ds:
        assert d.actual_s is not None and d.actual_latency_s is not None
        assert d.queue_wait_s >= 0 and d.predicted_s > 0
    assert float(np.max(latency)) < 1.0


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0, 20_000), rows=st.integers(0, 5_000), age=st.floats(0, 1.0), max_rows=st.sampled_from([1, 7, 64, 256]))
def test_adaptive_never_exceeds_max_rows_or_the_queue(rate: float, rows: int, age: float, max_rows: int) -> None:
    policy = AdaptivePolicy(SLO, max_rows, BUCKETS, service=seeded())
    total = prime_rate(policy, rate, 0.2) if rate >= 10 else 0
    action = policy.next_action(0.2, QueueState(rows, 0.2 - age, total + rows))
    if rows == 0:
        assert isinstance(action, Wait)
    elif isinstance(action, Dispatch):
        assert 1 <= action.rows <= min(rows, max_rows)
        assert action.bucket == bucket_for(action.rows, BUCKETS)
    else:
        assert action.until_s > 0.2


def test_adaptive_feedback_shrinks_the_budget_when_p99_misses_unless_overloaded() -> None:
    policy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded(), feedback_interval_s=0.5)
    for k in range(6):
        d = policy.next_action(k * 0.5, QueueState(8, k * 0.5, 8 * (k + 1)))
        assert isinstance(d, Dispatch)
        d.reason = DispatchReason.OVERLOAD
        policy.observe(d, 0.01, [0.2] * 30)
    assert policy.budget_s == SLO  # overloaded: the SLO was out of reach, no cut
    for k in range(6, 12):
        d = policy.next_action(k * 0.5, QueueState(8, k * 0.5, 8 * (k + 1)))
        assert isinstance(d, Dispatch)
        policy.observe(d, 0.01, [0.2] * 30)
    assert policy.budget_s <= 0.4 * SLO

    # the cut moves the deadline earlier. At 3,400 rows/s the policy waits for full 64-row batches (the most
    # rows per second within the SLO); 40 rows whose oldest waited 10 ms would wait under the full SLO
    # (deadline at 50 - p99(48 rows) - 1 = 35 ms) but go now under the cut budget (15 - 14 - 1 = 0 ms).
    fresh = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    corrected = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    corrected.correction.factor = policy.correction.factor
    fresh.rate.rate = corrected.rate.rate = 3_400.0
    state = QueueState(40, 0.990, 1_000)
    assert fresh.next_action(1.0, state) == Wait(until_s=pytest.approx(0.990 + 0.035))
    d = corrected.next_action(1.0, state)
    assert isinstance(d, Dispatch) and d.reason is DispatchReason.DEADLINE and d.rows == 40


def test_adaptive_is_greedy_at_light_load_and_waits_for_efficient_batches_near_capacity() -> None:
    light = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    light.rate.rate = 1_000.0
    d = light.next_action(1.0, QueueState(10, 0.995, 1_000))
    assert isinstance(d, Dispatch) and (d.rows, d.reason) == (10, DispatchReason.KEEPS_UP)
    near = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    near.rate.rate = 3_400.0  # above 90 % of what any batch within the SLO serves, below 64-row batches' 3,555/s
    assert isinstance(near.next_action(1.0, QueueState(50, 0.9855, 1_000)), Wait)
    d = near.next_action(1.0041, QueueState(64, 0.9855, 1_014))
    assert isinstance(d, Dispatch) and (d.rows, d.reason) == (64, DispatchReason.FULL)


def test_adaptive_near_the_rate_sends_a_whole_bucket_not_a_padded_one() -> None:
    """A greedy batch that alone does not serve the rate leaves the rows that would only pad a bucket."""
    flat = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded(cost=lambda b: 0.0003 + 0.000001 * b))
    flat.rate.rate = 370_000.0  # 200 rows padded to 256 serve 360,000 rows/s, 192 whole rows 390,000
    d = flat.next_action(1.0, QueueState(200, 0.9996, 1_000))
    assert isinstance(d, Dispatch) and (d.rows, d.bucket, d.reason) == (192, 192, DispatchReason.KEEPS_UP)
    busy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded(cost=lambda b: 0.0003 + 0.000001 * b))
    busy.rate.rate = 400_000.0  # 87 % of what 256 serve: neither 200 padded (360,000) nor 192 (390,000) serve it
    assert isinstance(busy.next_action(1.0, QueueState(200, 0.9995, 1_000)), Wait)
    d = busy.next_action(1.0001, QueueState(256, 0.9995, 1_056))
    assert isinstance(d, Dispatch) and (d.rows, d.bucket) == (256, 256)
    calm = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded(cost=lambda b: 0.0003 + 0.000001 * b))
    calm.rate.rate = 20_000.0  # the padded batch serves the rate: no reason to hold rows back
    d = calm.next_action(1.0, QueueState(10, 0.9995, 1_000))
    assert isinstance(d, Dispatch) and d.rows == 10


def test_adaptive_takes_a_few_per_cent_over_capacity_as_noise_until_the_queue_shows_it() -> None:
    def policy_at(rate: float, **guard: float) -> AdaptivePolicy:
        p = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded(), **guard)  # fit 64 rows: 3,555 rows/s
        p.rate.rate = rate
        return p

    d = policy_at(3_650).next_action(1.0, QueueState(64, 0.99, 1_000))  # 2.7 % over, one batch queued
    assert isinstance(d, Dispatch) and (d.rows, d.reason) == (64, DispatchReason.FULL)
    d = policy_at(3_650).next_action(1.0, QueueState(130, 0.98, 1_000))  # two batches queued: it is real
    assert isinstance(d, Dispatch) and (d.rows, d.reason) == (96, DispatchReason.OVERLOAD)
    assert isinstance(policy_at(4_500).next_action(1.0, QueueState(64, 0.99, 1_000)), Wait)  # 27 % over: 128
    # the guard's two constants: no margin, or a queue of one batch, and the same estimates are overload
    d = policy_at(3_650, overload_margin=0.0).next_action(1.0, QueueState(64, 0.99, 1_000))
    assert isinstance(d, Wait)  # waits for the 96 rows that serve 3,650/s
    d = policy_at(3_650, overload_queue_batches=1.0).next_action(1.0, QueueState(96, 0.98, 1_000))
    assert isinstance(d, Dispatch) and (d.rows, d.reason) == (96, DispatchReason.OVERLOAD)
    d = policy_at(3_650).next_action(1.0, QueueState(96, 0.98, 1_000))  # the default: still noise at 96 queued
    assert isinstance(d, Dispatch) and (d.rows, d.reason) == (64, DispatchReason.FULL)
    with pytest.raises(ValueError, match="overload_margin"):
        AdaptivePolicy(SLO, 256, BUCKETS, overload_margin=-0.1)


def test_adaptive_counts_the_per_dispatch_overhead_in_throughput() -> None:
    policy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    before = policy.rows_per_s(16)
    t = 1.0
    for _ in range(50):  # back to back: each dispatch comes 1 ms after the last batch completed
        d = policy.next_action(t, QueueState(40, t - 0.002, 1_000))
        assert isinstance(d, Dispatch)
        policy.observe(d, linear_cost(d.bucket))
        t = d.at_s + linear_cost(d.bucket) + 0.001
    assert policy.overhead.seconds == pytest.approx(0.001, rel=1e-6)
    assert policy.rows_per_s(16) == pytest.approx(16 / (linear_cost(16) + 0.001), rel=1e-3)
    assert policy.rows_per_s(16) < before
    idle_after = policy.overhead.samples
    d = policy.next_action(t + 1.0, QueueState(1, t + 0.999, 1_001))  # the row came after the completion
    assert isinstance(d, Dispatch) and policy.overhead.samples == idle_after


def test_service_model_follows_the_machine_in_buckets_it_has_not_run_lately() -> None:
    model = seeded(cost=linear_cost)
    for _ in range(200):  # the machine gets 20 % slower; only bucket 64 runs
        model.observe(64, 1.2 * linear_cost(64))
    assert model.mean(64) == pytest.approx(1.2 * linear_cost(64), rel=0.01)
    assert model.mean(32) == pytest.approx(1.2 * linear_cost(32), rel=0.02)  # not run since the slowdown
    assert model.p99(32) >= model.mean(32)
    steady = ServiceModel(BUCKETS, speed_alpha=0.0)
    for _ in range(10):
        for b in BUCKETS:
            steady.observe(b, linear_cost(b))
    for _ in range(200):
        steady.observe(64, 1.2 * linear_cost(64))
    assert steady.mean(32) == pytest.approx(linear_cost(32))  # without the index it keeps the old timing


def test_only_back_to_back_batches_move_the_speed_index() -> None:
    """A batch after idle time runs slower (a cold core), which says nothing about the machine under load."""
    model = seeded(cost=linear_cost)
    for _ in range(200):
        model.observe(1, 1.2 * linear_cost(1), drift=False)
    assert model.speed == 1.0 and model.mean(64) == pytest.approx(linear_cost(64))
    assert model.mean(1) == pytest.approx(1.2 * linear_cost(1), rel=0.01)  # its own estimate still learns
    for _ in range(50):  # back to back again at the old speed: the reference was not moved by the idle samples
        model.observe(1, linear_cost(1))
    assert model.speed == pytest.approx(1.0, abs=0.01)

    def slow_batches(back_to_back: bool) -> AdaptivePolicy:
        policy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
        t = 1.0
        for i in range(100):  # one row each, 20 % slower than seeded; arriving before or after the completion
            arrived = t - 0.001 if back_to_back else t + 0.004
            d = policy.next_action(max(t, arrived), QueueState(1, arrived, 1_000))
            assert isinstance(d, Dispatch)
            assert d.back_to_back is (back_to_back and i > 0)  # recorded on the dispatch (the first follows nothing)
            policy.observe(d, 1.2 * linear_cost(d.bucket))
            t = d.at_s + 1.2 * linear_cost(d.bucket)
        return policy

    assert slow_batches(back_to_back=False).service.speed == 1.0  # light load: the index stays
    busy = slow_batches(back_to_back=True)
    assert busy.service.speed > 1.15  # under load it follows (1.2 over the seeded reference)
    assert busy.service.mean(64) > 1.15 * linear_cost(64)


def test_service_models_are_per_provider() -> None:
    policy = AdaptivePolicy(SLO, 256, BUCKETS, service=seeded())
    cpu_p99 = policy.service.p99(64)
    policy.set_provider("cuda")
    assert policy.provider == "cuda" and policy.service.samples(64) == 0
    policy.service.observe(64, 0.0001)
    policy.set_provider("cpu")
    assert policy.service.p99(64) == cpu_p99


def test_make_policy_by_name() -> None:
    assert isinstance(make_policy("none", slo_s=SLO, max_rows=64), NoBatching)
    assert isinstance(make_policy("static", slo_s=SLO, max_rows=64), StaticPolicy)
    assert isinstance(make_policy("adaptive", slo_s=SLO, max_rows=64), AdaptivePolicy)
    with pytest.raises(ValueError, match="unknown batch policy"):
        make_policy("greedy", slo_s=SLO, max_rows=64)


# -- service model -------------------------------------------------------------------
def test_service_model_converges_to_a_linear_cost_and_p99_is_above_the_mean() -> None:
    rng = np.random.default_rng(5)
    model = ServiceModel(BUCKETS)
    observed = (1, 4, 16, 64, 256)
    for _ in range(400):
        for b in observed:
            model.observe(b, (0.001 + 0.0002 * b) * float(rng.lognormal(0.0, 0.05)))
    assert model.fixed_s == pytest.approx(0.001, rel=0.15)
    assert model.per_row_s == pytest.approx(0.0002, rel=0.05)
    for b in observed:
        true_mean = (0.001 + 0.0002 * b) * math.exp(0.05**2 / 2)
        assert model.mean(b) == pytest.approx(true_mean, rel=0.05)
        assert model.mean(b) < model.p99(b) < model.mean(b) * 1.35
    assert model.mean(32) == pytest.approx(0.001 + 0.0002 * 32, rel=0.08)  # never observed: from the line
    assert model.p99(32) > model.mean(32)


def test_service_model_p99_follows_a_slow_tail() -> None:
    model = ServiceModel((1, 2), window=200)
    for k in range(1_000):
        model.observe(2, 0.010 if k % 25 else 0.030)  # 4 % of batches take 3x: the p99 is 30 ms
    assert model.mean(2) < 0.012
    assert model.p99(2) == pytest.approx(0.030)


# -- buckets -------------------------------------------------------------------------
@given(st.integers(1, 256))
def test_bucket_for_is_the_smallest_bucket_that_holds_the_rows(rows: int) -> None:
    b = bucket_for(rows, BUCKETS)
    assert b >= rows and b in BUCKETS
    assert all(x < rows for x in BUCKETS if x < b)
    assert pad(np.ones((rows, 3), dtype=np.float32), b).shape == (b, 3)
