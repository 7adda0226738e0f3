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

With ``stats_file`` in the JSON, its consumer and producer report librdkafka statistics every
``stats_interval_ms`` (a ``stats_cb`` in their extra config) and each report appends one line to that
file: ``{"t": <wall-clock s received>, "ts": <librdkafka µs clock>, "name": <client>, "produce": n,
"fetch": n}``, the requests the client has sent so far (summed over brokers); the bench takes a
load test window's requests from them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

__all__ = ["application_kwargs", "stats_line", "main"]


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


def stats_line(stats_json: str, received: float) -> str:
    """One librdkafka statistics report as the line the bench reads (requests summed over brokers).

    >>> print(stats_line('{"name": "rdkafka#producer-1", "ts": 5000000, "brokers": {"b/1": {"req": {"Produce": 4, '
    ...                  '"Fetch": 0}}, "b/bootstrap": {"req": {"Metadata": 2}}}}', 12.5), end="")
    {"t": 12.5, "ts": 5000000, "name": "rdkafka#producer-1", "produce": 4, "fetch": 0}
    """
    stats = json.loads(stats_json)
    produce = fetch = 0
    for broker in (stats.get("brokers") or {}).values():
        req = broker.get("req") or {}
        produce += int(req.get("Produce", 0))
        fetch += int(req.get("Fetch", 0))
    return json.dumps({"t": received, "ts": stats.get("ts", int(received * 1e6)), "name": stats.get("name", ""),
                       "produce": produce, "fetch": fetch}) + "\n"


def _stats_writer(path: str) -> Any:
    out = open(path, "a", buffering=1)  # line-buffered: the bench reads it while this runs

    def stats_cb(stats_json: str) -> None:
        try:
            out.write(stats_line(stats_json, time.time()))
        except (ValueError, OSError):
            pass

    return stats_cb


def main(argv: list[str]) -> None:
    from quixstreams import Application

    cfg = json.loads(argv[1])
    kwargs = application_kwargs(cfg)
    if cfg.get("stats_file"):
        stats = {"statistics.interval.ms": int(cfg.get("stats_interval_ms", 100)),
                 "stats_cb": _stats_writer(cfg["stats_file"])}
        kwargs["consumer_extra_config"].update(stats)
        kwargs["producer_extra_config"].update(stats)
    app = Application(**kwargs)
    source = app.topic(cfg["input"], key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(cfg["output"], key_serializer="bytes", value_serializer="bytes")
    app.dataframe(source).to_topic(out)
    print("quix forwarder: starting", flush=True)
    app.run()


if __name__ == "__main__":
    main(sys.argv)
