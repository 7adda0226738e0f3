"""A load test's report: Markdown with PNG plots (latency over time, percentile spectrum, rate and batch size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hdrh.histogram import HdrHistogram

from loadtest.runner import LoadResult

__all__ = ["write_report", "plot_capacity"]


def _spectrum(h: HdrHistogram) -> tuple[list[float], list[float]]:
    qs = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99]
    return [1 / (1 - q / 100) for q in qs], [h.get_value_at_percentile(q) / 1000 for q in qs]


def write_report(out: Path, result: LoadResult, summary: dict[str, Any], title: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    slo = summary["slo_p99_ms"]
    w = result.windows
    t = [x["t_s"] for x in w]

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [x["p99_ms"] for x in w], label="p99 (per second)")
    ax.plot(t, [x["p50_ms"] for x in w], label="p50 (per second)")
    ax.axhline(slo, color="red", linestyle="--", label=f"SLO p99 {slo:g} ms")
    ax.set_xlabel("seconds into the run (intended send time)")
    ax.set_ylabel("latency ms (from intended send)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_over_time.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, h in (("from intended send", result.intended), ("from actual send", result.actual)):
        if h.get_total_count():
            xs, ys = _spectrum(h)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks([2, 10, 100, 1000, 10000], ["p50", "p90", "p99", "p99.9", "p99.99"])
    ax.axhline(slo, color="red", linestyle="--", label="SLO")
    ax.set_ylabel("latency ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "percentile_spectrum.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [x["sent_per_s"] for x in w], label="sent events/s")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("events/s")
    ax2 = ax.twinx()
    ax2.plot(t, [x["batch_mean"] for x in w], color="tab:orange", label="mean batch size (rows)")
    ax2.set_ylabel("rows per batch")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "rate_and_batch.png", dpi=100)
    plt.close(fig)

    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if k not in ("stages_ms", "verdict_text"))
    stages = "\n".join(f"| {k} | {v['p50']} | {v['p99']} |" for k, v in summary.get("stages_ms", {}).items())
    verdict = "PASS" if summary["slo_pass"] else "FAIL"
    text = f"""# {title}

**Verdict: {verdict}** (p99 {summary['p99_ms']} ms from intended send time vs SLO {slo:g} ms; achieved
{summary['achieved_rate']} of {summary['target_rate']} events/s; missing {summary['missing']}).

{summary.get('verdict_text', '')}

| figure | value |
| --- | --- |
{rows}

Per-stage breakdown (ms), from the prediction's timestamps:

| stage | p50 | p99 |
| --- | --- | --- |
{stages}

![latency over time](latency_over_time.png)

![percentile spectrum](percentile_spectrum.png)

![rate and batch size](rate_and_batch.png)
"""
    path = out / "report.md"
    path.write_text(text)
    return path


def plot_capacity(out: Path, curve: list[dict[str, Any]], slo_ms: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    pts = sorted(curve, key=lambda c: c["target_rate"])
    ax.plot([c["target_rate"] for c in pts], [c["p99_ms"] for c in pts], marker="o", label="p99 (from intended send)")
    ax.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel("target rate (events/s)")
    ax.set_ylabel("p99 ms")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path = out / "capacity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
