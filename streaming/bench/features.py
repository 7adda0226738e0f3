"""``streaming bench features``: the feature store against the naive approach, same Redis, same run.

Ours: one script call per micro-batch (apply + read every window feature of
every event) plus one pipelined feature-log write. Naive, as a tutorial would
write it: per event, per window feature, await one command to update the
current bucket, one to set its expiry and one to read the window's buckets,
plus one to remember the event id.

Each batch size runs ``repeats`` times on fresh events; the figures are medians.

``--cluster`` (:func:`run_cluster_bench`): ours alone, the same events in the same batches on one private
``redis-server`` and on a private local 3-node Redis Cluster (:func:`streaming.infra.redis_cluster.local_cluster`),
both through ``RedisFeatureStore.connect`` (``Settings(redis_cluster=True)`` for the cluster): Redis CPU per event
(every node's ``used_cpu_sys + used_cpu_user``), this process's CPU per event, batch wall p50/p99, and the ratio
cluster/single of each; the two stores' vectors must be equal, bit for bit.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.crc import key_slot
from tqdm import tqdm

from streaming.features.store import RedisFeatureStore, ServedVector
from streaming.features.vector import VectorBuilder
from streaming.infra.redis_cluster import local_cluster, local_redis
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from streaming.synthetic.registry import generator_for

__all__ = ["run_features_bench", "run_cluster_bench", "BATCH_SIZES", "CLUSTER_FIGURES"]

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


# -- --cluster: the same workload on one Redis and on a local 3-node Redis Cluster ---------------------------------

#: the per-event / per-batch figures of each store, and of the ratio cluster/single (JSON keys, table rows)
CLUSTER_FIGURES = {
    "redis_cpu_us_per_event": "Redis CPU µs/event (all nodes)",
    "client_cpu_us_per_event": "client CPU µs/event",
    "batch_wall_ms_p50": "batch wall p50 ms",
    "batch_wall_ms_p99": "batch wall p99 ms",
}


async def _node_cpu_s(nodes: list[aioredis.Redis]) -> list[float]:
    """CPU seconds each Redis process has used so far (INFO cpu: used_cpu_sys + used_cpu_user, every thread)."""
    out = []
    for node in nodes:
        cpu = await node.info("cpu")
        out.append(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))
    return out


@dataclass
class _StoreRun:
    """One store's measured batches of one run."""

    events: int = 0
    redis_cpu_s: list[float] = field(default_factory=list)  # per node
    client_cpu_s: float = 0.0
    walls_s: list[float] = field(default_factory=list)  # per batch
    round_trips: int = 0
    slots: int = 0  # distinct cluster slots of the batches' entity keys, summed over the batches
    digest: str = ""  # sha256 of every batch's vectors (warm-up included) and statuses, in order


async def _drive(store: RedisFeatureStore, nodes: list[aioredis.Redis], pipeline: Pipeline, events: list[dict[str, Any]],
                 batch: int, warmup: int, tick: Callable[[], None], keep: list[np.ndarray] | None) -> _StoreRun:
    """The existing bench's path per batch (update_and_read, the vectors, log_served), timed batch by batch; the
    first ``warmup`` batches (script loading, connections) are not counted."""
    vectors = VectorBuilder(pipeline)
    spec = pipeline.event
    run = _StoreRun()
    digest = hashlib.sha256()
    chunks = [events[i : i + batch] for i in range(0, len(events), batch)]
    redis_before: list[float] = []
    trips_before = 0
    for k, chunk in enumerate(chunks):
        if k == warmup:
            redis_before = await _node_cpu_s(nodes)
            trips_before = store.round_trips
        c0, t0 = time.process_time(), time.perf_counter()
        windows = await store.update_and_read(chunk)
        X = vectors.matrix(chunk, [w.values for w in windows])
        await store.log_served([ServedVector(str(e[spec.id_field]), X[j].tolist(), "bench", 0.0,
                                             int(e[spec.time_field])) for j, e in enumerate(chunk)])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # outside the timed part: the equality check, the slot count, the progress bar
        digest.update(X.tobytes())
        digest.update(bytes(2 * w.late + w.applied for w in windows))
        if keep is not None:
            keep.append(X)
        if k >= warmup:
            run.events += len(chunk)
            run.client_cpu_s += cpu
            run.walls_s.append(wall)
            if store.cluster:
                run.slots += len({key_slot(store.entity_key(s + 1, v).encode()) for ev in chunk
                                  for s, v in enumerate(store.plan.entity_values(ev))})
        tick()
    run.redis_cpu_s = [a - b for a, b in zip(await _node_cpu_s(nodes), redis_before, strict=True)]
    run.round_trips = store.round_trips - trips_before
    run.digest = digest.hexdigest()
    return run


