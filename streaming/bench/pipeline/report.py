"""The report of ``streaming bench pipeline``: Markdown and a PNG of p99 against rate, one line per system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["write_pipeline_report", "plot_pipeline"]


def plot_pipeline(out: Path, systems: dict[str, dict[str, Any]], slo_ms: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, r in systems.items():
        pts = sorted(r["curve"], key=lambda c: c["rate"])
        line = ax.plot([c["rate"] for c in pts], [c["p99_ms"] for c in pts], marker="o", label=name)[0]
        failed = [c for c in pts if not c["slo_pass"]]
        ax.scatter([c["rate"] for c in failed], [c["p99_ms"] for c in failed], marker="x", s=60, color=line.get_color())
    ax.axhline(slo_ms, color="red", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Poisson rate (events/s)")
    ax.set_ylabel("p99 ms (from intended send)")
    ax.set_title("p99 vs rate (x: step failed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "pipeline_capacity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _cpu(step: dict[str, Any] | None) -> str:
    """Each process's CPU: % of a core, and µs per event where known."""
    if not step or not step.get("cpu_pct"):
        return "-"
    per = step.get("cpu_us_per_event") or {}
    return ", ".join(f"{k} {v:.0f}%" + (f" ({per[k]:,.0f} µs/ev)" if per.get(k) is not None else "")
                     for k, v in step["cpu_pct"].items())


def _requests(entry: dict[str, Any]) -> str:
    """Broker requests per event by client process: ``produce / fetch``."""
    req = entry.get("broker_requests_per_event") or {}
    if not req:
        return "-"
    return ", ".join(f"{k} {v.get('produce', 0):.3g} / {v.get('fetch', 0):.3g}" for k, v in req.items())


def _cost_section(result: dict[str, Any]) -> str:
    cost: dict[str, dict[str, dict[str, Any]]] = result.get("cost") or {}
    if not cost:
        return ""
    rows = []
    for name, by_rate in cost.items():
        for rate, e in by_rate.items():
            own = (e.get("cpu_us_per_event") or {}).get(name)
            rows.append(f"| {name} | {rate} | {_fmt(e.get('p50_ms'))} | {_fmt(e.get('p99_ms'))} | {e.get('missing')} | "
                        f"{'pass' if e.get('slo_pass') else 'FAIL'} | **{_fmt(own, 0)}** | {_cpu(e)} | {_requests(e)} |")
    ratio = result.get("worker_over_faust_forward_cpu") or {}
    ratios = ", ".join(f"{r}/s: {_fmt(v, 2)}" for r, v in ratio.items()) or "-"
    return f"""
## Cost per event at fixed rates

Each system at the same Poisson rates, one step each on fresh topics with a fresh process. CPU: the
CPU each process used over the schedule window divided by the events sent in it (µs per event),
beside its share of one core. Requests: broker requests per event sent by each client process,
produce / fetch (aiokafka clients counted by the `streaming://` transport, librdkafka clients from
their statistics; docs/loadtest.md).

| system | rate (events/s) | p50 ms | p99 ms | missing | SLO | own CPU µs/event | CPU per process | requests per event (produce / fetch) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Our worker's own CPU per event over the Faust forwarder's (`worker_over_faust_forward_cpu`): {ratios}.
"""


def _floor_section(result: dict[str, Any]) -> str:
    floor: dict[str, dict[str, Any]] = result.get("floor") or {}
    if not floor:
        return ""
    rows = "\n".join(f"| {name} | {_fmt(f.get('rate'), 0)} | {_fmt(f.get('p50_ms'))} | {_fmt(f.get('p99_ms'))} | "
                     f"{f.get('missing')} |" for name, f in floor.items())
    gap = result.get("worker_floor_over_bare_p99_ms")
    return f"""
## Latency floor

Every system for one step at a low rate: the latency with almost no load, what each adds to the
bare broker's round trip. Our worker's p99 minus the bare broker's: {_fmt(gap)} ms.

| system | rate (events/s) | p50 ms | p99 ms | missing |
| --- | --- | --- | --- | --- |
{rows}
"""


def write_pipeline_report(out: Path, result: dict[str, Any]) -> Path:
    st = result["settings"]
    systems = result["systems"]
    plot_pipeline(out, systems, st["slo_p99_ms"])
    rows = []
    for name, r in systems.items():
        ok, bad = r["at_max"], r["at_first_failing"]
        fail = ("none up to the cap" if bad is None else
                f"{bad['rate']:,.0f}/s: p99 {_fmt(bad['p99_ms'])} ms, achieved {_fmt(bad['achieved_rate'], 0)}/s, "
                f"missing {bad['missing']}")
        rows.append(f"| {name} | **{_fmt(r['max_rate_at_slo'], 0)}**{'+' if r['capped'] else ''} | "
                    f"{_fmt(ok['p99_ms']) if ok else '-'} | {fail} | {_cpu(ok)} | {_cpu(bad)} |")
    ratios = "\n".join(f"| {k} | {_fmt(v, 2)} |" for k, v in result.items()  # the capacity ratios
                       if "_over_" in k and not isinstance(v, dict) and not k.endswith("_ms"))
    curves = []
    for name, r in systems.items():
        curves.append(f"\n### {name}\n\n{r['description']}.\n\n| rate | achieved | p50 ms | p99 ms | missing | "
                      "generator lag max ms | CPU (% of a core, µs per event) | requests per event (produce / fetch) "
                      "| verdict |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in r["curve"]:
            curves.append(f"| {_fmt(c['rate'], 0)} | {_fmt(c['achieved_rate'], 0)} | {_fmt(c['p50_ms'])} | "
                          f"{_fmt(c['p99_ms'])} | {c['missing']} | {_fmt(c['generator_lag_max_ms'])} | {_cpu(c)} | "
                          f"{_requests(c)} | {c['verdict']} |")
    settings = "\n".join(f"| {k} | {v} |" for k, v in st.items())
    text = f"""# Pipeline capacity: `streaming bench pipeline`

Highest Poisson rate with p99 ≤ {st['slo_p99_ms']:g} ms (from each event's intended send time), nothing
missing and the generator keeping up; every step held {st['step_duration_s']:g} s **on fresh topics with a
fresh process** (Tansu slows as stored batches pile up), after one warm-up event; **generator linger
20 ms**; the prediction reader in its own process. Same broker, Redis and machine for every system
({st['machine']}), {result['minutes']} minutes in all.

| system | max rate at SLO (events/s) | p99 there (ms) | first failing step | CPU at max | CPU at failing step |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

`+`: never failed up to `max_rate` ({st['max_rate']:,.0f}/s). CPU: share of one core while the schedule ran
(broker, redis, the system's own process, the load generator and reader), and its CPU µs per event sent.
{'' if result.get('cpu_share') is None else f"Run under `--cpu-share {result['cpu_share']:g}` (a cgroup CPU quota)."}

| ratio | value |
| --- | --- |
{ratios}

![p99 vs rate per system](pipeline_capacity.png)
{_cost_section(result)}{_floor_section(result)}

## Curves
{chr(10).join(curves)}

## Settings

| setting | value |
| --- | --- |
{settings}
"""
    path = out / "report.md"
    path.write_text(text)
    return path
