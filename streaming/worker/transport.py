"""A Faust transport whose worker consumer has a configurable fetch max wait.

faust-streaming hardcodes ``fetch_max_wait_ms=1500`` for the worker's
consumer. On Tansu a fetch is answered when its max wait elapses, so that
value is a floor under end-to-end latency (p50 ~1.2 s). This transport is
aiokafka's, with the one value taken from ``app.fetch_max_wait_ms``; it is
registered under the URL scheme ``streaming://`` (also as the
``faust.transports`` entry point).

A stop is bounded: closing the consumer (which leaves the group) and the
producer (which flushes) each wait at most ``app.close_timeout_s``. With the
broker gone, aiokafka would otherwise retry until its own timeouts, far past
the worker's stop timeout; what stays uncommitted is redelivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from streaming.observability import kafka_requests
from streaming.worker.intake import BatchDrain

__all__ = ["Transport", "Consumer", "ConsumerThread", "SCHEME", "DEFAULT_FETCH_MAX_WAIT_MS"]

SCHEME = "streaming"
DEFAULT_FETCH_MAX_WAIT_MS = 5
#: how long a stop waits for the consumer to close and for the producer to flush, each
DEFAULT_CLOSE_TIMEOUT_S = 3.0

log = logging.getLogger(__name__)


async def _bounded(what: str, step: Awaitable[Any], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.warning("%s did not finish within %.1fs of the stop (broker unreachable?); going on without it: "
                    "records acknowledged since the last commit will be redelivered", what, timeout_s)
    except Exception as exc:  # a failing close must not keep the worker from stopping
        log.warning("%s failed (%s: %s); going on with the stop", what, type(exc).__name__, exc)


def _close_timeout(app: Any) -> float:
    return float(getattr(app, "close_timeout_s", DEFAULT_CLOSE_TIMEOUT_S))


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS))
        return consumer

    async def stop(self) -> None:
        """Stop the consumer's thread; the wait for it is bounded (a thread stuck on a gone broker never ends)."""
        await _bounded("stopping the consumer thread", super().stop(), 2 * _close_timeout(self.app))

    async def on_thread_stop(self) -> None:
        """Faust's stop, with the consumer's close (leave the group) bounded in time."""
        # the method queue's stop waits for the calls queued on the consumer (a commit that hangs on a gone broker)
        await _bounded("the consumer's pending calls", super(faust_aiokafka.AIOKafkaConsumerThread, self).on_thread_stop(),
                       _close_timeout(self.app))
        if self._consumer is not None:
            await _bounded("closing the consumer", self._consumer.stop(), _close_timeout(self.app))


class Producer(faust_aiokafka.Producer):
    async def on_stop(self) -> None:
        """Faust's stop, with the producer's flush and close bounded in time."""
        await super(faust_aiokafka.Producer, self).on_stop()
        self.transport._topic_waiters.clear()  # type: ignore[attr-defined]
        producer, self._producer = self._producer, None
        if producer is not None:
            await _bounded("flushing the producer", producer.stop(), _close_timeout(self.app))


class Consumer(BatchDrain, faust_aiokafka.Consumer):
    """aiokafka's Faust consumer with our fetch wait, and whole fetches to batch handlers (:mod:`streaming.worker.intake`)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_stop(self) -> None:
        """Faust's stop (the final commit), bounded in time."""
        await _bounded("the final commit", super().on_stop(), _close_timeout(self.app))


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
kafka_requests.install()  # every process on this transport counts its broker requests (streaming_kafka_requests_total)
