"""A Faust transport whose worker consumer has a configurable fetch max wait.

faust-streaming hardcodes ``fetch_max_wait_ms=1500`` for the worker's
consumer. On Tansu a fetch is answered when its max wait elapses, so that
value is a floor under end-to-end latency (p50 ~1.2 s). This transport is
aiokafka's, with the one value taken from ``app.fetch_max_wait_ms``; it is
registered under the URL scheme ``streaming://`` (also as the
``faust.transports`` entry point).
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from streaming.observability import kafka_requests
from streaming.worker.intake import BatchDrain

__all__ = ["Transport", "Consumer", "ConsumerThread", "SCHEME", "DEFAULT_FETCH_MAX_WAIT_MS"]

SCHEME = "streaming"
DEFAULT_FETCH_MAX_WAIT_MS = 5


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS))
        return consumer


class Consumer(BatchDrain, faust_aiokafka.Consumer):
    """aiokafka's Faust consumer with our fetch wait, and whole fetches to batch handlers (:mod:`streaming.worker.intake`)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
kafka_requests.install()  # every process on this transport counts its broker requests (streaming_kafka_requests_total)
