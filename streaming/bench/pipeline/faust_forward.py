"""``python -m streaming.bench.pipeline.faust_forward``: a Faust agent that only forwards each record.

The framework's floor, driven the way our worker drives Faust (streaming/app.py, streaming/worker/run.py):
the ``streaming://`` transport with the settings' consumer fetch wait (5 ms), the same app keywords
(producer linger, acks, session timeout, commit interval), micro-batches from ``take_events`` with the
worker's batch settings, every record of a batch sent with ``app.producer.send`` (no codecs, no
sensors) and the acknowledgements gathered before the next batch, uvloop, log level ``info``. Each
event's key and value bytes go to the output topic unchanged: no decoding, no Redis, no model.

Configured by the ``STREAMING_*`` variables: ``STREAMING_TOPIC_EVENTS`` in,
``STREAMING_TOPIC_PREDICTIONS`` out, ``STREAMING_APP_ID`` the consumer group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import uvloop

from streaming.settings import Settings

__all__ = ["app_keywords", "build_app", "run_faust", "main"]


def app_keywords(s: Settings, bootstrap: str) -> dict[str, Any]:
    """The ``faust.App`` keywords of our worker (:func:`streaming.app.app_keywords`)."""
    from streaming.app import app_keywords as worker_keywords

    return worker_keywords(s, bootstrap)


def run_faust(s: Settings, build: Callable[[Settings, str], Any]) -> None:
    """Build the app and run it as ``streaming worker`` runs ours: uvloop, quiet, the settings' log level."""
    import faust

    from streaming.infra.stack import resolve_endpoints

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = build(s, resolve_endpoints(s)[0])
    worker = faust.Worker(app, loglevel=s.log_level, loop=loop, quiet=True, redirect_stdouts=False)
    level = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING}.get(s.log_level)
    if level is not None:
        logging.getLogger().setLevel(level)
    worker.execute_from_commandline()


def build_app(s: Settings, bootstrap: str) -> Any:
    from streaming.app import StreamingApp

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
    run_faust(Settings.from_env(), build_app)


if __name__ == "__main__":
    main()
