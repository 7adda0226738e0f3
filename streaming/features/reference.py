"""The window features computed in plain Python, with the store's semantics.

Used to build training sets (so training and serving agree) and as the
brute-force reference the Redis store is tested against (docs/features.md):

- events are applied in arrival order, each id once;
- an event older than the watermark (the latest applied event time) minus the
  allowed lateness is not applied (late);
- each event then reads its window features as of its own event time: the
  ``n`` buckets ending with the bucket that holds it, itself included;
  ``last`` / ``seconds_since_last`` read the entity's latest event before it.

Distinct counts are exact here; Redis estimates them (HyperLogLog, ~0.8%).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streaming.features.layout import WindowPlan
from streaming.features.store import WindowResult
from streaming.pipeline.spec import Pipeline

__all__ = ["ReferenceStore"]


@dataclass
class _Tile:
    n: int = 0
    sums: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    squares: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    mins: dict[int, float] = field(default_factory=dict)
    maxes: dict[int, float] = field(default_factory=dict)
    distinct: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))


class ReferenceStore:
    """In-memory window state; :meth:`results` mirrors ``RedisFeatureStore.update_and_read``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.plan = WindowPlan(pipeline)
        self._tiles: dict[tuple[int, str, int], _Tile] = {}
        self._latest: dict[tuple[int, str], tuple[int, list[float]]] = {}
        self._seen: set[str] = set()
        self.watermarks: dict[int, int] = {}  # input partition -> its watermark (epoch s)

    @property
    def watermark(self) -> int:
        """Partition 0's watermark (the only one when no partitions are given)."""
        return self.watermarks.get(0, 0)

    def update_and_read(self, events: Iterable[dict[str, Any]], partitions: Iterable[int] | None = None,
                        clock_s: float | None = None) -> list[list[float]]:
        return [r.values for r in self.results(events, partitions, clock_s)]

    def results(self, events: Iterable[dict[str, Any]], partitions: Iterable[int] | None = None,
                clock_s: float | None = None) -> list[WindowResult]:
        out = []
        plan = self.plan
        spec = self.pipeline.event
        evs = list(events)
        parts = list(partitions) if partitions is not None else [0] * len(evs)
        for ev, part in zip(evs, parts, strict=True):
            eid = str(ev[spec.id_field])
            ts = int(ev[spec.time_field]) // 1_000_000
            ents = plan.entity_values(ev)
            nums = plan.numeric_values(ev)
            dist = plan.distinct_values(ev)
            wm = self.watermarks.get(part, 0)
            late = ts < wm - plan.lateness_s
            fresh = eid not in self._seen
            prev = {s: self._latest.get((s, ents[s - 1])) for s in range(1, len(ents) + 1)}
            applied = fresh and not late
            if applied:
                self._seen.add(eid)
                self.watermarks[part] = max(wm, ts if clock_s is None else min(ts, int(clock_s)))
                for gi, g in enumerate(plan.groups, 1):
                    key = (gi, ents[g.entity_slot - 1], ts // g.bucket_s)
                    tile = self._tiles.setdefault(key, _Tile())
                    tile.n += 1
                    for f in g.sums:
                        tile.sums[f] += nums[f - 1]
                    for f in g.squares:
                        tile.squares[f] += nums[f - 1] * nums[f - 1]
                    for f in g.mins:
                        tile.mins[f] = min(tile.mins.get(f, math.inf), nums[f - 1])
                    for f in g.maxes:
                        tile.maxes[f] = max(tile.maxes.get(f, -math.inf), nums[f - 1])
                    for f in g.hlls:
                        tile.distinct[f].add(dist[f - 1])
                for s in range(1, len(ents) + 1):
                    if plan.tracks_last[s - 1]:
                        p = prev[s]
                        if p is None or ts >= p[0]:
                            self._latest[(s, ents[s - 1])] = (ts, list(nums))
            out.append(WindowResult([self._read(r, ts, ents, prev) for r in plan.reads], applied, late))
        return out

    def _read(self, r: Any, ts: int, ents: list[str], prev: dict[int, tuple[int, list[float]] | None]) -> float:
        if r.code in ("l", "t"):
            p = prev[r.entity_slot]
            if p is None or p[0] > ts or ts - p[0] > r.window_s:
                return 0.0
            return float(ts - p[0]) if r.code == "t" else p[1][r.field_slot - 1]
        g = self.plan.groups[r.group - 1]
        ent = ents[g.entity_slot - 1]
        top = ts // g.bucket_s
        c = 0
        s = q = 0.0
        mn: float | None = None
        mx: float | None = None
        union: set[str] = set()
        for b in range(top - r.n_buckets + 1, top + 1):
            tile = self._tiles.get((r.group, ent, b))
            if tile is None:
                continue
            c += tile.n
            s += tile.sums.get(r.field_slot, 0.0)
            q += tile.squares.get(r.field_slot, 0.0)
            if r.field_slot in tile.mins:
                mn = tile.mins[r.field_slot] if mn is None else min(mn, tile.mins[r.field_slot])
            if r.field_slot in tile.maxes:
                mx = tile.maxes[r.field_slot] if mx is None else max(mx, tile.maxes[r.field_slot])
            if r.code == "d":
                union |= tile.distinct.get(r.field_slot, set())
        if r.code == "c":
            return float(c)
        if r.code == "s":
            return s
        if r.code == "m":
            return s / c if c else 0.0
        if r.code == "v":
            if not c:
                return 0.0
            mu = s / c
            var = q / c - mu * mu
            return math.sqrt(var) if var > 0 else 0.0
        if r.code == "i":
            return mn if mn is not None else 0.0
        if r.code == "x":
            return mx if mx is not None else 0.0
        return float(len(union))
