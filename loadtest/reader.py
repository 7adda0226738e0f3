"""The load test's prediction reader, in its own process (its own GIL, away from the generator's send loop).

The child reads the output topic from the beginning with ``assign()`` (no group join; docs/platform.md),
stamps each record with the time it was received, and keeps the first record of every event id
(later ones only count as duplicates). The event id is taken straight from the Avro bytes when the
writer schema's first field is a string (``event_id`` in the prediction and the transaction
schemas), so the hot loop decodes nothing else; the kept predictions are decoded for the stage
breakdown after the run, when the clock no longer matters. JSON values are decoded in the loop.

Two kinds of output can be matched:

* ``"prediction"``: the worker's predictions (``event_id`` and the stage timestamps);
* ``"event"``: records of the event schema itself (a forwarder that passes the events through
  unchanged, or the generator's own topic read back): only the id, so no stage breakdown.

The parent sees how many event ids have arrived (a shared counter, for progress and draining),
with ``live=True`` the end-to-end latency of the latest predictions (a shared ring that the child
fills by decoding each first prediction as it arrives: the demo's progress line), and, after :meth:`ReaderProcess.stop`, gets :class:`ReadResult` back through a pipe, with the
consumer's librdkafka statistics samples (its fetch requests over time, every
:data:`STATS_INTERVAL_MS`; :mod:`streaming.observability.kafka_requests`).
"""

from __future__ import annotations

import multiprocessing as mp
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventT
from typing import Any

from streaming.errors import UserError
from streaming.events.codec import MAGIC, Codec, DecodeError
from streaming.events.reader import TopicReader
from streaming.observability.kafka_requests import Sample, StatsSamples

__all__ = ["ReaderProcess", "ReadResult", "MATCH_MODES", "STAGE_FIELDS", "STATS_INTERVAL_MS", "LIVE_WINDOW",
           "first_string_field"]

#: how often the load test's librdkafka clients (generator, reader) report statistics (their request counts)
STATS_INTERVAL_MS = 100

MATCH_MODES = ("prediction", "event")
#: the prediction's timestamps the stage breakdown needs, in this order
STAGE_FIELDS = ("produced_at", "received_at", "features_at", "inference_started_at", "predicted_at", "batch_size")
_HEADER = struct.Struct(">bI")
#: how many of the latest end-to-end latencies ``live=True`` keeps for :meth:`ReaderProcess.live_p99_ms`
LIVE_WINDOW = 2000


@dataclass
class ReadResult:
    """``first``: event id → (µs the reader received its first record, the stage fields or None)."""

    first: dict[str, tuple[int, tuple[int, ...] | None]] = field(default_factory=dict)
    duplicates: int = 0
    undecodable: int = 0
    records: int = 0
    request_samples: list[Sample] = field(default_factory=list)  # the consumer's librdkafka statistics
    fallbacks: int = 0  # kept predictions that came from a fallback (``match="prediction"``)
    versions: dict[str, int] = field(default_factory=dict)  # kept predictions per model version
    decisions: int = 0  # kept predictions whose decision was positive


def first_string_field(data: bytes) -> str | None:
    """The first field of a Confluent-framed Avro record when it is a string (a zigzag length, UTF-8 bytes).

    >>> first_string_field(b"\\x00\\x00\\x00\\x00\\x07" + bytes([2 * 3]) + b"abc" + b"rest")
    'abc'
    >>> first_string_field(b"{}") is None
    True
    """
    if len(data) < 6 or data[0] != MAGIC:
        return None
    shift = n = 0
    pos = 5
    while pos < len(data):
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    length = (n >> 1) ^ -(n & 1)
    if length < 0 or pos + length > len(data):
        return None
    return data[pos : pos + length].decode("utf-8", "replace")


class _Ids:
    """Event id of a record: the first string field when the writer schema allows it, else a full decode."""

    def __init__(self, codec: Codec, subject: str, id_field: str) -> None:
        self.codec = codec
        self.subject = subject
        self.id_field = id_field
        self._fast: dict[int, bool] = {}

    def _fast_ok(self, schema_id: int) -> bool:
        ok = self._fast.get(schema_id)
        if ok is None:
            schema = self.codec.registry.by_id(schema_id)
            first = schema.raw["fields"][0] if schema is not None and schema.raw.get("fields") else {}
            ok = first.get("name") == self.id_field and first.get("type") == "string"
            self._fast[schema_id] = ok
        return ok

    def __call__(self, data: bytes | None) -> str:
        if not data:
            raise DecodeError("empty value")
        if data[0] == MAGIC and len(data) >= 5 and self._fast_ok(_HEADER.unpack_from(data)[1]):
            eid = first_string_field(data)
            if eid is not None:
                return eid
        return str(self.codec.decode(self.subject, data)[self.id_field])


def _stages(codec: Codec, value: bytes | None, out: ReadResult) -> tuple[int, ...]:
    """The stage fields of one prediction; counts its fallback and decision into ``out``."""
    p = codec.decode("prediction", value)
    stages = tuple(int(p[f]) for f in STAGE_FIELDS)
    out.fallbacks += p.get("fallback") is not None
    version = str(p.get("model_version"))
    out.versions[version] = out.versions.get(version, 0) + 1
    out.decisions += bool(p.get("decision"))
    return stages


