"""``streaming bench pipeline``: the capacity of five systems on the same broker, Redis and machine, in one run.

Capacity, as ``streaming loadtest capacity`` measures it (the same :class:`loadtest.session.LoadSession`,
``run_load`` and search): the highest Poisson rate whose p99 latency (from each event's intended send
time, so coordinated omission cannot hide a queue) is within the SLO with nothing missing and the
generator keeping up. The search multiplies the rate by ``factor`` from the system's start rate
until a step fails, then bisects ``refine`` times. Every step holds its rate for ``step_s`` seconds on
fresh topics with a fresh process (Tansu slows as stored batches pile up), after one warm-up event
has gone through; the generator batches (linger 20 ms). See :mod:`streaming.bench.pipeline.systems`.

Besides capacity, two fixed-rate stages, each step again on fresh topics with a fresh process:

* **cost**: ``faust_forward``, ``quix_forward`` and ``worker`` at the same rates (400 and 2,000
  events/s by default): CPU µs per event per process and broker requests per event per client
  (``cost``), and our worker's own CPU per event over the Faust forwarder's
  (``worker_over_faust_forward_cpu``);
* **floor**: every system at a low rate (25 events/s) for one step: the latency with no load to
  speak of (``floor``), and how much our worker adds to the bare broker's p99
  (``worker_floor_over_bare_p99_ms``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.session import LoadSession
from streaming.bench.pipeline.quixenv import QUIX_REQUIREMENT, quix_python
from streaming.bench.pipeline.report import write_pipeline_report
from streaming.bench.pipeline.systems import DESCRIPTIONS, SYSTEMS, system_for
from streaming.settings import Settings

__all__ = ["run_pipeline_bench", "SearchPlan", "FULL", "QUICK", "RATIOS", "COST_SYSTEMS", "COST_RATES", "FLOOR_RATE",
           "rate_key", "cost_entry", "cpu_ratio"]


@dataclass(frozen=True)
class SearchPlan:
    step_s: float
    factor: float
    refine: int
    max_rate: float
    start_rates: dict[str, float]


#: where each system's search starts: a little below what it is expected to hold, to save steps
_STARTS = {"bare_broker": 4000.0, "faust_forward": 2000.0, "quix_forward": 2000.0, "naive": 50.0, "worker": 500.0}
FULL = SearchPlan(step_s=30.0, factor=1.5, refine=2, max_rate=40_000.0, start_rates=_STARTS)
QUICK = SearchPlan(step_s=5.0, factor=2.0, refine=0, max_rate=16_000.0, start_rates=_STARTS)

#: (numerator, denominator) of the ratios in the result
RATIOS = (("worker", "faust_forward"), ("worker", "quix_forward"), ("worker", "naive"))

#: the systems the cost stage measures at fixed rates, its default rates, and the latency floor's rate
COST_SYSTEMS = ("faust_forward", "quix_forward", "worker")
COST_RATES = (400.0, 2000.0)
FLOOR_RATE = 25.0

_STEP_KEYS = ("rate", "target_rate", "achieved_rate", "sustained_rate", "p50_ms", "p99_ms", "p999_ms", "missing",
              "duplicates", "generator_lag_max_ms", "generator_kept_up", "slo_pass")
_COST_KEYS = ("cpu_us_per_event", "broker_requests_per_event", "p50_ms", "p99_ms", "missing", "slo_pass",
              "achieved_rate", "cpu_pct")


def _step(s: dict[str, Any]) -> dict[str, Any]:
    out = {k: s.get(k) for k in _STEP_KEYS}
    out["verdict"] = "pass" if s["slo_pass"] else "FAIL"
    out["cpu_pct"] = s.get("cpu_pct", {})
    out["cpu_us_per_event"] = s.get("cpu_us_per_event", {})
    out["broker_requests_per_event"] = s.get("broker_requests_per_event", {})
    if s.get("stages_ms"):
        out["stages_ms"] = s["stages_ms"]
    return out


def rate_key(rate: float) -> str:
    """A rate as a JSON key.

    >>> rate_key(400.0), rate_key(2000), rate_key(12.5)
    ('400', '2000', '12.5')
    """
    return f"{rate:g}"


def cost_entry(s: dict[str, Any]) -> dict[str, Any]:
    """What the cost stage keeps of one run's summary."""
    return {k: s.get(k) for k in _COST_KEYS}


