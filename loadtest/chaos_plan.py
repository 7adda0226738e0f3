"""What a chaos run does: how much traffic, which faults, and when they strike (``streaming chaos``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from streaming.errors import UserError

__all__ = ["ChaosAbort", "ChaosPlan", "fault_schedule"]


@dataclass(frozen=True)
class ChaosPlan:
    """How much traffic and which faults; ``stall_s``: no progress this long with work outstanding is a stuck worker."""

    events: int = 50_000
    rate: float = 400.0
    kills: int = 5
    seed: int = 13
    hostile_share: float = 0.01
    label_delay_s: float = 3.0
    redis_outage_s: float = 8.0
    stall_s: float = 30.0
    recover_s: float = 45.0  # how long the worker has to bring its topics back after the broker restart
    drain_s: float = 120.0  # how long the end (and the quiet moment) may take

    @classmethod
    def quick(cls, seed: int = 13) -> ChaosPlan:
        return cls(events=5_000, rate=150.0, kills=2, seed=seed, redis_outage_s=3.0, stall_s=20.0, recover_s=30.0,
                   drain_s=60.0)


def fault_schedule(plan: ChaosPlan) -> list[tuple[int, str]]:
    """After how many events each fault strikes: the middle 90% of the run cut into one segment per fault, the
    faults shuffled over the segments (the first is a kill: Redis and the broker fail under a worker that has
    been serving events and labels for a while), each at a random point of its segment's middle 80% (seeded).

    >>> fault_schedule(ChaosPlan(events=1000, kills=2, seed=1))
    [(118, 'kill'), (386, 'broker'), (603, 'redis'), (864, 'kill')]
    """
    rng = random.Random(plan.seed)
    kinds = ["kill"] * plan.kills + ["redis", "broker"]
    rng.shuffle(kinds)
    if plan.kills and kinds[0] != "kill":
        i = kinds.index("kill")
        kinds[0], kinds[i] = kinds[i], kinds[0]
    lo, width = 0.05 * plan.events, 0.9 * plan.events / len(kinds)
    return [(int(lo + width * (i + 0.1 + 0.8 * rng.random())), kind) for i, kind in enumerate(kinds)]


class ChaosAbort(UserError):
    """The run cannot go on (the worker never became ready, the topics never came back)."""