def _read(bootstrap: str, topic: str, codec: Codec, subject: str, id_field: str, match: str, count_prefix: str,
          ready: EventT, stop: EventT, count: Any, live: Any, conn: Connection) -> None:
    """The child's main: read until ``stop``, then send the :class:`ReadResult` through ``conn``.

    ``live`` (a shared ring of :data:`LIVE_WINDOW` latencies in ms and, at its end, the count written) or None.
    """
    ids = _Ids(codec, subject, id_field)
    stats = StatsSamples()
    reader = TopicReader(bootstrap, topic, from_beginning=True, fetch_wait_ms=5,
                         config={"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": stats.callback})
    ready.set()
    kept: dict[str, tuple[int, bytes | None]] = {}
    seen: dict[str, int] = {}
    out = ReadResult()
    undecodable = records = counted = written = 0
    while not stop.is_set():
        msgs = reader.poll(0.005)
        if not msgs:
            continue
        now = time.time_ns() // 1000
        for m in msgs:
            value = m.value()
            records += 1
            try:
                eid = ids(value)
            except (DecodeError, KeyError, TypeError, ValueError):
                undecodable += 1
                continue
            c = seen.get(eid)
            if c is None:
                seen[eid] = 1
                counted += eid.startswith(count_prefix)
                if live is None:
                    kept[eid] = (now, value)
                    continue
                try:  # live: decoded now, the latency goes into the ring
                    stages = _stages(codec, value, out)
                except (DecodeError, KeyError, TypeError, ValueError):
                    undecodable += 1
                    continue
                out.first[eid] = (now, stages)
                live[written % LIVE_WINDOW] = (now - stages[0]) / 1000.0
                written += 1
                live[LIVE_WINDOW] = written
            else:
                seen[eid] = c + 1
        count.value = counted
    reader.close()
    out.duplicates = sum(c - 1 for c in seen.values())
    out.undecodable += undecodable
    out.records = records
    out.request_samples = stats.samples()
    for eid, (recv, value) in kept.items():
        stages_or_none: tuple[int, ...] | None = None
        if match == "prediction":
            try:
                stages_or_none = _stages(codec, value, out)
            except (DecodeError, KeyError, TypeError, ValueError):
                out.undecodable += 1
                continue
        out.first[eid] = (recv, stages_or_none)
    conn.send(out)
    conn.close()


class ReaderProcess:
    """Starts the reading child (``spawn``: no threads or sockets inherited from the generator)."""

    def __init__(self, bootstrap: str, topic: str, codec: Codec, *, match: str = "prediction",
                 event_subject: str = "", id_field: str = "event_id", count_prefix: str = "",
                 live: bool = False) -> None:
        if match not in MATCH_MODES:
            raise ValueError(f"match must be one of {MATCH_MODES}, not {match!r}")
        if live and match != "prediction":
            raise ValueError("live latencies need match='prediction' (the event's timestamps are in the prediction)")
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._count = ctx.Value("q", 0, lock=False)
        self._live = ctx.Array("d", LIVE_WINDOW + 1, lock=False) if live else None
        self._recv, send = ctx.Pipe(duplex=False)
        subject = "prediction" if match == "prediction" else event_subject
        self._proc = ctx.Process(target=_read, name="loadtest-reader", daemon=True,
                                 args=(bootstrap, topic, codec, subject, id_field, match, count_prefix, self._ready,
                                       self._stop, self._count, self._live, send))
        self._proc.start()
        send.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if not self._proc.is_alive():
                raise UserError(f"the load test's reader exited with {self._proc.exitcode} before it was ready")
            if time.monotonic() > deadline:
                self._proc.kill()
                raise UserError(f"the load test's reader was not ready after {timeout:.0f}s")

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def count(self) -> int:
        """Distinct event ids received so far that start with ``count_prefix`` (the run's own events, not a warm-up)."""
        return int(self._count.value)

    def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until :meth:`count` reaches ``n``; False when ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() >= deadline or not self._proc.is_alive():
                return False
            time.sleep(0.05)
        return True

    def live_p99_ms(self) -> float:
        """p99 of the latest end-to-end latencies (``live=True``; 0 before the first prediction)."""
        if self._live is None:
            raise ValueError("this reader was started without live=True")
        ring = self._live
        n = min(int(ring[LIVE_WINDOW]), LIVE_WINDOW)
        if n == 0:
            return 0.0
        values = sorted(ring[:n])
        return float(values[min(n - 1, int(0.99 * n))])

    def stop(self, timeout: float = 120.0) -> ReadResult:
        self._stop.set()
        try:
            if not self._recv.poll(timeout):
                raise UserError("the load test's reader did not report back")
            result: ReadResult = self._recv.recv()
        except EOFError:
            raise UserError(f"the load test's reader died (exit code {self._proc.exitcode})") from None
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        return result
