"""``streaming chaos``: a labelled stream with hostile records while the worker is killed and its servers fail.

The run owns its broker, its Redis and its worker (:mod:`loadtest.chaos_procs`) and publishes
synthetic events at a steady rate, a share of hostile records among them and a label for every
event (:mod:`loadtest.chaos_traffic`), in a loop (:mod:`loadtest.chaos_run`). At seeded random moments
(:mod:`loadtest.chaos_plan`) it SIGKILLs the worker (and starts it again, as a supervisor would), stops
Redis for a few seconds, and restarts the broker once (:mod:`loadtest.chaos_faults`), at a
quiet moment (every record sent so far accounted for, every label sent committed): the embedded
broker forgets its topics, so the worker must bring them back, or exit so that its restart does.
Then it reads everything back and accounts for it (:mod:`loadtest.chaos_accounting`,
:mod:`loadtest.chaos_summary`) and prints one JSON line. docs/reliability.md, "The chaos run".
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
from tqdm import tqdm

from loadtest.chaos_accounting import check_aggregates
from loadtest.chaos_plan import ChaosAbort, ChaosPlan, fault_schedule
from loadtest.chaos_run import ChaosRun
from loadtest.chaos_summary import summarize
from streaming.settings import Settings

__all__ = ["ChaosPlan", "fault_schedule", "figures", "run_chaos", "summary_lines"]


def figures(run: ChaosRun, aborted: str | None) -> dict[str, Any]:
    """The run's figures: :func:`~loadtest.chaos_summary.summarize`, the aggregates, the worker, the faults."""
    assert run.sup is not None
    out: dict[str, Any] = summarize(run.epochs)
    problems = out.pop("problems") + run.problems
    if not aborted and run.events:
        probe_us = max(int(run.events[-1][run.pipeline.event.time_field]), time.time_ns() // 1000 - 45_000_000)
        failed = {x for e in run.epochs for x in e.delivered.events_failed}
        valid = [ev for ev in run.events if str(ev[run.pipeline.event.id_field]) not in failed]
        agg = check_aggregates(run.redis.url, run.prefix, run.pipeline, valid, probe_us)
        out.update(agg)
        if agg["aggregates_off_reference"]:
            problems.append(f"{agg['aggregates_off_reference']} of {agg['aggregates_checked']} entities' window "
                            f"features differ from the reference, e.g. {agg['aggregate_examples'][:2]}")
    else:
        out.update(aggregates_checked=0, aggregates_off_reference=None)
    starts = run.sup.starts
    exits = [f"exit {w.exit_code}" for w, nxt in itertools.pairwise(starts) if nxt.cause.startswith("exit")]
    for w, nxt in itertools.pairwise(starts):
        if nxt.cause.startswith("exit"):
            lines = [x for x in w.evidence if "[CRITICAL]" in x] or w.evidence[-2:]
            problems.append(f"the worker exited with status {w.exit_code} at {nxt.at_s}s: "
                            + (" | ".join(lines) or "no ERROR or CRITICAL line"))
    for st in run.stalls:
        problems.append(f"{st['cause']} at {st['at_s']}s ({st['phase']}); the worker's last lines: "
                        + " | ".join(st["worker_log_tail"][-3:]))
    ready = [w.ready_s for w in starts[1:] if w.ready_s is not None]
    out["epochs"] = [{"events": len(e.event_ids), "hostile": len(e.hostile), "labels": len(e.delivered.labels),
                      "labels_unprocessed": len(e.labels_unprocessed),
                      "records_read": e.tally.records if e.tally else None} for e in run.epochs]
    out.update(
        worker_kills=run.sup.kills,
        worker_restarts=run.sup.restarts,
        worker_exits=dict(sorted({e: exits.count(e) for e in exits}.items())),
        worker_stalls=len(run.stalls),
        worker_restart_ready_s={"max": max(ready), "mean": round(sum(ready) / len(ready), 2)} if ready else None,
        worker_starts=[{"cause": w.cause, "at_s": w.at_s, "ready_s": w.ready_s, "exit_code": w.exit_code}
                       for w in starts],
        **run.report,
        labels_forced=run.labels.forced,
        duration_s=run.now_s(),
        seed=run.plan.seed,
        plan=asdict(run.plan),
        run_dir=str(run.run_dir),
        aborted=aborted,
    )
    out["ok"] = bool(
        not aborted and out["missing"] == 0 and out["duplicated_unflagged"] == 0 and out["labels_lost"] == 0
        and out["aggregates_off_reference"] == 0 and out["hostile_dead_lettered"] == out["hostile_sent"]
        and out["dead_lettered_valid"] == 0 and not run.stalls and out["events_sent"] >= run.plan.events
    )
    out["problems"] = problems
    return out


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_chaos(settings: Settings, plan: ChaosPlan, say: Callable[[str], None] | None = None,
              progress: bool = True) -> dict[str, Any]:
    """The chaos run; returns its figures (``ok``: nothing lost, nothing counted twice, every fault survived)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
    say = say or (lambda m: tqdm.write(f"chaos: {m}"))
    run = ChaosRun(settings, plan, say)
    aborted: str | None = None
    faults = ", ".join(f"{k}@{n}" for n, k in run.faults)
    say(f"{plan.events} events at {plan.rate:g}/s, {plan.hostile_share:.1%} hostile, labels after "
        f"{plan.label_delay_s:g}s; faults (after n events): {faults}")
    try:
        try:
            run.start()
            with tqdm(total=plan.events, unit="ev", desc="chaos", dynamic_ncols=True, disable=not progress) as run.bar:
                run.produce()
                run.bar.n = run.sent
                say(f"sent {run.sent} events and {run.hostile} hostile records; draining")
                run.drain()
            run.close_epoch()
        except ChaosAbort as exc:
            aborted = str(exc)
            say(f"aborted: {aborted}")
            with contextlib.suppress(Exception):
                run.close_epoch()
        result = figures(run, aborted)
    finally:  # whatever happened (Ctrl-C included), nothing the run started outlives it
        run.stop_all()
    (run.run_dir / "chaos-summary.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for people (stderr); the JSON line is for programs."""
    r = result
    lines = [
        f"events {r['events_sent']} + hostile {r['hostile_sent']}: predicted {r['predicted']}, dead-lettered "
        f"{r['dead_lettered']}, missing {r['missing']}",
        f"duplicated {r['duplicated']} (flagged {r['duplicated_flagged']}, unflagged {r['duplicated_unflagged']})",
        f"labels {r['labels_sent']}: joined {r['labels_joined']}, lost {r['labels_lost']}",
        f"aggregates off the reference: {r['aggregates_off_reference']} of {r['aggregates_checked']}",
        f"worker: {r['worker_kills']} kills, {r['worker_restarts']} restarts, exits {r['worker_exits']}, "
        f"stalls {r['worker_stalls']}; redis outages {r['redis_outages']}; broker restarts {r['broker_restarts']} "
        f"(recovered by {r['broker_recovered_by']}, first prediction after {r['broker_recovery_s']}s)",
        *(f"problem: {p}" for p in r["problems"]),
        f"result: {'OK' if r['ok'] else 'FAILED'} in {r['duration_s']:.0f}s; details in {r['run_dir']}",
    ]
    return lines
