"""The batching benchmark's internals, on the real model and the real session, very briefly."""

from __future__ import annotations

from pathlib import Path

import orjson

from streaming.bench.batching import _bench


def test_tiny_run_reports_the_keys_and_batching_beats_none(tmp_path: Path) -> None:
    lines: list[str] = []
    result = _bench(steps=3, hold_s=0.4, phase_s=0.5, reps=3, all_static_step=True, out_dir=tmp_path,
                    say=lines.append, quick=True, grid=((16, 0.001),))
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
