"""The monitor state machine and the group's rules: one request per drift."""

from __future__ import annotations

import random

from streaming.online.detectors import Level
from streaming.online.monitor import Monitor, MonitorGroup
from streaming.pipeline.spec import DriftSpec, MonitorSpec

S = 1_000_000


def errors(n: int, rate: float, rng: random.Random) -> list[float]:
    return [1.0 if rng.random() < rate else 0.0 for _ in range(n)]


def feed(group: MonitorGroup, values: list[float], start_s: float = 0.0, step_s: float = 0.01) -> list:
    out = []
    for i, v in enumerate(values):
        req = group.observe("error", v, int((start_s + i * step_s) * S), {"0": i})
        if req is not None:
            out.append(req)
    return out


class Scripted:
    """A detector double that says the levels it is given (unit tests of the state machine)."""

    kind = "scripted"

    def __init__(self, levels: list[Level]) -> None:
        self.levels = list(levels)
        self.resets = 0

    def update(self, value: float) -> Level:
        return self.levels.pop(0)

    statistic = 0.0
    threshold = 1.0

    def reset(self) -> None:
        self.resets += 1


def scripted(levels: list[Level], cooldown_s: float = 1.0, recover: int = 3) -> Monitor:
    mon = Monitor(MonitorSpec("m", "adwin", "error", cooldown_s=cooldown_s, recover=recover))
    mon.detector = Scripted(levels)  # type: ignore[assignment]
    return mon


def test_ok_warning_drift_and_back_with_hysteresis() -> None:
    ok, W, D = Level.OK, Level.WARNING, Level.DRIFT
    script = [ok, W, D] + [ok] * 9
    for recover, back in ((1, ["drift"] * 2 + ["ok"] * 7),  # the 1 s cooldown holds it in DRIFT
                          (5, ["drift"] * 4 + ["ok"] * 5)):  # then 5 samples at OK in a row
        mon = scripted(script, recover=recover)
        states, fired = [], []
        for i in range(12):
            fired.append(mon.update(0.0, i * 400_000))  # 0.4 s apart: the cooldown ends at the 6th sample
            states.append(mon.state)
        assert states[:3] == ["ok", "warning", "drift"]
        assert fired == [False, False, True] + [False] * 9  # one firing for the episode
        assert states[3:] == back, recover
        assert mon.detector.resets == 1  # type: ignore[attr-defined]


def test_a_warning_that_passes_returns_to_ok_after_recover_samples() -> None:
    ok, W = Level.OK, Level.WARNING
    mon = scripted([W, ok, ok, W, ok, ok, ok])
    states = [mon.update(0.0, i) or mon.state for i in range(7)]
    assert states == ["warning", "warning", "warning", "warning", "warning", "warning", "ok"]


def test_no_drift_no_request() -> None:
    group = MonitorGroup([MonitorSpec("a", "adwin", "error", {"delta": 0.002})], DriftSpec(), "fraud", "v1")
    assert feed(group, errors(20_000, 0.02, random.Random(1))) == []
    assert group.monitors[0].state == "ok"


def test_a_shift_gives_one_request_then_the_model_cools_down() -> None:
    rng = random.Random(2)
    specs = [MonitorSpec("err", "adwin", "error", {"delta": 0.002}, cooldown_s=10, recover=50)]
    group = MonitorGroup(specs, DriftSpec(cooldown_s=600), "fraud", "v7")
    reqs = feed(group, errors(5000, 0.01, rng) + errors(5000, 0.3, rng) + errors(5000, 0.01, rng)
                + errors(5000, 0.3, rng))  # two shifts, 200 s apart in event time: within the model's cooldown
    assert len(reqs) == 1 and group.suppressed >= 1
    req = reqs[0]
    assert req.model_version == "v7" and req.signal == "error" and req.monitor == "err"
    assert req.dedupe_key.startswith("fraud:v7:") and req.window_start <= req.window_end
    assert 50 * S <= req.window_end <= 60 * S  # the shift is at 50 s: detected within 10 s (1,000 samples)
    assert req.statistic > req.threshold  # the error rose above what it was while OK


def test_k_of_n_needs_two_monitors_to_agree() -> None:
    rng = random.Random(4)
    specs = [MonitorSpec("adwin", "adwin", "error", {"delta": 0.002}), MonitorSpec("ddm", "ddm", "error")]
    alone = MonitorGroup(specs[:1], DriftSpec(require=1), "fraud", "v1")
    both = MonitorGroup(specs, DriftSpec(require=2, agree_within_s=60), "fraud", "v1")
    values = errors(4000, 0.02, rng) + errors(4000, 0.4, rng)
    assert len(feed(alone, values)) == 1
    [req] = feed(both, values)
    assert set(req.monitor.split("+")) == {"adwin", "ddm"}


def test_label_free_monitors_without_a_reference_are_skipped() -> None:
    specs = [MonitorSpec("err", "adwin", "error"), MonitorSpec("psi", "psi", "score"),
             MonitorSpec("feat", "ks", "features")]
    group = MonitorGroup(specs, DriftSpec(), "fraud", "v1", reference=None)
    assert [m.spec.name for m in group.monitors] == ["err"] and group.skipped == ["psi", "feat"]
    assert group.signals == {"error"}


def test_a_batch_gives_the_states_and_requests_of_one_sample_at_a_time() -> None:
    import numpy as np

    from streaming.online.detectors import ReferenceSnapshot

    rng = np.random.default_rng(8)
    names = ["a", "b"]
    reference = ReferenceSnapshot.from_arrays(rng.normal(size=(5000, 2)), rng.beta(0.5, 5, 5000), names)
    specs = [MonitorSpec("psi", "psi", "score", {"window": 500, "threshold": 0.1}, cooldown_s=1, recover=600),
             MonitorSpec("feat", "ks", "features", {"window": 400, "alpha": 0.01, "features": ["b"]}, cooldown_s=1,
                         recover=500)]
    n = 6000
    scores = np.concatenate([rng.beta(0.5, 5, n // 2), rng.beta(2, 2, n // 2)])
    X = rng.normal(size=(n, 2))
    X[n // 3:, 1] += 1.0  # the feature moves first, then the score
    times = np.arange(n, dtype=np.int64) * 10_000
    one = MonitorGroup(specs, DriftSpec(cooldown_s=0), "m", "v1", reference=reference, names=names)
    batch = MonitorGroup(specs, DriftSpec(cooldown_s=0), "m", "v1", reference=reference, names=names)
    reqs_one, reqs_batch = [], []
    for i in range(n):
        for signal, value in (("score", float(scores[i])), ("features", X[i])):
            r = one.observe(signal, value, int(times[i]))
            if r is not None:
                reqs_one.append((r.monitor, r.window_end))
    for i in range(0, n, 256):
        for signal, values in (("score", scores[i:i + 256]), ("features", X[i:i + 256])):
            r = batch.observe_batch(signal, values, times[i:i + 256])
            if r is not None:
                reqs_batch.append((r.monitor, r.window_end))
    assert reqs_one == reqs_batch and len(reqs_one) >= 2
    assert [m.state for m in one.monitors] == [m.state for m in batch.monitors]
    assert [m.fired_at_us for m in one.monitors] == [m.fired_at_us for m in batch.monitors]