def _summary(runs: list[_StoreRun], batch_count: int) -> dict[str, Any]:
    walls_ms = np.array([w for r in runs for w in r.walls_s]) * 1e3
    redis_us = [sum(r.redis_cpu_s) * 1e6 / r.events for r in runs]
    client_us = [r.client_cpu_s * 1e6 / r.events for r in runs]
    out: dict[str, Any] = {
        "redis_cpu_us_per_event": round(statistics.median(redis_us), 2),
        "client_cpu_us_per_event": round(statistics.median(client_us), 2),
        "batch_wall_ms_p50": round(float(np.percentile(walls_ms, 50)), 3),
        "batch_wall_ms_p99": round(float(np.percentile(walls_ms, 99)), 3),
        "events_per_s": round(statistics.median(r.events / sum(r.walls_s) for r in runs), 1),
        "round_trips_per_batch": statistics.median(r.round_trips / batch_count for r in runs),
        "nodes": len(runs[0].redis_cpu_s),
        "redis_cpu_us_per_event_by_node": [round(statistics.median(r.redis_cpu_s[i] * 1e6 / r.events for r in runs), 2)
                                           for i in range(len(runs[0].redis_cpu_s))],
        "runs": {"redis_cpu_us_per_event": [round(x, 2) for x in redis_us],
                 "client_cpu_us_per_event": [round(x, 2) for x in client_us]},
    }
    if any(r.slots for r in runs):
        out["slots_per_batch"] = round(statistics.median(r.slots / batch_count for r in runs), 1)
    return out


def cluster_table(result: dict[str, Any]) -> list[str]:
    """The result of :func:`run_cluster_bench` as a table, one string per line."""
    single, cluster, ratio = result["single"], result["cluster"], result["ratio_cluster_over_single"]
    nodes = f"{result['cluster_nodes']}-node cluster"
    head = f"{'':32}{'one Redis':>12}{nodes:>18}{'cluster/single':>16}"
    lines = [f"feature store, {result['pipeline']} pipeline: {result['batches']} batches of {result['batch_size']} "
             f"events x {result['repeats']} run(s), the same events on both (medians over the runs; wall: "
             f"percentiles over every batch)", head, "-" * len(head)]
    for key, label in CLUSTER_FIGURES.items():
        lines.append(f"{label:32}{single[key]:>12,.2f}{cluster[key]:>18,.2f}{ratio[key]:>15.2f}x")
    lines.append(f"{'events/s':32}{single['events_per_s']:>12,.0f}{cluster['events_per_s']:>18,.0f}"
                 f"{cluster['events_per_s'] / single['events_per_s']:>15.2f}x")
    lines.append(f"{'round trips per batch':32}{single['round_trips_per_batch']:>12g}"
                 f"{cluster['round_trips_per_batch']:>18g}")
    if "slots_per_batch" in cluster:
        lines.append(f"{'cluster slots per batch':32}{'':>12}{cluster['slots_per_batch']:>18,.1f}")
    by_node = ", ".join(f"{x:.1f}" for x in cluster["redis_cpu_us_per_event_by_node"])
    lines.append(f"cluster Redis CPU µs/event by node: {by_node}")
    lines.append("vectors: " + ("identical on both (bit for bit)" if result["vectors_identical"] else "DIFFERENT"))
    return lines


