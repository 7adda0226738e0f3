"""A Quix Streams application that only forwards each record (a peer for ``streaming bench pipeline``).

Runs in its own virtual environment (Quix pins an older confluent-kafka than ours; see
:mod:`streaming.bench.pipeline.quixenv`), as a script: ``<venv>/bin/python quix_forward.py '<json>'``,
so it imports nothing from this project. The JSON carries the bootstrap address, the topics, the
consumer group and the client settings the bench gives every system: the consumer fetch wait (5 ms),
the producer linger and acks of our worker, a 6 s session timeout (the group join on Tansu takes
half of it; librdkafka's 45 s default would make it about 23 s) and the commit interval.

Each record's key and value bytes go to the output topic unchanged (``bytes`` serializers both
ways): no decoding, no state. Quix consumes one message at a time and produces through one
confluent-kafka producer; its checkpoint (``commit_interval``) flushes the producer and commits.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["application_kwargs", "main"]


def application_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """``quixstreams.Application`` keywords from the bench's JSON (importable without quixstreams).

    >>> kw = application_kwargs({"bootstrap": "127.0.0.1:9092", "group": "g", "fetch_wait_ms": 5,
    ...                          "linger_ms": 1.0, "acks": "all", "session_timeout_s": 6, "commit_interval_s": 1})
    >>> kw["consumer_extra_config"]["fetch.wait.max.ms"], kw["consumer_extra_config"]["session.timeout.ms"]
    (5, 6000)
    >>> kw["producer_extra_config"], kw["auto_offset_reset"], kw["auto_create_topics"]
    ({'linger.ms': 1.0, 'acks': 'all'}, 'earliest', False)
    """
    session_ms = int(cfg["session_timeout_s"] * 1000)
    return {
        "broker_address": cfg["bootstrap"],
        "consumer_group": cfg["group"],
        "auto_offset_reset": "earliest",
        "commit_interval": float(cfg["commit_interval_s"]),
        "consumer_extra_config": {
            "fetch.wait.max.ms": int(cfg["fetch_wait_ms"]),
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
        },
        "producer_extra_config": {"linger.ms": float(cfg["linger_ms"]), "acks": str(cfg["acks"])},
        "auto_create_topics": False,
        "use_changelog_topics": False,
        "loglevel": "INFO",
    }


def main(argv: list[str]) -> None:
    from quixstreams import Application

    cfg = json.loads(argv[1])
    app = Application(**application_kwargs(cfg))
    source = app.topic(cfg["input"], key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(cfg["output"], key_serializer="bytes", value_serializer="bytes")
    app.dataframe(source).to_topic(out)
    print("quix forwarder: starting", flush=True)
    app.run()


if __name__ == "__main__":
    main(sys.argv)
