"""``python -m streaming.bench.pipeline.faust_forward``: a Faust agent that only forwards each record.

The framework's floor, driven the way our worker drives Faust (streaming/worker/app.py, streaming/worker/run.py):
the ``streaming://`` transport with the settings' consumer fetch wait (5 ms), the same app keywords
(producer linger, acks, session timeout, commit interval), micro-batches from ``take_events`` with the
worker's batch settings, every record of a batch sent with ``app.producer.send`` (no codecs, no
sensors) and the acknowledgements gathered before the next batch, uvloop, log level ``info``. Each
event's key and value bytes go to the output topic unchanged: no decoding, no Redis, no model.

Configured by the ``STREAMING_*`` variables: ``STREAMING_TOPIC_EVENTS`` in,
``STREAMING_TOPIC_PREDICTIONS`` out, ``STREAMING_APP_ID`` the consumer group, ``STREAMING_METRICS_PORT``
where ``/metrics`` (the process's broker requests by API) is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from streaming.settings import Settings

__all__ = ["build_app", "main"]


def build_app(s: Settings, bootstrap: str) -> Any:
    from streaming.worker.app import StreamingApp, app_keywords

    app = StreamingApp(s.app_id, **app_keywords(s, bootstrap))
    app.fetch_max_wait_ms = s.consumer_fetch_max_wait_ms
    source = app.topic(s.topic_events, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    out = s.topic_predictions
    within = s.batch_max_wait_ms / 1000.0

    @app.agent(source, name="forward")
    async def forward(stream: Any) -> None:
        producer = app.producer
        async for events in stream.take_events(s.batch_max_rows, within=within):
            futures = [await producer.send(out, e.message.key, e.message.value, None, None, None) for e in events]
            await asyncio.gather(*futures)

    return app


def main() -> None:
    run_faust_app(Settings.from_env(), build_app)


def run_faust_app(s: Settings, build: Callable[[Settings, str], Any]) -> None:
    """Run ``build(settings, bootstrap)`` as ``streaming worker`` runs ours (:func:`streaming.worker.run.run_faust_app`),
    serving the default registry's ``/metrics`` on ``STREAMING_METRICS_PORT`` (0: none), where the load test reads
    the process's broker requests (``streaming_kafka_requests_total``, :mod:`streaming.observability.kafka_requests`)."""
    from prometheus_client import REGISTRY

    from streaming.infra.stack import resolve_endpoints
    from streaming.observability.server import serve_metrics
    from streaming.worker.run import run_faust_app as run

    def start() -> Any:
        app = build(s, resolve_endpoints(s)[0])
        serve_metrics(REGISTRY, s.metrics_host, s.metrics_port)
        return app

    run(s, start)


if __name__ == "__main__":
    main()
