"""Open-loop arrival schedules: when each event is meant to be sent (seconds from the start)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["Phase", "schedule", "parse_steps", "PROFILES", "replay_offsets"]

PROFILES = ("constant", "poisson", "step", "burst", "replay")


@dataclass(frozen=True)
class Phase:
    rate: float  # events/s
    duration_s: float


def parse_steps(text: str) -> list[Phase]:
    """``"200:10,1800:10,200:10"`` → phases of (rate, seconds).

    >>> parse_steps("200:10, 1800:5")
    [Phase(rate=200.0, duration_s=10.0), Phase(rate=1800.0, duration_s=5.0)]
    """
    phases = []
    for part in text.split(","):
        rate, _, dur = part.strip().partition(":")
        try:
            phases.append(Phase(float(rate), float(dur)))
        except ValueError:
            raise ValueError(f"bad step {part!r}: use RATE:SECONDS, e.g. 200:10,1800:10") from None
    return phases


def _poisson(rate: float, start: float, end: float, rng: random.Random) -> Iterator[float]:
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        yield t


def _constant(rate: float, start: float, end: float) -> Iterator[float]:
    n = 1
    while start + n / rate < end:
        yield start + n / rate
        n += 1


def replay_offsets(path: Path, time_field: str) -> list[float]:
    """Offsets (s) of a JSON-lines file's events from their original timing (epoch µs in ``time_field``)."""
    times = [int(orjson.loads(line)[time_field]) for line in path.read_bytes().splitlines() if line.strip()]
    if not times:
        return []
    t0 = min(times)
    return sorted((t - t0) / 1e6 for t in times)


def schedule(profile: str, *, rate: float, duration_s: float, seed: int = 0, steps: list[Phase] | None = None,
             burst_every_s: float = 5.0, burst_size: int = 500, replay: list[float] | None = None) -> Iterator[float]:
    """Intended send times for ``profile``.

    >>> list(schedule("constant", rate=4, duration_s=1))
    [0.25, 0.5, 0.75]
    >>> times = list(schedule("poisson", rate=1000, duration_s=2, seed=1))
    >>> 1800 < len(times) < 2200 and times == sorted(times)
    True
    """
    rng = random.Random(seed)
    if profile == "constant":
        yield from _constant(rate, 0.0, duration_s)
    elif profile == "poisson":
        yield from _poisson(rate, 0.0, duration_s, rng)
    elif profile == "step":
        t = 0.0
        for ph in steps or []:
            yield from _poisson(ph.rate, t, t + ph.duration_s, rng)
            t += ph.duration_s
    elif profile == "burst":
        # Poisson at `rate`, plus `burst_size` events at once every `burst_every_s`
        base = list(_poisson(rate, 0.0, duration_s, rng))
        bursts = [k * burst_every_s for k in range(1, math.ceil(duration_s / burst_every_s)) for _ in range(burst_size)]
        yield from sorted(base + bursts)
    elif profile == "replay":
        yield from (t for t in (replay or []) if t < duration_s)
    else:
        raise ValueError(f"unknown profile {profile!r} ({', '.join(PROFILES)})")
