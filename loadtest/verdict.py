"""A load test's verdict in plain words: what failed, how much the system sustained, where the time and the CPU went.

:func:`verdict_text` reads only a run's summary (:meth:`loadtest.runner.LoadResult.summary` plus the
``system`` it ran), so it can be tested without running anything.
"""

from __future__ import annotations

from typing import Any

__all__ = ["verdict_text", "dominant_stage", "cpu_words"]

#: how a system is named in a sentence, and what it does to an event
_WHO = {"worker": "the worker", "naive": "the naive worker", "faust_forward": "the Faust forwarder",
        "quix_forward": "the Quix forwarder", "bare_broker": "the broker"}
_VERB = {"worker": "scored", "naive": "scored", "faust_forward": "forwarded", "quix_forward": "forwarded",
         "bare_broker": "delivered"}
#: the order processes are named in, after the system's own
_ORDER = ("broker", "redis", "load_generator", "load_reader")


def _ms(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}"


def dominant_stage(stages_ms: dict[str, dict[str, float]] | None) -> tuple[str, float] | None:
    """The stage with the highest p99 (ms), or None without a stage breakdown.

    >>> dominant_stage({"features": {"p50": 1.0, "p99": 4.0}, "queue": {"p50": 9.0, "p99": 310.0}})
    ('queue', 310.0)
    >>> dominant_stage({}) is None
    True
    """
    if not stages_ms:
        return None
    name, st = max(stages_ms.items(), key=lambda kv: kv[1].get("p99", float("-inf")))
    return name, float(st["p99"])


def cpu_words(summary: dict[str, Any], first: str | None = None) -> str:
    """Each watched process's CPU: ``first`` (the system's own process) first, then broker, Redis, generator, reader.

    >>> cpu_words({"cpu_pct": {"broker": 40.0, "worker": 98.2}, "cpu_us_per_event": {"worker": 490.4, "broker": 200.0}},
    ...           "worker")
    'worker 98 % of a core (490 µs/event), broker 40 % (200 µs/event)'
    """
    pct: dict[str, float] = summary.get("cpu_pct") or {}
    per: dict[str, float] = summary.get("cpu_us_per_event") or {}
    names = [n for n in (first, *_ORDER) if n is not None and n in pct]
    names += [n for n in pct if n not in names]
    words = []
    for i, n in enumerate(names):
        us = f" ({per[n]:,.0f} µs/event)" if n in per else ""
        words.append(f"{n} {pct[n]:.0f} %{' of a core' if i == 0 else ''}{us}")
    return ", ".join(words)


def verdict_text(summary: dict[str, Any]) -> str:
    """One paragraph: PASS or FAIL, and for a failure why (the generator behind, the system behind, or only
    latency), the rate the system sustained against the one offered, the stage whose p99 dominated, and
    the CPU per process (% of a core and µs per event).

    >>> s = {"system": "worker", "slo_pass": False, "generator_kept_up": True, "target_rate": 2000.0,
    ...      "achieved_rate": 1998.0, "sustained_rate": 1320.4, "missing": 5210, "p99_ms": 2710.0,
    ...      "slo_p99_ms": 50.0, "generator_lag_max_ms": 3.0,
    ...      "stages_ms": {"broker_and_fetch": {"p50": 9, "p99": 40}, "queue": {"p50": 120, "p99": 310}},
    ...      "cpu_pct": {"worker": 98.0, "broker": 41.0}, "cpu_us_per_event": {"worker": 490.0, "broker": 205.0}}
    >>> print(verdict_text(s))
    FAIL: the worker fell behind: it scored 1,320 events/s of 2,000 offered (5,210 events never came out); most of the time went to queue (p99 310 ms); worker 98 % of a core (490 µs/event), broker 41 % (205 µs/event)
    >>> print(verdict_text({**s, "sustained_rate": 1990.0, "missing": 0, "p99_ms": 75.0}))
    FAIL: the worker kept up (scored 1,990 events/s of 2,000 offered) but its p99 was 75 ms, over the SLO of 50 ms; most of the time went to queue (p99 310 ms); worker 98 % of a core (490 µs/event), broker 41 % (205 µs/event)
    """
    system = str(summary.get("system") or "worker")
    who, verb = _WHO.get(system, system), _VERB.get(system, "processed")
    offered = float(summary["target_rate"])
    sustained = float(summary.get("sustained_rate", summary["achieved_rate"]))
    missing = int(summary.get("missing", 0))
    p99, slo = float(summary["p99_ms"]), float(summary["slo_p99_ms"])
    first = system
    if summary.get("slo_pass"):
        head = (f"PASS: {who} {verb} {sustained:,.0f} events/s of {offered:,.0f} offered, p99 {_ms(p99)} ms "
                f"within the SLO of {slo:g} ms")
    elif not summary.get("generator_kept_up", True):
        head = (f"FAIL: the load generator fell behind: it sent {float(summary['achieved_rate']):,.0f} events/s of "
                f"{offered:,.0f} planned (up to {_ms(float(summary.get('generator_lag_max_ms', 0.0)))} ms late), so "
                f"this run measured the generator, not {who}; {who} {verb} {sustained:,.0f} events/s")
        first = "load_generator"
    elif missing or sustained < 0.95 * offered:
        head = f"FAIL: {who} fell behind: it {verb} {sustained:,.0f} events/s of {offered:,.0f} offered"
        if missing:
            head += f" ({missing:,} events never came out)"
    else:
        head = (f"FAIL: {who} kept up ({verb} {sustained:,.0f} events/s of {offered:,.0f} offered) but its p99 was "
                f"{_ms(p99)} ms, over the SLO of {slo:g} ms")
    parts = [head]
    stage = dominant_stage(summary.get("stages_ms"))
    if stage is not None:
        parts.append(f"most of the time went to {stage[0]} (p99 {_ms(stage[1])} ms)")
    if cpu := cpu_words(summary, first):
        parts.append(cpu)
    return "; ".join(parts)
