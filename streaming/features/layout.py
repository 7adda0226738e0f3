"""How window features map onto per-entity state (the plan the store and the reference share).

Each entity value (e.g. one card) has one Redis key holding a MessagePack map.
Window features of that
entity that share a bucket size form a *tile group*; a group keeps, per
bucket, the count ``n`` and the partial aggregates its features need (sum,
sum of squares, min, max per field). Distinct counts use one HyperLogLog per
bucket. ``last`` and ``seconds_since_last`` read the entity's latest event.
See docs/features.md for the semantics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streaming.pipeline.spec import Pipeline, WindowFeature

__all__ = ["TileGroup", "WindowRead", "WindowPlan", "AGG_CODES", "lua_literal"]

#: one-letter codes of the aggregations in the plan (and in window.lua)
AGG_CODES = {
    "count": "c",
    "sum": "s",
    "mean": "m",
    "min": "i",
    "max": "x",
    "stddev": "v",
    "distinct": "d",
    "last": "l",
    "seconds_since_last": "t",
}


@dataclass(frozen=True)
class TileGroup:
    entity_slot: int  # 1-based
    bucket_s: int
    horizon_s: int  # the longest window of the group
    keep: int  # buckets kept behind the newest one (horizon + lateness)
    sums: tuple[int, ...]  # numeric field slots whose sums are kept
    squares: tuple[int, ...]
    mins: tuple[int, ...]
    maxes: tuple[int, ...]
    hlls: tuple[int, ...]  # distinct field slots


@dataclass(frozen=True)
class WindowRead:
    name: str
    code: str
    entity_slot: int
    group: int  # 1-based; 0 for last / seconds_since_last
    n_buckets: int
    field_slot: int  # numeric slot, or distinct slot for "d"; 0 when none
    window_s: int


class WindowPlan:
    """The entities, field slots, tile groups and reads of a pipeline's window features."""

    def __init__(self, pipeline: Pipeline) -> None:
        feats: tuple[WindowFeature, ...] = pipeline.window_features
        self.lateness_s = pipeline.lateness_s
        self.entities: list[tuple[str, ...]] = list(dict.fromkeys(f.entity for f in feats))
        self.numeric: list[str] = list(
            dict.fromkeys(f.field for f in feats if f.field is not None and f.agg != "distinct")
        )
        self.distinct: list[str] = list(dict.fromkeys(f.field for f in feats if f.field is not None and f.agg == "distinct"))
        bucketed = [f for f in feats if f.agg not in ("last", "seconds_since_last")]
        keys = list(dict.fromkeys((f.entity, f.bucket_s) for f in bucketed))
        self.groups: list[TileGroup] = []
        for ent, b in keys:
            members = [f for f in bucketed if (f.entity, f.bucket_s) == (ent, b)]
            horizon = max(f.window_s for f in members)

            def slots(aggs: tuple[str, ...], members: list[WindowFeature] = members) -> tuple[int, ...]:
                return tuple(sorted({self.numeric.index(f.field) + 1 for f in members
                                     if f.agg in aggs and f.field is not None}))

            self.groups.append(
                TileGroup(
                    entity_slot=self.entities.index(ent) + 1,
                    bucket_s=b,
                    horizon_s=horizon,
                    keep=math.ceil((horizon + self.lateness_s) / b) + 1,
                    sums=slots(("sum", "mean", "stddev")),
                    squares=slots(("stddev",)),
                    mins=slots(("min",)),
                    maxes=slots(("max",)),
                    hlls=tuple(sorted({self.distinct.index(f.field) + 1 for f in members
                                       if f.agg == "distinct" and f.field is not None})),
                )
            )
        self.reads: list[WindowRead] = []
        for f in feats:
            code = AGG_CODES[f.agg]
            ent_slot = self.entities.index(f.entity) + 1
            if code in ("l", "t"):
                slot = self.numeric.index(f.field) + 1 if f.field is not None else 0
                self.reads.append(WindowRead(f.name, code, ent_slot, 0, 0, slot, f.window_s))
                continue
            group = keys.index((f.entity, f.bucket_s)) + 1
            if f.field is None:
                slot = 0
            elif code == "d":
                slot = self.distinct.index(f.field) + 1
            else:
                slot = self.numeric.index(f.field) + 1
            self.reads.append(WindowRead(f.name, code, ent_slot, group, f.n_buckets, slot, f.window_s))
        # per entity: the numeric slots whose latest value is kept, whether the latest time is kept
        self.last_slots: list[tuple[int, ...]] = []
        self.tracks_last: list[bool] = []
        self.entity_ttl: list[int] = []
        for i in range(len(self.entities)):
            reads = [r for r in self.reads if r.entity_slot == i + 1]
            self.last_slots.append(tuple(sorted({r.field_slot for r in reads if r.code == "l"})))
            self.tracks_last.append(any(r.code in ("l", "t") for r in reads))
            spans = [g.horizon_s + g.bucket_s for g in self.groups if g.entity_slot == i + 1]
            spans += [r.window_s for r in reads if r.code in ("l", "t")]
            self.entity_ttl.append(max(spans) + self.lateness_s)

    def entity_values(self, event: dict[str, Any]) -> list[str]:
        return ["|".join(str(event[k]) for k in ent) for ent in self.entities]

    def numeric_values(self, event: dict[str, Any]) -> list[float]:
        return [float(event[f] or 0.0) for f in self.numeric]

    def distinct_values(self, event: dict[str, Any]) -> list[str]:
        return [str(event[f]) for f in self.distinct]

    def to_script_plan(self) -> dict[str, Any]:
        """The plan as window.lua reads it (1-based slots and positions), with each record's layout.

        A group's record is the bucket number, the count, then its sums, sums of squares, minima
        and maxima; ``sa``/``qa``/``ma``/``Ma`` are their offsets from the record's first element.
        An entity's state is its header length, header (latest time, values of ``lf``), then per
        group of the entity its bucket count and records; ``new`` is the state of a new entity
        (``None`` stands for -inf: no latest event yet).
        """
        groups: list[dict[str, Any]] = []
        widths: list[list[int]] = [[] for _ in self.entities]
        for g in self.groups:
            offsets: list[list[int]] = []
            w = 2
            for fields in (g.sums, g.squares, g.mins, g.maxes):
                offsets.append(list(range(w, w + len(fields))))
                w += len(fields)
            widths[g.entity_slot - 1].append(w)
            groups.append({
                "e": g.entity_slot, "b": g.bucket_s, "keep": g.keep, "t": g.horizon_s + g.bucket_s + self.lateness_s,
                "w": w, "ei": len(widths[g.entity_slot - 1]),
                "s": list(g.sums), "q": list(g.squares), "m": list(g.mins), "M": list(g.maxes), "h": list(g.hlls),
                "sa": offsets[0], "qa": offsets[1], "ma": offsets[2], "Ma": offsets[3],
            })
        ents = []
        for i, (ent, ttl, last, lf) in enumerate(zip(self.entities, self.entity_ttl, self.tracks_last, self.last_slots,
                                                     strict=True)):
            header: list[float | None] = [None] + [0] * len(lf) if last else []
            ents.append({"tag": "+".join(ent), "ttl": str(ttl), "last": last, "lf": list(lf), "widths": widths[i],
                         "new": [len(header), *header] + [0] * len(widths[i])})
        reads = []
        for r in self.reads:
            d: dict[str, Any] = {"a": r.code, "e": r.entity_slot, "g": r.group, "n": r.n_buckets, "f": r.field_slot,
                                 "w": r.window_s}
            if r.code == "l":
                d["li"] = self.last_slots[r.entity_slot - 1].index(r.field_slot) + 1
            elif r.code not in ("t", "d"):
                gd = groups[r.group - 1]
                d.update(b=gd["b"], rw=gd["w"], ei=gd["ei"])
                if r.code == "i":
                    d["o"] = gd["ma"][gd["m"].index(r.field_slot)]
                elif r.code == "x":
                    d["o"] = gd["Ma"][gd["M"].index(r.field_slot)]
                elif r.code != "c":
                    d["o"] = gd["sa"][gd["s"].index(r.field_slot)]
                    if r.code == "v":
                        d["oq"] = gd["qa"][gd["q"].index(r.field_slot)]
            reads.append(d)
        return {"ne": len(self.entities), "nn": len(self.numeric), "nh": len(self.distinct), "late": self.lateness_s,
                "ents": ents, "groups": groups, "reads": reads}


def lua_literal(value: Any) -> str:
    """A Lua expression for plain data: dicts, lists, strings, numbers, booleans; None is ``NONE``."""
    if value is None:
        return "NONE"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list | tuple):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))
