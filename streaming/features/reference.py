"""The window features computed in plain Python, with the store's semantics.

Used to build training sets (so training and serving agree) and as the
brute-force reference the Redis store is tested against. Events are applied
in arrival order; each event is applied once (by id), then its window
features are read as of its own event time: the ``n`` buckets ending with the
bucket that holds the event, the event itself included.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from streaming.features.layout import WindowPlan
from streaming.pipeline.spec import Pipeline

__all__ = ["ReferenceStore"]


class ReferenceStore:
    """In-memory tiles; ``update_and_read`` mirrors the Redis script."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.plan = WindowPlan(pipeline)
        self._tiles: dict[tuple[int, str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._seen: set[str] = set()

    def update_and_read(self, events: Iterable[dict[str, Any]]) -> list[list[float]]:
        out = []
        ev_spec = self.pipeline.event
        for ev in events:
            eid = str(ev[ev_spec.id_field])
            ts = int(ev[ev_spec.time_field]) // 1_000_000
            ents = self.plan.entity_values(ev)
            vals = self.plan.field_values(ev)
            fresh = eid not in self._seen
            self._seen.add(eid)
            bidx = []
            for gi, g in enumerate(self.plan.groups):
                b = ts // g.bucket_s
                bidx.append(b)
                if fresh:
                    tile = self._tiles[(gi, ents[g.entity_slot - 1], b)]
                    tile["n"] += 1
                    for fs in g.field_slots:
                        tile[f"s{fs}"] += vals[fs - 1]
            row = []
            for r in self.plan.reads:
                g = self.plan.groups[r.group - 1]
                ent = ents[g.entity_slot - 1]
                c = s = 0.0
                top = bidx[r.group - 1]
                for b in range(top - r.n_buckets + 1, top + 1):
                    found = self._tiles.get((r.group - 1, ent, b))
                    if found is None:
                        continue
                    c += found.get("n", 0.0)
                    s += found.get(f"s{r.field_slot}", 0.0)
                row.append(c if r.agg == "c" else s if r.agg == "s" else (s / c if c > 0 else 0.0))
            out.append(row)
        return out
