"""``streaming bench features``: the feature store against the naive approach, same Redis, same run.

Ours: one script call per micro-batch (apply + read every window feature of
every event) plus one pipelined feature-log write. Naive, as a tutorial would
write it: per event, per window feature, await one command to update the
current bucket, one to set its expiry and one to read the window's buckets,
plus one to remember the event id.

Each batch size runs ``repeats`` times on fresh events; the figures are medians.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from streaming.features.store import RedisFeatureStore, ServedVector
from streaming.features.vector import VectorBuilder
from streaming.pipeline.spec import Pipeline
from streaming.synthetic.registry import generator_for

__all__ = ["run_features_bench", "BATCH_SIZES"]

BATCH_SIZES = (1, 4, 16, 64, 256, 1024)


async def _redis_usec(client: aioredis.Redis) -> float:
    """CPU microseconds Redis's main thread has used so far (INFO cpu): its whole cost, I/O included.

    (INFO commandstats would count the commands a script calls twice: once inside the script's
    own time and once under their own names.)
    """
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"]) * 1e6


async def _script_usec(client: aioredis.Redis) -> float:
    """Microseconds spent inside EVALSHA so far (the script, with the commands it calls)."""
    stats = await client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


def _events(pipeline: Pipeline, n: int, seed: int) -> list[dict[str, Any]]:
    gen = generator_for(pipeline, rate=500, seed=seed, start_us=1_800_000_000_000_000, id_prefix=f"b{time.time_ns()}-")
    return [x.event for x in itertools.islice(gen, n)]


async def _ours(client: aioredis.Redis, pipeline: Pipeline, events: list[dict[str, Any]], batch: int) -> dict[str, float]:
    store = RedisFeatureStore(client, pipeline, prefix=f"bench{batch}-{time.time_ns()}:")
    vectors = VectorBuilder(pipeline)
    spec = pipeline.event
    before = await _redis_usec(client)
    script_before = await _script_usec(client)
    t0 = time.perf_counter()
    batches = 0
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        windows = await store.update_and_read(chunk)
        X = vectors.matrix(chunk, [w.values for w in windows])
        await store.log_served([ServedVector(str(e[spec.id_field]), X[j].tolist(), "bench", 0.0,
                                             int(e[spec.time_field])) for j, e in enumerate(chunk)])
        batches += 1
    wall = time.perf_counter() - t0
    redis_us = await _redis_usec(client) - before
    script_us = await _script_usec(client) - script_before
    return {
        "events_per_s": len(events) / wall,
        "round_trips_per_batch": store.round_trips / batches,
        "redis_us_per_event": redis_us / len(events),
        "script_us_per_event": script_us / len(events),
    }


async def _naive(client: aioredis.Redis, pipeline: Pipeline, events: list[dict[str, Any]]) -> dict[str, float]:
    prefix = f"naive-{time.time_ns()}:"
    spec = pipeline.event
    feats = pipeline.window_features
    before = await _redis_usec(client)
    trips = 0
    t0 = time.perf_counter()
    for ev in events:
        await client.set(f"{prefix}seen:{ev[spec.id_field]}", 1, nx=True, ex=86400)
        trips += 1
        ts = int(ev[spec.time_field]) // 1_000_000
        for f in feats:
            ent = "|".join(str(ev[k]) for k in f.entity)
            top = ts // f.bucket_s
            key = f"{prefix}{f.name}:{ent}:"
            value = 1.0 if f.field is None else float(ev[f.field])
            if f.agg == "mean":
                await client.hincrbyfloat(key + str(top), "s", value)
                await client.hincrby(key + str(top), "n", 1)
                trips += 1
            else:
                await client.hincrbyfloat(key + str(top), "v", value)
            await client.expire(key + str(top), f.window_s + f.bucket_s)
            pipe_keys = [key + str(b) for b in range(top - f.n_buckets + 1, top + 1)]
            fields = ("s", "n") if f.agg == "mean" else ("v",)
            for k in pipe_keys:  # one read per bucket, as HGET in a loop
                await client.hmget(k, list(fields))
            trips += 2 + len(pipe_keys)
    wall = time.perf_counter() - t0
    redis_us = await _redis_usec(client) - before
    return {"events_per_s": len(events) / wall, "round_trips_per_event": trips / len(events),
            "redis_us_per_event": redis_us / len(events)}


async def _run(redis_url: str, pipeline: Pipeline, n_ours: int, n_naive: int, say: Callable[[str], None],
               repeats: int = 1) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.config_resetstat()
        naive = await _naive(client, pipeline, _events(pipeline, n_naive, seed=1))
        say(f"naive: {naive['events_per_s']:,.0f} events/s, {naive['round_trips_per_event']:.1f} round trips "
            f"and {naive['redis_us_per_event']:.1f} µs of Redis time per event")
        per_size: dict[str, dict[str, float]] = {}
        for size in BATCH_SIZES:
            runs = [await _ours(client, pipeline, _events(pipeline, n_ours, seed=2 + k), size) for k in range(repeats)]
            r = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            per_size[str(size)] = r
            say(f"batch {size:>5}: {r['events_per_s']:>9,.0f} events/s  {r['round_trips_per_batch']:.0f} round trips "
                f"per batch  {r['redis_us_per_event']:5.1f} µs Redis/event ({r['script_us_per_event']:4.1f} in the script)  "
                f"{r['events_per_s'] / naive['events_per_s']:6.1f}x naive")
    finally:
        await client.aclose()
    at256 = per_size["256"]
    return {
        "bench": "features",
        "pipeline": pipeline.name,
        "events_ours": n_ours,
        "events_naive": n_naive,
        "repeats": repeats,
        "naive": naive,
        "events_per_s": {k: round(v["events_per_s"], 1) for k, v in per_size.items()},
        "round_trips_per_batch": {k: v["round_trips_per_batch"] for k, v in per_size.items()},
        "redis_us_per_event": {k: round(v["redis_us_per_event"], 2) for k, v in per_size.items()},
        "script_us_per_event": {k: round(v["script_us_per_event"], 2) for k, v in per_size.items()},
        "speedup_vs_naive_at_256": round(at256["events_per_s"] / naive["events_per_s"], 2),
        "targets": {
            "speedup_vs_naive_at_256>=10": at256["events_per_s"] / naive["events_per_s"] >= 10,
            "round_trips_per_batch<=2": at256["round_trips_per_batch"] <= 2,
            "redis_us_per_event_at_256<=20": at256["redis_us_per_event"] <= 20,
        },
    }


def run_features_bench(redis_url: str, pipeline: Pipeline, *, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    n_ours, n_naive, repeats = (4_096, 1_000, 1) if quick else (16_384, 5_000, 3)
    return asyncio.run(_run(redis_url, pipeline, n_ours, n_naive, say, repeats))
