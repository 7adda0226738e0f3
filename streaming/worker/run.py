"""``streaming worker``: build the runtime, serve /metrics, run the Faust worker."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import uvloop

from streaming.observability.server import serve_metrics
from streaming.settings import Settings
from streaming.worker.runtime import Runtime

__all__ = ["run_faust_app", "run_worker"]

log = logging.getLogger(__name__)


def _exit_unless_stopped(timeout_s: float) -> None:
    """A daemon timer: end the process if a clean stop has not ended it within ``timeout_s``."""

    def expire() -> None:
        log.error("the worker did not stop within %.0fs of the signal (broker unreachable?); exiting without "
                  "a final commit: events not yet acknowledged will be redelivered", timeout_s)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()


def run_faust_app(settings: Settings, build: Callable[[], Any]) -> None:
    """Run the Faust app ``build`` returns as ``streaming worker`` runs ours (the benchmark's Faust
    peers run this way too): uvloop, quiet, the settings' log level, a clean stop on SIGINT/SIGTERM
    bounded by ``settings.stop_timeout_s`` (past it the process exits with status 1)."""
    import faust

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = build()

    class Worker(faust.Worker):  # type: ignore[misc]
        def _schedule_shutdown(self, signal: signal.Signals) -> None:
            if not self._signal_stop_time:  # the first signal: a clean stop, bounded in time
                _exit_unless_stopped(settings.stop_timeout_s)
            super()._schedule_shutdown(signal)

    worker = Worker(app, loglevel=settings.log_level, loop=loop, quiet=True, redirect_stdouts=False)
    # Faust leaves the root logger at DEBUG for -l warn; per-message debug records cost CPU (docs/platform.md)
    level = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING}.get(settings.log_level)
    if level is not None:
        logging.getLogger().setLevel(level)
    worker.execute_from_commandline()


def run_worker(settings: Settings) -> None:
    """Blocks until the worker stops (SIGINT/SIGTERM stop it cleanly, committing acked offsets; after
    ``settings.stop_timeout_s`` without a clean stop, it exits with status 1)."""

    def build() -> Any:
        from streaming.worker.app import create_app

        rt = Runtime.build(settings)
        app = create_app(rt)
        serve_metrics(rt.metrics.registry, settings.metrics_host, settings.metrics_port)
        return app

    run_faust_app(settings, build)
