"""The online feature store seam and its Redis implementation.

One micro-batch costs at most two round trips: one script call that applies
the batch's events (skipping ids already applied) and returns every event's
window features, and one pipelined write of the feature log (the exact vector
served, for the label join).

On a Redis Cluster (``STREAMING_REDIS_CLUSTER``) a script call may touch one
slot only: the batch's lateness is decided by one call on the slot of the
pipeline's watermarks, then the batch is split by the slot of each entity key
and the slots' calls run together (one pipeline per node), each with its own
applied-id sets; every event's features are assembled from the calls of its
entities' slots (docs/features.md, "Redis security and Redis Cluster").
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoScriptError

from streaming.errors import ConfigError
from streaming.features.layout import WindowPlan, lua_literal
from streaming.pipeline.spec import Pipeline

if TYPE_CHECKING:
    from streaming.settings import Settings

__all__ = ["drop_namespace", "FeatureStore", "RedisFeatureStore", "WindowResult", "ServedVector"]

_SCRIPT = (Path(__file__).parent / "window.lua").read_text()
#: the feature log: one SET ... EX per served vector, in one command (a pipeline of SETs cost the client
#: about 18 µs of CPU per event to pack and parse; this costs about 4)
_LOG_SCRIPT = "local ttl = ARGV[1] for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl) end return #KEYS"
#: Redis Cluster: the lateness of a batch, decided on the slot of the pipeline's watermarks before the batch is
#: split by slot (the same rule as window.lua's: an event older than its partition's watermark minus the lateness
#: is late; the watermark moves to each on-time event's time, never past the clock). KEYS: the watermarks of the
#: batch's partitions; ARGV: lateness (s), clock (epoch s; 0: none), per event its time (s) and the index of its
#: watermark key, as little-endian doubles. Returns one byte per event: 0 on time, 1 late.
_WM_SCRIPT = """
local late, clock = tonumber(ARGV[1]), tonumber(ARGV[2])
if clock <= 0 then clock = math.huge end
local got = redis.call('MGET', unpack(KEYS))
local wm0, wms = {}, {}
for w = 1, #KEYS do wm0[w] = tonumber(got[w] or '') or 0; wms[w] = wm0[w] end
local nums, n = ARGV[3], #ARGV[3] / 16
local out = {}
for i = 0, n - 1 do
  local ts, wi = struct.unpack('<dd', nums, i * 16 + 1)
  if ts >= wms[wi] - late then
    out[i + 1] = '0'
    local moved = ts
    if moved > clock then moved = clock end
    if moved > wms[wi] then wms[wi] = moved end
  else
    out[i + 1] = '1'
  end
end
for w = 1, #KEYS do
  if wms[w] > wm0[w] then redis.call('SET', KEYS[w], string.format('%.17g', wms[w])) end
end
return table.concat(out)
"""


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each Redis Cluster slot, a short hash tag that maps to it (the decimal number first to do so).

    >>> tags = slot_tags()
    >>> len(tags), all(key_slot(("{%s}" % t).encode()) == slot for slot, t in enumerate(tags))
    (16384, True)
    """
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    i = 0
    while missing:
        slot = key_slot(str(i).encode())
        if tags[slot] is None:
            tags[slot] = str(i)
            missing -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


@dataclass(frozen=True)
class WindowResult:
    values: list[float]  # in the order of pipeline.window_features
    applied: bool  # the event changed the aggregates (False: a redelivery, or late)
    late: bool = False  # older than the watermark minus the allowed lateness: not applied

    @classmethod
    def from_status(cls, values: list[float], status: int) -> WindowResult:
        return cls(values, status == 1, status >= 2)


