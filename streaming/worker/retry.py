"""Feature-store calls retried with backoff until Redis answers (the caller's consumer waits meanwhile).

Redis errors are transient for the worker: a restart, a failover, a connection kept from before
either. Retrying in place pauses the step that made the call, so nothing behind it is acknowledged
and nothing is lost; the wait doubles from 50 ms up to ``max_backoff_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streaming.observability.metrics import Metrics

__all__ = ["until_stored"]

T = TypeVar("T")

log = logging.getLogger(__name__)


async def until_stored(call: Callable[[], Awaitable[T]], *, op: str, what: str, metrics: Metrics,
                       max_backoff_s: float = 5.0) -> T:
    """``await call()`` until it succeeds; each failure counts in ``streaming_feature_store_errors{op}``
    and logs a warning naming ``what`` failed."""
    delay = 0.05
    while True:
        try:
            return await call()
        except Exception as exc:  # redis raises several types; all mean "retry"
            metrics.store_errors.labels(op).inc()
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
