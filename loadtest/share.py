"""``--cpu-share``: what joins the run's CPU group besides the processes it starts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from streaming.infra.cpushare import CpuShare, cpu_share
from streaming.infra.stack import StackState
from streaming.settings import Settings

__all__ = ["join_stack", "share_run"]


@contextlib.contextmanager
def share_run(share: float | None, settings: Settings, say: Callable[[str], None]) -> Iterator[CpuShare | None]:
    """A whole command (the demo, a load test, a benchmark) on ``share`` of the machine (None: unchanged): this
    process and every child it starts in the block, and an embedded stack that was already up (:func:`join_stack`)."""
    with cpu_share(share, say=say) as group:
        if added := join_stack(group, settings):
            say(f"cpu share: the running stack joined the group (pids {', '.join(map(str, added))})")
        yield group


def join_stack(group: Any, settings: Settings) -> list[int]:
    """Put the embedded stack's broker (and the Redis it started, never an external one) into ``group``, a
    :class:`streaming.infra.cpushare.CpuShare` (None: nothing to do), when they run already and are not in it.

    Processes started inside a ``cpu_share`` block inherit its group; a stack that was up before the
    command was not, so it joins here. Returns the pids added.
    """
    if group is None or settings.broker_url:
        return []
    state = StackState.load(settings.run_path)
    inside = set(group.pids())
    added = []
    for name in ("broker", "redis"):
        svc = state.services.get(name)
        if svc is None or svc.pid is None or not svc.running or svc.pid in inside:
            continue  # pid None: not ours (a system Redis)
        if name == "redis" and settings.redis_url and settings.redis_url != svc.url:
            continue  # the run uses another Redis
        group.add(svc.pid)
        added.append(svc.pid)
    return added