@dataclass(frozen=True)
class ServedVector:
    """What the model saw for one event, kept for the label join."""

    event_id: str
    x: list[float]
    model_version: str
    score: float
    event_time: int
    feature_spec: str = ""  # VectorBuilder.spec_version of the features that built x
    shadow_version: str | None = None
    shadow_score: float | None = None

    def to_bytes(self) -> bytes:
        d = {"x": self.x, "v": self.model_version, "s": self.score, "t": self.event_time, "f": self.feature_spec}
        if self.shadow_version is not None:
            d["hv"], d["h"] = self.shadow_version, self.shadow_score
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, event_id: str, data: bytes) -> ServedVector:
        """Parse a feature-log entry; ValueError saying what is wrong with a malformed one."""
        try:
            d = orjson.loads(data)
            x = [float(v) for v in d["x"]]
            sv = cls(event_id, x, str(d["v"]), float(d["s"]), int(d["t"]), str(d.get("f", "")), d.get("hv"),
                     None if d.get("h") is None else float(d["h"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable feature-log entry for {event_id!r}: {type(exc).__name__}: {exc}") from None
        if not math.isfinite(sum(sv.x) + sv.score):  # NaN or an infinity anywhere makes the sum non-finite
            raise ValueError(f"feature-log entry for {event_id!r} holds a non-finite number")
        return sv


def _parse(event_id: str, data: bytes) -> ServedVector | ValueError:
    try:
        return ServedVector.from_bytes(event_id, data)
    except ValueError as exc:
        return exc


def drop_namespace(url: str, prefix: str, *, batch: int = 1000, settings: Settings | None = None) -> int:
    """Delete every key under ``prefix`` (SCAN + UNLINK; for a run's own namespace); returns how many.

    ``settings``: the Redis credentials, TLS and cluster mode (default: none, a plain Redis); on a cluster every
    primary is scanned and the keys are unlinked slot by slot."""
    from streaming.infra.redis_client import connect_redis
    from streaming.settings import Settings

    if not prefix or "*" in prefix:
        raise ValueError(f"refusing to drop namespace {prefix!r}")
    client = connect_redis(settings or Settings(), url, asyncio=False, socket_timeout=10)
    dropped = 0
    try:
        keys: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                dropped += int(client.unlink(*keys))
                keys = []
        if keys:
            dropped += int(client.unlink(*keys))
    finally:
        client.close()
    return dropped


class FeatureStore(Protocol):
    async def update_and_read(self, events: Sequence[dict[str, Any]], partitions: Sequence[int] | None = None,
                              clock_s: float | None = None) -> list[WindowResult]: ...

    async def log_served(self, served: Sequence[ServedVector]) -> None: ...

    async def read_served(self, event_ids: Sequence[str]) -> list[ServedVector | ValueError | None]: ...

    async def claim_labels(self, event_ids: Sequence[str], sources: Sequence[str]) -> list[str | None]: ...

    async def claim_drift(self, dedupe_key: str, request_id: str, ttl_s: float) -> bool: ...

    async def close(self) -> None: ...


class RedisFeatureStore:
    """Window features in Redis, one script call per micro-batch (on a Redis Cluster: one per slot, see below).

    ``client``: a ``redis.asyncio`` ``Redis`` or ``RedisCluster`` (:meth:`connect` makes the one the settings
    ask for); ``cluster``: split every script call by slot (default: whether ``client`` is a ``RedisCluster``).
    """

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        pipeline: Pipeline,
        *,
        prefix: str | None = None,
        dedupe_ttl_s: int = 86400,
        log_ttl_s: int = 86400,
        cluster: bool | None = None,
    ) -> None:
        self.client = client
        self.pipeline = pipeline
        self.plan = WindowPlan(pipeline)
        self.prefix = prefix if prefix is not None else f"{pipeline.name}:"
        self.cluster = isinstance(client, aioredis.RedisCluster) if cluster is None else cluster
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ConfigError(f"Redis prefix {self.prefix!r}: no braces on a Redis Cluster (they would become the "
                              "hash tag of every key; STREAMING_REDIS_PREFIX)")
        self.dedupe_ttl_s = dedupe_ttl_s
        self.log_ttl_s = log_ttl_s
        # the plan is compiled into the script (one script per pipeline): no per-call decoding
        plan_lua = lua_literal(self.plan.to_script_plan())
        self._script = client.register_script(f"local NONE = -math.huge\nlocal plan = {plan_lua}\n{_SCRIPT}")
        self._log_script = client.register_script(_LOG_SCRIPT)
        self._wm_script = client.register_script(_WM_SCRIPT)
        self._n_reads = len(self.plan.reads)
        self._tags = ["+".join(ent) for ent in self.plan.entities]
        # Redis Cluster: which of an event's reads each subset of its entities answers (a bit per entity)
        read_ents = [r.entity_slot - 1 for r in self.plan.reads]
        self._read_cols = [[c for c, e in enumerate(read_ents) if mask >> e & 1]
                           for mask in range(1 << len(self.plan.entities))]
        self._slots: dict[str, int] = {}  # entity key -> cluster slot (bounded: cleared when large)
        self.round_trips = 0

    @classmethod
    def connect(cls, settings: Settings, url: str | None, pipeline: Pipeline, **kwargs: Any) -> RedisFeatureStore:
        """The store on the Redis of ``url`` (default: ``STREAMING_REDIS_URL``) with the settings' credentials, TLS
        and cluster mode (:func:`streaming.infra.redis_client.connect_redis`); ``kwargs`` go to the constructor."""
        from streaming.infra.redis_client import connect_redis

        client = connect_redis(settings, url, socket_timeout=5.0, socket_connect_timeout=2.0)
        return cls(client, pipeline, **kwargs)

    @classmethod
    def from_url(cls, url: str, pipeline: Pipeline, *, settings: Settings | None = None,
                 **kwargs: Any) -> RedisFeatureStore:
        """:meth:`connect` with ``settings`` (default: none: no credentials besides the URL's, no TLS unless
        rediss://, no cluster)."""
        from streaming.settings import Settings

        return cls.connect(settings or Settings(), url, pipeline, **kwargs)

    def entity_key(self, slot: int, value: str) -> str:
        """The Redis key of one entity value (slot: 1-based index into ``plan.entities``); its hash tag is the
        entity's, so every key of the entity (its HyperLogLogs too) is in one Redis Cluster slot."""
        return f"{self.prefix}e2:{{{self._tags[slot - 1]}={value}}}"

    def watermark_key(self, partition: int) -> str:
        """The Redis key of one input partition's watermark (the latest applied event time, epoch s); on a Redis
        Cluster the pipeline's watermarks share one hash tag (one slot: one call decides a batch's lateness)."""
        if self.cluster:
            return f"{self.prefix}wm:{{{self.prefix}}}:{partition}"
        return f"{self.prefix}wm:{partition}"

    def seen_prefix(self, slot: int | None = None) -> str:
        """The key prefix of the applied-id sets (``<prefix>seen:<period>`` and ``<prefix>seen:gen``); on a Redis
        Cluster one family per slot, tagged to it (``<prefix>seen:{<slot tag>}:``)."""
        if slot is None:
            return f"{self.prefix}seen:"
        return f"{self.prefix}seen:{{{slot_tags()[slot]}}}:"

    async def update_and_read(self, events: Sequence[dict[str, Any]], partitions: Sequence[int] | None = None,
                              clock_s: float | None = None) -> list[WindowResult]:
        """Apply ``events`` to their windows and read every event's window features (one script call).

        ``partitions``: each event's input partition, whose watermark decides whether it is late
        (None: all in partition 0). ``clock_s``: the caller's clock (epoch s); no watermark moves past
        it, so an event stamped ahead cannot make on-time events late (None: no bound, for replays
        of recorded or synthetic time).

        On a Redis Cluster: two steps, the lateness on the watermarks' slot, then one call per slot of the
        batch's entity keys, together (:meth:`_update_by_slot`).
        """
        if not events:
            return []
        if self.cluster:
            return await self._update_by_slot(events, partitions, clock_s)
        spec = self.pipeline.event
        plan = self.plan
        ne = len(plan.entities)
        # the batch's distinct entity keys, those of entity 1 first, and each event's index into them
        index: list[dict[str, int]] = [{} for _ in range(ne)]
        ents = [plan.entity_values(ev) for ev in events]
        for s in range(ne):
            idx = index[s]
            for vals in ents:
                idx.setdefault(vals[s], len(idx))
        keys: list[str] = []
        offsets = []
        for s in range(ne):
            offsets.append(len(keys) + 1)
            keys.extend(self.entity_key(s + 1, v) for v in index[s])
        parts = partitions if partitions is not None else [0] * len(events)
        wm_index: dict[int, int] = {}
        for p in parts:
            wm_index.setdefault(p, len(wm_index) + 1)
        keys.extend(self.watermark_key(p) for p in wm_index)
        nums: list[float] = []
        strings: list[str] = []
        for ev, vals, p in zip(events, ents, parts, strict=True):
            nums.append(int(ev[spec.time_field]) // 1_000_000)
            nums.append(wm_index[p])
            nums.extend(index[s][v] + offsets[s] for s, v in enumerate(vals))
            nums.extend(plan.numeric_values(ev))
            strings.append(str(ev[spec.id_field]))
            strings.extend(plan.distinct_values(ev))
        args: list[Any] = [self.seen_prefix(), self.dedupe_ttl_s, *(len(i) for i in index), len(wm_index),
                           int(clock_s) if clock_s is not None else 0,
                           struct.pack(f"<{len(nums)}d", *nums), *strings]
        self.round_trips += 1
        raw = await self._script(keys=keys, args=args)
        rows = np.frombuffer(raw, dtype="<f8").reshape(len(events), self._n_reads + 1)
        return [WindowResult.from_status(row[:-1].tolist(), int(row[-1])) for row in rows]

    def _slot(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= 200_000:
                self._slots.clear()
            slot = self._slots[key] = key_slot(key.encode())
        return slot

    async def _update_by_slot(self, events: Sequence[dict[str, Any]], partitions: Sequence[int] | None,
                              clock_s: float | None) -> list[WindowResult]:
        """:meth:`update_and_read` on a Redis Cluster, where a script call may touch one slot only.

        1. One call on the slot of the pipeline's watermarks decides which events are late and moves the
           watermarks (``_WM_SCRIPT``: window.lua's rule, which it then skips).
        2. The batch is split by the slot of each entity key: an event goes to the call of each slot its
           entities' keys are in, with only those entities (an entity of another slot has index 0). The calls
           run together, one pipeline per node. Each slot keeps its own applied-id sets, so an event is applied
           at most once to each of its entities, whatever happens to the other slots' calls.
        3. Each event's reads are taken from the call of the slot of their entity; its status is late (step 1),
           else applied when a call applied it, else seen before.
        """
        spec = self.pipeline.event
        plan = self.plan
        ne = len(plan.entities)
        n = len(events)
        nreads = self._n_reads
        parts = partitions if partitions is not None else [0] * n
        times = [int(ev[spec.time_field]) // 1_000_000 for ev in events]
        clock = int(clock_s) if clock_s is not None else 0
        wm_index: dict[int, int] = {}
        for p in parts:
            wm_index.setdefault(p, len(wm_index) + 1)
        pairs: list[int] = []
        for t, p in zip(times, parts, strict=True):
            pairs += (t, wm_index[p])
        self.round_trips += 1
        late = await self._wm_script(keys=[self.watermark_key(p) for p in wm_index],
                                     args=[plan.lateness_s, clock, struct.pack(f"<{2 * n}d", *pairs)])
        if isinstance(late, str):  # a client with decode_responses
            late = late.encode()
        # rows by slot: slot -> event index -> {entity (0-based): key}
        by_slot: dict[int, dict[int, dict[int, str]]] = {}
        for i, ev in enumerate(events):
            for s, v in enumerate(plan.entity_values(ev)):
                key = self.entity_key(s + 1, v)
                by_slot.setdefault(self._slot(key), {}).setdefault(i, {})[s] = key
        calls: list[tuple[list[str], list[Any]]] = []
        rows_of: list[list[tuple[int, int]]] = []  # per call: (event index, bit mask of its entities in the call)
        for slot, rows in by_slot.items():
            index: list[dict[str, int]] = [{} for _ in range(ne)]
            for ekeys in rows.values():
                for s, key in ekeys.items():
                    index[s].setdefault(key, len(index[s]))
            keys: list[str] = []
            offsets: list[int] = []
            for s in range(ne):
                offsets.append(len(keys) + 1)
                keys.extend(index[s])
            nums: list[float] = []
            strings: list[str] = []
            row_list: list[tuple[int, int]] = []
            for i, ekeys in rows.items():
                ev = events[i]
                nums.append(times[i])
                nums.append(-1 if late[i] == 49 else 0)  # b"1": late
                mask = 0
                for s in range(ne):
                    ekey = ekeys.get(s)
                    if ekey is None:
                        nums.append(0)
                    else:
                        nums.append(index[s][ekey] + offsets[s])
                        mask |= 1 << s
                nums.extend(plan.numeric_values(ev))
                strings.append(str(ev[spec.id_field]))
                strings.extend(plan.distinct_values(ev))
                row_list.append((i, mask))
            calls.append((keys, [self.seen_prefix(slot), self.dedupe_ttl_s, *(len(x) for x in index), 0, clock,
                                 struct.pack(f"<{len(nums)}d", *nums), *strings]))
            rows_of.append(row_list)
        self.round_trips += 1
        raws = await self._call_by_slot(self._script, calls)
        values: list[list[float]] = [[0.0] * nreads for _ in range(n)]
        status = [0] * n
        full = (1 << ne) - 1
        for row_list, raw in zip(rows_of, raws, strict=True):
            got = np.frombuffer(raw, dtype="<f8").reshape(len(row_list), nreads + 1).tolist()
            for (i, mask), row in zip(row_list, got, strict=True):
                st = int(row[nreads])
                if st > status[i]:
                    status[i] = st
                if mask == full:
                    values[i] = row[:nreads]
                else:
                    vi = values[i]
                    for c in self._read_cols[mask]:
                        vi[c] = row[c]
        return [WindowResult.from_status(v, 2 if late[i] == 49 else st)
                for i, (v, st) in enumerate(zip(values, status, strict=True))]

    async def _call_by_slot(self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per (keys, args) of ``calls`` (each call's keys in one slot) on a Redis Cluster:
        the calls together, in one pipeline per node; a node that does not know the script yet (a new or
        failed-over node) gets it (SCRIPT LOAD on every primary) and its calls are sent again."""
        if len(calls) == 1:
            keys, args = calls[0]
            return [await script(keys=keys, args=args)]
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for c in todo:
                keys, args = calls[c]
                # redis-py blocks pipe.evalsha on a cluster (a NOSCRIPT there is not retried): sent as a plain
                # command, routed by its keys' slot, and a NOSCRIPT is handled here
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            got = await pipe.execute(raise_on_error=False)
            again = []
            for c, r in zip(todo, got, strict=True):
                if isinstance(r, NoScriptError) and attempt == 0:
                    again.append(c)
                elif isinstance(r, BaseException):
                    raise r
                else:
                    results[c] = r
            if not again:
                break
            await self.client.script_load(script.script)
            todo = again
        return results

    def _log_key(self, event_id: str) -> str:
        return f"{self.prefix}flog:{{{event_id}}}"

    async def log_served(self, served: Sequence[ServedVector]) -> None:
        if not served:
            return
        self.round_trips += 1
        if self.cluster:  # one key per event, each in its own slot: a SET each, one pipeline per node
            pipe = self.client.pipeline(transaction=False)
            for sv in served:
                pipe.set(self._log_key(sv.event_id), sv.to_bytes(), ex=self.log_ttl_s)
            await pipe.execute()
            return
        await self._log_script(keys=[self._log_key(s.event_id) for s in served],
                               args=[self.log_ttl_s, *(s.to_bytes() for s in served)])

    async def read_served(self, event_ids: Sequence[str]) -> list[ServedVector | ValueError | None]:
        """Each event's served vector: None when the log has none, the ValueError of an unreadable entry."""
        if not event_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for eid in event_ids:
            pipe.get(self._log_key(eid))
        self.round_trips += 1
        raw = await pipe.execute()
        return [None if d is None else _parse(eid, d) for eid, d in zip(event_ids, raw, strict=True)]

    async def claim_labels(self, event_ids: Sequence[str], sources: Sequence[str]) -> list[str | None]:
        """Mark each event's label as learned from the label record ``sources[i]`` (``"partition:offset"``).

        Returns None for a label claimed now, else the source that claimed it before: another record
        (a second label for the event) or the same one (a redelivery: the caller knows whether its
        learner's state already holds it). The marks live as long as the feature log (a label for an
        older event finds no vector anyway). One ``SET NX GET`` per label (Redis 7)."""
        if not event_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for eid, src in zip(event_ids, sources, strict=True):
            pipe.set(f"{self.prefix}lab:{{{eid}}}", src.encode(), nx=True, ex=self.log_ttl_s, get=True)
        self.round_trips += 1
        return [None if r is None else (r.decode() if isinstance(r, bytes) else str(r)) for r in await pipe.execute()]

    async def claim_drift(self, dedupe_key: str, request_id: str, ttl_s: float) -> bool:
        """Claim the right to publish the retrain request of ``dedupe_key``'s model version: True for the
        first claimant (any worker, any monitor) within ``ttl_s``."""
        self.round_trips += 1
        model_version = dedupe_key.rsplit(":", 1)[0]
        return bool(await self.client.set(f"{self.prefix}drift:{{{model_version}}}", request_id.encode(),
                                          nx=True, ex=max(1, int(ttl_s))))

    async def close(self) -> None:
        await self.client.aclose()