async def _cluster_run(single_url: str, cluster_url: str, cluster_node_urls: list[str], pipeline: Pipeline, *,
                       batch: int, batches: int, warmup: int, repeats: int, say: Callable[[str], None],
                       progress: bool = True, vectors: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
    """``repeats`` runs, each on fresh events (and a fresh key prefix): the same ``warmup + batches`` batches of
    ``batch`` events through a store on ``single_url`` and one on the cluster, in turns (which goes first
    alternates). ``vectors``, when given, receives each store's vectors, batch by batch (``single``, ``cluster``)."""
    settings = {"single": Settings(), "cluster": Settings(redis_cluster=True)}
    urls = {"single": single_url, "cluster": cluster_url}
    nodes = {"single": [aioredis.Redis.from_url(single_url)],
             "cluster": [aioredis.Redis.from_url(u) for u in cluster_node_urls]}
    runs: dict[str, list[_StoreRun]] = {"single": [], "cluster": []}
    keep: dict[str, list[np.ndarray]] = {"single": [], "cluster": []}
    per_run = warmup + batches
    bar = tqdm(total=2 * repeats * per_run, unit="batch", desc="features --cluster", dynamic_ncols=True, leave=False,
               disable=None if progress else True)
    try:
        for k in range(repeats):
            events = _events(pipeline, per_run * batch, seed=100 + k)
            order = ("single", "cluster") if k % 2 == 0 else ("cluster", "single")
            for which in order:
                bar.set_description(f"run {k + 1}/{repeats} {which}")
                store = RedisFeatureStore.connect(settings[which], urls[which], pipeline,
                                                  prefix=f"benchcl{k}-{time.time_ns()}:")
                try:
                    run = await _drive(store, nodes[which], pipeline, events, batch, warmup, lambda: bar.update(1),
                                       keep[which] if vectors is not None else None)
                finally:
                    await store.close()
                runs[which].append(run)
                with tqdm.external_write_mode():
                    say(f"run {k + 1}/{repeats} {which:>7}: {sum(run.redis_cpu_s) * 1e6 / run.events:7.1f} µs Redis "
                        f"CPU/event, {run.client_cpu_s * 1e6 / run.events:7.1f} µs client CPU/event, batch wall p50 "
                        f"{statistics.median(run.walls_s) * 1e3:8.2f} ms")
    finally:
        bar.close()
        for ns in nodes.values():
            for node in ns:
                await node.aclose()
    if vectors is not None:
        vectors.update(keep)
    single, cluster = _summary(runs["single"], batches), _summary(runs["cluster"], batches)
    identical = all(a.digest == b.digest for a, b in zip(runs["single"], runs["cluster"], strict=True))
    return {
        "bench": "features-cluster",
        "pipeline": pipeline.name,
        "batch_size": batch,
        "batches": batches,
        "warmup_batches": warmup,
        "repeats": repeats,
        "events_per_store": batches * batch * repeats,
        "cluster_nodes": len(cluster_node_urls),
        "single": single,
        "cluster": cluster,
        "ratio_cluster_over_single": {key: round(cluster[key] / single[key], 2) if single[key] else None
                                      for key in CLUSTER_FIGURES},
        "vectors_identical": identical,
        "vectors_sha256": [r.digest for r in runs["single"]],
    }


def run_cluster_bench(pipeline: Pipeline, *, quick: bool, say: Callable[[str], None], nodes: int = 3,
                      root: Path | None = None, progress: bool = True, batch: int | None = None,
                      batches: int | None = None, repeats: int | None = None,
                      vectors: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
    """The same workload on one private ``redis-server`` and on a private local ``nodes``-node Redis Cluster, both
    started here (under ``root``, default a tmp dir) and stopped at the end; then the table (through ``say``).

    Full: 3 runs of 40 batches of 512 events (after 2 warm-up batches) per store; quick: 1 run of 8 batches.
    """
    b, n, r = (512, 8, 1) if quick else (512, 40, 3)
    batch, batches, repeats = batch or b, batches or n, repeats or r
    with tempfile.TemporaryDirectory(prefix="bench-features-cluster-") as tmp:
        base = root or Path(tmp)
        with local_redis(base / "single") as one, local_cluster(nodes, base / "cluster") as cl:
            say(f"one redis-server at {one.url}; {nodes}-node Redis Cluster at "
                f"{', '.join(f'127.0.0.1:{p}' for p in cl.ports)}")
            result = asyncio.run(_cluster_run(one.url, cl.url, cl.node_urls, pipeline, batch=batch, batches=batches,
                                              warmup=2, repeats=repeats, say=say, progress=progress, vectors=vectors))
    for line in cluster_table(result):
        say(line)
    return result
