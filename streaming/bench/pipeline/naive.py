"""``python -m streaming.bench.pipeline.naive``: the fraud pipeline as a tutorial would write it.

A Faust agent that takes one event at a time (``stream.events()``), decodes it, computes its window
features with one awaited Redis command per bucket operation (the naive approach of
``streaming bench features``: per window feature, update the current bucket, set its expiry, read
each bucket of the window with its own ``HMGET``; plus a ``SET NX`` of the event id), runs the ONNX
model on that one row on the event loop, and publishes a prediction (the same schema and timestamps
as our worker's, so the load test matches it by event id and shows the stage breakdown) with
``topic.send`` and awaits its acknowledgement before taking the next event.

What it shares with our worker, to keep the comparison about the processing and not about
settings: the ``streaming://`` transport with the 5 ms fetch wait, the same ``faust.App`` keywords
(producer linger, acks, session timeout), the same model file and ONNX Runtime options. Window
aggregations other than sum, count and mean are served as the bucket sum: the point is the Redis
traffic pattern, not the values (no challenger score, no feature log).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings

__all__ = ["naive_window_values", "build_app", "main"]


def _now_us() -> int:
    return time.time_ns() // 1000


async def naive_window_values(client: aioredis.Redis, pipeline: Pipeline, ev: dict[str, Any], prefix: str) -> list[float]:
    """One event's window features, one awaited command at a time (streaming/bench/features.py's naive pattern)."""
    spec = pipeline.event
    await client.set(f"{prefix}seen:{ev[spec.id_field]}", 1, nx=True, ex=86400)
    ts = int(ev[spec.time_field]) // 1_000_000
    values = []
    for f in pipeline.window_features:
        ent = "|".join(str(ev[k]) for k in f.entity)
        top = ts // f.bucket_s
        key = f"{prefix}{f.name}:{ent}:"
        value = 1.0 if f.field is None else float(ev[f.field] or 0.0)
        if f.agg == "mean":
            await client.hincrbyfloat(key + str(top), "s", value)
            await client.hincrby(key + str(top), "n", 1)
        else:
            await client.hincrbyfloat(key + str(top), "v", value)
        await client.expire(key + str(top), f.window_s + f.bucket_s)
        fields = ["s", "n"] if f.agg == "mean" else ["v"]
        got = [await client.hmget(key + str(b), fields) for b in range(top - f.n_buckets + 1, top + 1)]
        if f.agg == "mean":
            s = sum(float(x[0] or 0) for x in got)
            n = sum(float(x[1] or 0) for x in got)
            values.append(s / n if n else 0.0)
        else:
            values.append(sum(float(x[0] or 0) for x in got))
    return values


def build_app(s: Settings, bootstrap: str) -> Any:
    from streaming.events.producer import entity_key
    from streaming.features.vector import VectorBuilder
    from streaming.inference.registry import ModelRegistry
    from streaming.inference.session import OnnxModel
    from streaming.infra.stack import resolve_endpoints
    from streaming.worker.app import StreamingApp, app_keywords
    from streaming.worker.runtime import load_components

    _, codec, pipeline = load_components(s)
    model = OnnxModel(ModelRegistry.from_settings(s, pipeline.name).active(), provider=s.onnx_provider,
                      threads=s.onnx_threads)
    vectors = VectorBuilder(pipeline)
    spec = pipeline.event
    prefix = f"naive-{s.app_id}:"
    redis_url = resolve_endpoints(s)[1]
    app = StreamingApp(s.app_id, **app_keywords(s, bootstrap))
    app.fetch_max_wait_ms = s.consumer_fetch_max_wait_ms
    source = app.topic(s.topic_events, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    predictions = app.topic(s.topic_predictions, key_type=bytes, value_type=bytes, key_serializer="raw",
                            value_serializer="raw")

    @app.agent(source, name="naive")
    async def naive(stream: Any) -> None:
        client = aioredis.Redis.from_url(redis_url)
        async for event in stream.events():
            received_at = _now_us()
            msg = event.message
            ev = codec.decode(spec.schema, msg.value)
            values = await naive_window_values(client, pipeline, ev, prefix)
            features_at = _now_us()
            X = vectors.matrix([ev], [values])
            score = float(model.predict(X)[0])
            predicted_at = _now_us()
            pred = {
                "event_id": str(ev[spec.id_field]), "key": entity_key(ev, spec.key), "model": pipeline.name,
                "model_version": model.tag, "score": score, "decision": score >= pipeline.threshold,
                "challenger_score": None, "fallback": None, "flags": [], "event_time": int(ev[spec.time_field]),
                "produced_at": int(msg.timestamp * 1_000_000) if msg.timestamp else 0, "received_at": received_at,
                "features_at": features_at, "inference_started_at": features_at, "predicted_at": predicted_at,
                "batch_size": 1,
            }
            sent = await predictions.send(key=msg.key, value=codec.encode("prediction", pred))
            await sent  # the acknowledgement, before the next event

    return app


def main() -> None:
    from streaming.bench.pipeline.faust_forward import run_faust_app

    run_faust_app(Settings.from_env(), build_app)


if __name__ == "__main__":
    main()
