"""The faults of a chaos run, struck on its :class:`~loadtest.chaos_run.ChaosRun`: a worker SIGKILL, a Redis
outage, a broker restart at a quiet moment, and the liveness probe that restarts a stuck worker."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from confluent_kafka.admin import AdminClient

from loadtest.chaos_plan import ChaosAbort
from streaming.events.security import client_config

if TYPE_CHECKING:
    from loadtest.chaos_run import ChaosRun

__all__ = ["restart_broker", "strike", "watchdog"]


def strike(run: ChaosRun) -> None:
    """Strike the next fault when its moment has come and the worker is up (one fault at a time)."""
    assert run.sup is not None
    if not run.faults or run.sent < run.faults[0][0]:
        return
    if not (run.sup.ready and run.redis.up and run.redis_target is None):
        return  # one fault at a time, on a worker that is up
    _, kind = run.faults.pop(0)
    if kind == "kill":
        run.report["kill_at_events"].append(run.sent)
        run.sup.kill()
    elif kind == "redis":
        run.say(f"stopping redis for {run.plan.redis_outage_s:g}s")
        run.report["redis_at_events"].append(run.sent)
        run.redis.stop()
        run.redis_down_at = time.monotonic()
        run.redis_down_until = run.redis_down_at + run.plan.redis_outage_s
        run.report["redis_outages"] += 1
    else:
        restart_broker(run)


def watchdog(run: ChaosRun, now: float) -> None:
    """The liveness probe: work outstanding and no progress for ``stall_s`` (Redis up) -> restart the worker."""
    assert run.sup is not None
    acc = run.accounted()
    if acc != run.progress[0] or run.outstanding() <= 0:
        run.progress = (acc, now)
        return
    quiet_for = now - max(run.progress[1], run.redis_back_at, run.sup.ready_at if run.sup.ready else 0.0)
    stuck = run.sup.ready and run.redis.up and quiet_for > run.plan.stall_s
    never_ready = run.sup.alive and not run.sup.ready and run.sup.since_start() > 120
    if stuck or never_ready:
        why = "no progress" if stuck else "not ready"
        cause = f"stall: {why} for {run.plan.stall_s if stuck else 120:.0f}s with {run.outstanding()} " \
                "records outstanding"
        run.stalls.append({"at_s": run.now_s(), "cause": cause, "phase": run.phase,
                         "worker_log_tail": run.sup.tail(8)})
        run.say(f"the worker is stuck ({cause}); restarting it")
        run.sup.restart(cause)
        run.progress = (acc, now)


def _topics_back(run: ChaosRun, timeout: float) -> bool:
    """Wait until the worker's topics exist (the supervisor keeps restarting a worker that exits)."""
    assert run.sup is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.sup.poll()
        with contextlib.suppress(Exception):
            names = AdminClient(client_config(run.broker.bootstrap)).list_topics(timeout=2).topics
            if all(t in names for t in run.topics):
                return True
        time.sleep(0.5)
    return False


def restart_broker(run: ChaosRun) -> None:
    """At a quiet moment: nothing outstanding, every label committed; then restart and wait for the topics."""
    assert run.sup is not None and run.traffic is not None
    run.report["broker_at_events"].append(run.sent)
    paused = time.monotonic()
    run.phase = "broker: waiting for quiet"
    run.sending = False
    run.traffic.flush()
    deadline = paused + run.plan.drain_s
    while not (run.outstanding() <= 0 and run.labels_committed()):
        if time.monotonic() > deadline:
            run.problems.append(f"no quiet moment within {run.plan.drain_s:g}s before the broker restart: "
                                 f"{run.outstanding()} records outstanding")
            break
        run.house(force=True)
        time.sleep(0.1)
    run.close_epoch()
    run.phase = "broker restart"
    run.say("restarting the broker (it forgets every topic)")
    restarts_before = len(run.sup.starts)
    run.broker.restart()
    at = time.monotonic()
    run.report["broker_restarts"] += 1
    if _topics_back(run, run.plan.recover_s):
        by = "the worker" if len(run.sup.starts) == restarts_before else \
            f"the worker's restart ({run.sup.starts[restarts_before].cause})"
    else:
        cause = f"stall: the topics were not back {run.plan.recover_s:g}s after the broker restart"
        run.stalls.append({"at_s": run.now_s(), "cause": cause, "phase": run.phase,
                         "worker_alive": run.sup.alive, "worker_log_tail": run.sup.tail(8)})
        run.say(f"{cause}; restarting the worker")
        run.sup.restart(cause)
        if not _topics_back(run, 120):
            raise ChaosAbort("the topics did not come back after the broker restart, even with a new worker")
        by = "a forced worker restart"
    run.report["broker_topics_back_s"] = round(time.monotonic() - at, 2)
    run.report["broker_recovered_by"] = by
    run.say(f"topics back after {run.report['broker_topics_back_s']}s, recreated by {by}")
    run.broker_restart_at = at
    run.open_epoch()
    run.shift_us += int((time.monotonic() - paused) * 1e6)
    run.phase = "events"
    run.sending = True
