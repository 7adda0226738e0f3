"""``streaming worker``: build the runtime, serve /metrics, run the Faust worker."""

from __future__ import annotations

import asyncio
import logging

import uvloop

from streaming.observability.server import serve_metrics
from streaming.settings import Settings
from streaming.worker.runtime import Runtime

__all__ = ["run_worker"]


def run_worker(settings: Settings) -> None:
    """Blocks until the worker stops (SIGINT/SIGTERM stop it cleanly, committing acked offsets)."""
    import faust

    from streaming.app import create_app

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    rt = Runtime.build(settings)
    app = create_app(rt)
    serve_metrics(rt.metrics.registry, settings.metrics_host, settings.metrics_port)
    worker = faust.Worker(app, loglevel=settings.log_level, loop=loop, quiet=True, redirect_stdouts=False)
    # Faust leaves the root logger at DEBUG for -l warn; per-message debug records cost CPU (facts.md)
    level = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING}.get(settings.log_level)
    if level is not None:
        logging.getLogger().setLevel(level)
    worker.execute_from_commandline()