def cpu_ratio(cost: dict[str, dict[str, dict[str, Any]]], num: str, den: str) -> dict[str, float | None] | None:
    """Per rate: ``num``'s own process CPU µs per event over ``den``'s (None for a rate either lacks).

    >>> cost = {"worker": {"400": {"cpu_us_per_event": {"worker": 300.0, "broker": 90.0}}},
    ...         "faust_forward": {"400": {"cpu_us_per_event": {"faust_forward": 120.0}}}}
    >>> cpu_ratio(cost, "worker", "faust_forward")
    {'400': 2.5}
    >>> cpu_ratio(cost, "worker", "quix_forward") is None
    True
    """
    if num not in cost or den not in cost:
        return None
    out: dict[str, float | None] = {}
    for rk, entry in cost[num].items():
        a = (entry.get("cpu_us_per_event") or {}).get(num)
        b = (cost[den].get(rk, {}).get("cpu_us_per_event") or {}).get(den)
        out[rk] = round(a / b, 3) if a is not None and b else None
    return out


def _at(curve: list[dict[str, Any]], rate: float | None) -> dict[str, Any] | None:
    return next((c for c in curve if rate is not None and abs(c["rate"] - rate) < 0.5), None)


def run_pipeline_bench(settings: Settings, *, quick: bool, slo_p99_ms: float | None, step_s: float | None,
                       systems: Sequence[str] = SYSTEMS, max_rate: float | None = None,
                       start_rates: dict[str, float] | None = None, report_dir: Path | None,
                       quix_venv: Path, say: Callable[[str], None], show_progress: bool = True,
                       cost_rates: Sequence[float] = COST_RATES, floor_rate: float | None = FLOOR_RATE,
                       cpu_share: float | None = None) -> dict[str, Any]:
    """Capacity of each of ``systems``, then its fixed-rate cost steps (``cost_rates``; empty: none) and its
    latency floor (one step at ``floor_rate``; None or 0: none). ``cpu_share`` is only recorded: the caller
    runs the bench under it."""
    plan = QUICK if quick else FULL
    step = step_s or plan.step_s
    cap = max_rate or plan.max_rate
    starts = {**plan.start_rates, **(start_rates or {})}
    qpy = quix_python(quix_venv, say) if "quix_forward" in systems else None
    results: dict[str, dict[str, Any]] = {}
    cost: dict[str, dict[str, dict[str, Any]]] = {}
    floor: dict[str, dict[str, Any]] = {}
    t_start = time.monotonic()
    with LoadSession(settings, say, cpu_share=cpu_share) as session:
        slo = slo_p99_ms or session.pipeline.slo_p99_ms
        say(f"bench pipeline: {', '.join(systems)}; SLO p99 {slo:g} ms; steps of {step:g} s on fresh topics; "
            f"generator linger 20 ms; broker {session.bootstrap}, Redis {session.redis_url}")

        def fixed(name: str, rate: float, label: str) -> dict[str, Any]:
            s = session.run(profile="poisson", rate=rate, duration_s=step, slo_p99_ms=slo, show_progress=show_progress,
                            system=system_for(name, session, quix_python=qpy))
            own = (s.get("cpu_us_per_event") or {}).get(name)
            say(f"{name} {label} at {rate:,.0f}/s: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, missing "
                f"{s['missing']}" + (f", {own:,.0f} CPU µs/event in its own process" if own is not None else "")
                + f"  {'pass' if s['slo_pass'] else 'FAIL'}")
            return s

        for name in systems:
            say(f"{name}: {DESCRIPTIONS[name]}")
            t0 = time.monotonic()
            cap_out = session.capacity(slo_p99_ms=slo, step_s=step, start_rate=starts[name], max_rate=cap,
                                       report_dir=None, refine=plan.refine, factor=plan.factor,
                                       system=system_for(name, session, quix_python=qpy), label=name,
                                       show_progress=show_progress, keep_steps=True)
            curve = [_step(c) for c in cap_out["steps"]]
            best = cap_out["max_rate_at_slo"]
            failing = cap_out["first_failing_rate"]
            results[name] = {
                "description": DESCRIPTIONS[name],
                "max_rate_at_slo": best,
                "first_failing_rate": failing,
                "capped": failing is None,  # never failed below --max-rate: capacity is at least max_rate_at_slo
                "at_max": _at(curve, best),
                "at_first_failing": _at(curve, failing),
                "curve": curve,
                "minutes": round((time.monotonic() - t0) / 60, 1),
            }
            say(f"{name}: max rate at p99 <= {slo:g} ms: {best:,.0f} events/s"
                + (" (never failed up to --max-rate)" if failing is None else f"; failed at {failing:,.0f}/s"))
            if name in COST_SYSTEMS and cost_rates:
                cost[name] = {rate_key(r): cost_entry(fixed(name, r, "cost")) for r in cost_rates}
            if floor_rate:
                s = fixed(name, floor_rate, "floor")
                floor[name] = {"rate": floor_rate, "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                               "missing": s["missing"], "slo_pass": s["slo_pass"]}
            results[name]["minutes"] = round((time.monotonic() - t0) / 60, 1)
        settings_used = {
            "slo_p99_ms": slo, "step_duration_s": step, "quick": quick, "search_factor": plan.factor,
            "search_refine": plan.refine, "max_rate": cap, "start_rates": {k: starts[k] for k in systems},
            "fresh_topics_per_step": True, "fresh_process_per_step": True, "warm_up_event": True,
            "generator_linger_ms": 20.0, "partitions": settings.topic_partitions,
            "consumer_fetch_max_wait_ms": settings.consumer_fetch_max_wait_ms,
            "producer_linger_ms": settings.producer_linger_ms, "producer_acks": settings.producer_acks,
            "batch_max_rows": settings.batch_max_rows, "batch_max_wait_ms": settings.batch_max_wait_ms,
            "session_timeout_s": settings.session_timeout_s, "quix": QUIX_REQUIREMENT,
            "cost_rates": [float(r) for r in cost_rates], "cost_systems": [n for n in COST_SYSTEMS if n in systems],
            "floor_rate": floor_rate or None, "cpu_share": cpu_share,
            "pipeline": session.pipeline.name, "machine": f"{platform.machine()}, {_cores()} cores",
            "broker": session.bootstrap, "redis": session.redis_url,
        }
    out: dict[str, Any] = {"bench": "pipeline"}
    for name in SYSTEMS:
        key = "bare_broker_max_rate" if name == "bare_broker" else f"{name}_max_rate"
        out[key] = results[name]["max_rate_at_slo"] if name in results else None
    for num, den in RATIOS:
        a, b = results.get(num, {}).get("max_rate_at_slo"), results.get(den, {}).get("max_rate_at_slo")
        out[f"{num}_over_{den}"] = round(a / b, 3) if a is not None and b else None
    out["cost"] = cost
    out["worker_over_faust_forward_cpu"] = cpu_ratio(cost, "worker", "faust_forward")
    out["floor"] = floor
    w, b = floor.get("worker", {}).get("p99_ms"), floor.get("bare_broker", {}).get("p99_ms")
    out["worker_floor_over_bare_p99_ms"] = round(w - b, 2) if w is not None and b is not None else None
    out["cpu_share"] = cpu_share
    out["systems"] = results
    out["settings"] = settings_used
    out["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    if report_dir is not None:
        out["report"] = str(write_pipeline_report(report_dir, out))
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
