"""The batching benchmark's internals, on the real model and the real session, very briefly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streaming.bench import batching as bb
from streaming.bench.batching import _bench


def test_tiny_run_reports_the_keys_and_batching_beats_none(tmp_path: Path) -> None:
    lines: list[str] = []
    result = _bench(steps=3, hold_s=0.4, phase_s=0.5, reps=3, all_static_step=True, out_dir=tmp_path,
                    say=lines.append, quick=True, grid=((16, 0.001),), confirm_moves=1, h2h_repeats=3)
    orjson.dumps(result)  # JSON-able as the CLI prints it (plain Python types, str keys)
    for key in ("slo_ms", "max_rate_at_slo", "best_static", "adaptive_over_best_static", "adaptive_over_none",
                "step_violation_seconds", "service_curve", "targets"):
        assert key in result
    rates = result["max_rate_at_slo"]
    assert set(rates) == {"none", "static-16-1ms", "adaptive"}
    assert result["best_static"] == "static-16-1ms"
    assert set(result["step_violation_seconds"]) == {"adaptive", "static-16-1ms"}
    # one row at a time saturates near 1 / (batch-1 time); the probes for `none` cannot go above that,
    # while the first or second probe for a batching policy (~2,000 or ~1,000 rows/s) passes with batches of a few rows
    assert rates["none"] <= 1.05 * result["service_curve"]["1"]["rows_per_s"]
    assert rates["adaptive"] > rates["none"]
    assert all(isinstance(v, bool) or v is None for v in result["targets"].values())
    assert all(Path(p).is_file() and Path(p).stat().st_size > 10_000 for p in result["plots"])
    assert any(line.startswith("capacity") for line in lines)
    confirmed = result["confirm_points"]
    for name, rate in rates.items():  # the capacity is the highest rate its confirmation passed
        assert rate == max((r for r, _, ok in confirmed[name] if ok), default=0.0)
    # adaptive against the best static, measured again on other sequences: the ratio the target reads
    h2h = result["head_to_head"]
    assert h2h["policies"] == ["adaptive", "static-16-1ms"]
    for name, rate in h2h["max_rate_at_slo"].items():
        assert rate == max((r for r, _, ok in h2h["points"][name] if ok), default=0.0)
    a, s = h2h["max_rate_at_slo"]["adaptive"], h2h["max_rate_at_slo"]["static-16-1ms"]
    assert result["adaptive_over_best_static"] == (round(a / s, 3) if s else None)
    assert result["targets"]["adaptive_max_rate>=best_static"] == (a >= s)


def _fake_open_loop(units: list[np.ndarray], seen: list[int]):
    """An ``_open_loop`` double: the "policy" is its capacity; a probe passes below it (its nominal rate)."""
    def run(ex, policy, arrivals, X, *, max_late=None, max_age_s=5.0):
        j = next(j for j, u in enumerate(units) if np.isclose(arrivals[1] / arrivals[0], u[1] / u[0]))
        rate = units[j][0] / arrivals[0]
        seen.append(j)
        return bb._Run(arrivals, np.full(len(arrivals), 0.010 if rate < policy else 0.200))
    return run


def test_confirmation_walks_down_from_a_lucky_result_and_up_from_a_modest_one(monkeypatch) -> None:
    hold = 20.0
    seen: list[int] = []
    units = [np.cumsum(np.random.default_rng(101 + j).exponential(1.0, 60_000)) for j in range(3)]
    monkeypatch.setattr(bb, "_open_loop", _fake_open_loop(units, seen))
    factories = {"lucky": lambda: 1_000.0, "modest": lambda: 1_000.0, "doomed": lambda: 0.0}
    anchor = 2_000.0
    best, points = bb._confirm(None, factories, None, starts={"lucky": 1_150.0, "modest": 900.0, "doomed": 1_000.0},
                               anchors=dict.fromkeys(factories, anchor), repeats=3, max_moves=4, hold_s=hold,
                               units=units, say=lambda m: None)
    grid = lambda k: anchor * 1.025 ** k  # noqa: E731
    k_lucky, k_modest = (round(np.log(s / anchor) / np.log(1.025)) for s in (1_150.0, 900.0))
    below = max(grid(k) for k in range(-40, 1) if grid(k) < 1_000.0)
    # lucky: from the grid rate nearest 1,150 down until a rate passes
    assert best["lucky"] == pytest.approx(below, rel=1e-6)
    assert [r for r, _, _ in points["lucky"]] == pytest.approx([grid(k) for k in range(k_lucky, k_lucky - len(points["lucky"]), -1)], abs=0.1)
    assert [ok for _, _, ok in points["lucky"]] == [False] * (len(points["lucky"]) - 1) + [True]
    # modest: up while it passes, at most four moves (five probes)
    assert best["modest"] == pytest.approx(min(below, grid(k_modest + 4)), rel=1e-6)
    assert bb._capped(points) == (["modest"] if grid(k_modest + 4) < 1_000.0 else [])
    assert len(points["modest"]) <= 5 and all(ok for _, _, ok in points["modest"][:-1])
    # doomed: twelve moves down (3 x 4), nothing passes: 0, and the walk stops
    assert best["doomed"] == 0.0 and len(points["doomed"]) == 13
    # every rate decided on a majority of two, from the same two arrival sequences for every policy (paired)
    assert all(len(p99s) == 2 for pts in points.values() for _, p99s, _ in pts)
    assert set(seen) == {0, 1}


@pytest.mark.parametrize("start", [1_020.0, 1_250.0, 700.0])
def test_head_to_head_probes_both_at_every_rate_and_finds_each_ones_highest(monkeypatch, start: float) -> None:
    seen: list[int] = []
    units = [np.cumsum(np.random.default_rng(201 + j).exponential(1.0, 60_000)) for j in range(5)]
    monkeypatch.setattr(bb, "_open_loop", _fake_open_loop(units, seen))
    anchor = 2_000.0
    best, points = bb._head_to_head(None, {"adaptive": lambda: 1_100.0, "static": lambda: 1_000.0}, None, start=start,
                                    anchor=anchor, repeats=5, max_moves=4, hold_s=20.0, units=units, say=lambda m: None)
    grid = [anchor * 1.025 ** k for k in range(-60, 1)]
    # from 1,020: up past 1,100 for adaptive, then down below 1,000 for static; from 1,250: down until both
    # passed; from 700 (four moves up reach ~773): neither reaches its limit
    expect = {"adaptive": max(g for g in grid if g < 1_100.0), "static": max(g for g in grid if g < 1_000.0)}
    if start == 700.0:
        top = [g for g in grid if g >= 700 / 1.0125][4]
        expect = {"adaptive": top, "static": top}
    assert best == pytest.approx(expect, rel=1e-6)
    assert bb._capped(points) == (["adaptive", "static"] if start == 700.0 else [])  # 700: out of moves on passes
    assert [r for r, _, _ in points["adaptive"]] == [r for r, _, _ in points["static"]]  # the same rates
    assert all(len(p99s) == 3 for pts in points.values() for _, p99s, _ in pts)  # majority of five decided at 3
    assert set(seen) == {0, 1, 2}
