"""How window features map to tiles (per-entity, per-bucket partial aggregates).

Window features that share an entity and a bucket size share one tile: a Redis
hash per (entity value, bucket size, bucket index) holding the event count
``n`` and one sum per aggregated field. The store and the reference
implementation both follow this plan, so they cannot disagree on semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streaming.pipeline.spec import Pipeline, WindowFeature

__all__ = ["TileGroup", "WindowRead", "WindowPlan", "LATENESS_S"]

#: Extra time a tile is kept after its window closed (allowed lateness).
LATENESS_S = 60


@dataclass(frozen=True)
class TileGroup:
    entity: tuple[str, ...]
    entity_slot: int
    bucket_s: int
    field_slots: tuple[int, ...]
    ttl_s: int

    @property
    def tag(self) -> str:
        return "+".join(self.entity)


@dataclass(frozen=True)
class WindowRead:
    name: str
    group: int
    n_buckets: int
    agg: str  # "c" count, "s" sum, "m" mean
    field_slot: int  # 0 for count


class WindowPlan:
    """The tile groups and reads of a pipeline's window features."""

    def __init__(self, pipeline: Pipeline) -> None:
        feats: tuple[WindowFeature, ...] = pipeline.window_features
        self.entities: list[tuple[str, ...]] = list(dict.fromkeys(f.entity for f in feats))
        self.fields: list[str] = list(dict.fromkeys(f.field for f in feats if f.field is not None))
        groups: dict[tuple[tuple[str, ...], int], dict[str, Any]] = {}
        for f in feats:
            g = groups.setdefault((f.entity, f.bucket_s), {"fields": [], "window": 0})
            if f.field is not None and f.field not in g["fields"]:
                g["fields"].append(f.field)
            g["window"] = max(g["window"], f.window_s)
        self.groups = [
            TileGroup(
                entity=ent,
                entity_slot=self.entities.index(ent) + 1,
                bucket_s=b,
                field_slots=tuple(self.fields.index(x) + 1 for x in g["fields"]),
                ttl_s=g["window"] + b + LATENESS_S,
            )
            for (ent, b), g in groups.items()
        ]
        index = {(g.entity, g.bucket_s): i for i, g in enumerate(self.groups)}
        self.reads = [
            WindowRead(
                name=f.name,
                group=index[(f.entity, f.bucket_s)] + 1,
                n_buckets=f.n_buckets,
                agg={"count": "c", "sum": "s", "mean": "m"}[f.agg],
                field_slot=0 if f.field is None else self.fields.index(f.field) + 1,
            )
            for f in feats
        ]

    def entity_values(self, event: dict[str, Any]) -> list[str]:
        return ["|".join(str(event[k]) for k in ent) for ent in self.entities]

    def field_values(self, event: dict[str, Any]) -> list[float]:
        return [float(event[f] or 0.0) for f in self.fields]

    def to_json(self) -> dict[str, Any]:
        """The plan as the Lua script reads it (1-based slots)."""
        return {
            "ne": len(self.entities),
            "nf": len(self.fields),
            "groups": [
                {"e": g.entity_slot, "b": g.bucket_s, "t": g.ttl_s, "f": list(g.field_slots), "tag": g.tag}
                for g in self.groups
            ],
            "reads": [{"g": r.group, "n": r.n_buckets, "a": r.agg, "f": r.field_slot} for r in self.reads],
        }
