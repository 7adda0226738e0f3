"""Replaying dead letters: their original key and value, byte for byte, back to the topic they came from.

A dead letter (:mod:`streaming.events.deadletter`) holds the original key and value bytes and says
where it came from in its ``dlq.*`` headers. :func:`replay` reads the dead-letter topic from the
beginning to its end, picks the dead letters that match its filters and publishes each one's key and
value unchanged (never decoded, so Avro bytes survive as they are) to its ``dlq.topic``, or to
``to_topic``, with the record's other headers kept and ``dlq.replayed_from`` =
``<dead-letter topic>:<partition>:<offset>`` added. A record goes back to the partition it came
from (``dlq.partition``) when that topic still has it, else where Kafka's default partitioner
(murmur2 of the key) puts it.

What is never replayed:

- a truncated dead letter (``dlq.truncated`` = ``1``): its value is cut, so the original is lost
  (counted as ``skipped_truncated``);
- a record without a ``dlq.topic`` header (not a dead letter), or whose ``dlq.topic`` is the
  dead-letter topic itself (``skipped_invalid``);
- a dead letter whose topic does not exist (``skipped_missing_topic``; ``to_topic`` overrides it);
- a dead letter written after the replay started (``newer``): that includes the dead letters the
  replayed records become when they fail again, so a replay never feeds on itself.

The end of the dead-letter topic is its high watermark when the replay starts; on the embedded
broker that counts batches, not records (``docs/platform.md``), so the reader also takes what
follows in the last batch and stops when a partition has been quiet for ``idle_s``.

Replaying twice publishes the records twice: the dead-letter topic keeps its records. Narrow a
second run with ``since_ms`` (dead letters written since a time) or the filters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from tqdm import tqdm

from streaming.errors import UnreachableError, UserError
from streaming.events.deadletter import HEADER_PREFIX
from streaming.events.producer import EVENT_LINGER_MS
from streaming.events.reader import EndRead, TopicReader
from streaming.events.security import client_config

__all__ = [
    "HEADER_REPLAYED_FROM",
    "HEADER_TRUNCATED",
    "ReplayError",
    "ReplayResult",
    "parse_time_ms",
    "replay",
]

#: added to every replayed record: ``<dead-letter topic>:<partition>:<offset>``
HEADER_REPLAYED_FROM = HEADER_PREFIX + "replayed_from"
#: set to ``1`` on a dead letter whose value was cut to fit (it cannot be replayed)
HEADER_TRUNCATED = HEADER_PREFIX + "truncated"

_REASON_KEY_CHARS = 160


class ReplayError(UserError):
    """Some replayed records were not delivered."""

    exit_code = 1


@dataclass
class ReplayResult:
    """What a replay read, picked and published.

    ``read`` = ``matched`` + ``skipped_filter`` + ``skipped_invalid``; ``matched`` =
    ``selected`` + ``skipped_truncated`` + ``skipped_missing_topic``. ``selected`` records were
    published (``replayed``), or in a dry run would have been (``replayed`` is then 0).
    ``by_topic`` and ``by_reason`` count the selected ones by source topic (``dlq.topic``), and by
    source topic and reason (its first line, shortened).
    """

    dlq_topic: str
    dry_run: bool
    to_topic: str | None = None
    read: int = 0
    matched: int = 0
    selected: int = 0
    replayed: int = 0
    skipped_truncated: int = 0
    skipped_filter: int = 0
    skipped_invalid: int = 0
    skipped_missing_topic: int = 0
    newer: int = 0
    limit_reached: bool = False
    by_topic: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_topics: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """A human summary: one headline, then the selected dead letters by source topic and reason.

        >>> r = ReplayResult("events-dlq", dry_run=True, read=3, matched=2, selected=1, skipped_truncated=1,
        ...                  skipped_filter=1, by_topic={"events": 1}, by_reason={"events": {"bad bytes": 1}})
        >>> print("\\n".join(r.summary_lines()))
        dry run: would replay 1 of 3 dead letters read from events-dlq (skipped: 1 truncated, 1 filtered out)
          events: 1
            1  bad bytes
        """
        verb = "dry run: would replay" if self.dry_run else "replayed"
        n = self.selected if self.dry_run else self.replayed
        dest = f" to {self.to_topic}" if self.to_topic else ""
        skipped = [f"{c} {what}" for c, what in (
            (self.skipped_truncated, "truncated"), (self.skipped_filter, "filtered out"),
            (self.skipped_invalid, "without a dlq.topic header"),
            (self.skipped_missing_topic, "to a topic that does not exist")) if c]
        head = f"{verb} {n} of {self.read} dead letters read from {self.dlq_topic}{dest}"
        head += f" (skipped: {', '.join(skipped)})" if skipped else ""
        lines = [head]
        for topic, count in sorted(self.by_topic.items()):
            lines.append(f"  {topic}: {count}")
            reasons = sorted(self.by_reason.get(topic, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            lines.extend(f"    {c}  {reason}" for reason, c in reasons)
        for topic, count in sorted(self.missing_topics.items()):
            lines.append(f"  {topic}: {count} not replayed: the topic does not exist (create it, or use --to-topic)")
        if self.limit_reached:
            lines.append("  stopped at the limit; later dead letters were not read")
        if self.newer:
            lines.append(f"  {self.newer} dead letters written after the replay started were left alone")
        return lines


def parse_time_ms(text: str) -> int:
    """A time given as epoch milliseconds or ISO 8601 (local time unless it has an offset), in epoch ms.

    >>> parse_time_ms("1700000000000")
    1700000000000
    >>> parse_time_ms("2023-11-14T22:13:20+00:00")
    1700000000000
    >>> parse_time_ms("yesterday")
    Traceback (most recent call last):
    streaming.errors.UserError: bad time 'yesterday': use ISO 8601 (2026-01-31T14:00, local time unless it has an offset) or epoch milliseconds
    """
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        return int(datetime.fromisoformat(t).timestamp() * 1000)
    except ValueError:
        raise UserError(f"bad time {text!r}: use ISO 8601 (2026-01-31T14:00, local time unless it has an offset) "
                        "or epoch milliseconds") from None


def _reason_key(reason: str) -> str:
    """A reason shortened to group by: its first line, at most 160 characters.

    >>> _reason_key("does not match\\nmore")
    'does not match'
    """
    first = reason.strip().splitlines()[0] if reason.strip() else "(no reason)"
    return first if len(first) <= _REASON_KEY_CHARS else first[: _REASON_KEY_CHARS - 1] + "…"


def _reason_matches(reason: str, filters: list[str | re.Pattern[str]]) -> bool:
    """True when ``reason`` contains one of the strings or matches one of the patterns (none: every reason).

    >>> _reason_matches("does not match schema 'transaction'", ["schema", re.compile("^nope")])
    True
    >>> _reason_matches("empty value", ["schema", re.compile(r"^does")])
    False
    """
    if not filters:
        return True
    return any(f in reason if isinstance(f, str) else f.search(reason) is not None for f in filters)


class _Topics:
    """Which topics exist and their partition counts, from the broker's metadata (refreshed once per unknown name)."""

    def __init__(self, bootstrap: str, config: Mapping[str, Any]) -> None:
        self._admin = AdminClient(client_config(bootstrap, {"log.connection.close": False, **config}))
        self._bootstrap = bootstrap
        self._known: dict[str, int] = {}
        self._asked: set[str] = set()
        self._refresh()

    def _refresh(self) -> None:
        try:  # all topics: naming one could create it on a broker that auto-creates topics
            meta = self._admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise UnreachableError(f"the Kafka broker at {self._bootstrap} does not answer ({exc.args[0]})") from None
        self._known = {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has; 0 when it does not exist."""
        if topic not in self._known and topic not in self._asked:
            self._asked.add(topic)
            self._refresh()
        return self._known.get(topic, 0)


def replay(
    bootstrap: str,
    dlq_topic: str,
    *,
    stages: Iterable[str] = (),
    reasons: Iterable[str | re.Pattern[str]] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    to_topic: str | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    config: Mapping[str, Any] | None = None,
    linger_ms: float = EVENT_LINGER_MS,
    idle_s: float = 0.5,
    stall_s: float = 10.0,
    flush_timeout_s: float = 30.0,
    progress: bool = False,
) -> ReplayResult:
    """Re-publish the dead letters of ``dlq_topic`` that match the filters; see the module's docstring.

    Filters (all must hold): ``stages``: ``dlq.stage`` is one of them (none: any); ``reasons``:
    ``dlq.reason`` contains one of the strings or matches (``re.search``) one of the patterns (none:
    any); ``since_ms <= t < until_ms``, ``t`` being the dead letter's own record timestamp (when it was
    dead-lettered), epoch ms. ``to_topic``: publish every one there instead of its ``dlq.topic``.
    ``dry_run``: count what would be replayed, publish nothing. ``limit``: stop after this many
    selected records. ``config``: more librdkafka settings for every client (e.g. security).
    ``progress``: a progress bar on stderr (when it is a terminal).

    Raises :class:`UserError` for bad arguments or a missing dead-letter topic, and
    :class:`ReplayError` when a published record was not delivered.
    """
    stage_set = set(stages)
    reason_filters = list(reasons)
    if limit is not None and limit < 1:
        raise UserError(f"bad limit {limit}: give at least 1 (or no limit)")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise UserError(f"since ({since_ms}) must be before until ({until_ms})")
    if to_topic is not None and not to_topic.strip():
        raise UserError("the topic to replay to is empty")
    if to_topic == dlq_topic:
        raise UserError(f"will not replay dead letters into the dead-letter topic {dlq_topic} itself")
    if idle_s <= 0 or stall_s < idle_s:
        raise ValueError("need 0 < idle_s <= stall_s")
    extra = dict(config or {})
    result = ReplayResult(dlq_topic=dlq_topic, dry_run=dry_run, to_topic=to_topic)
    started = time.monotonic()
    started_ms = time.time_ns() // 1_000_000
    failures: list[str] = []
    delivered = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is not None:
            failures.append(str(err))
        else:
            delivered += 1

    reader = TopicReader(bootstrap, dlq_topic, from_beginning=True, config=extra)
    producer: Producer | None = None
    bar = tqdm(desc=f"replay {dlq_topic}", unit=" dead letters", disable=None if progress else True, leave=False)
    try:
        topics = _Topics(bootstrap, extra)
        if not dry_run:
            producer = Producer(client_config(bootstrap, {
                "linger.ms": linger_ms,
                "acks": "all",
                "enable.idempotence": False,
                "partitioner": "murmur2_random",  # Kafka's default, as the worker's publisher
                "log.connection.close": False,
                **extra,
            }))
        scan = EndRead(reader, started_ms)
        done = False
        while not done:
            msgs = scan.poll(0.2)
            for msg in msgs:
                result.read += 1
                ts_type, ts = msg.timestamp()
                if _take(msg, result, topics, producer, on_delivery, stage_set=stage_set, reasons=reason_filters,
                         since_ms=since_ms, until_ms=until_ms, ts=None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts, dlq_topic=dlq_topic,
                         to_topic=to_topic) and limit is not None and result.selected >= limit:
                    result.limit_reached = done = True
                    break
            result.newer = scan.newer
            if scan.polled:
                bar.update(scan.polled)
                bar.set_postfix_str(f"{'selected' if dry_run else 'replayed'} {result.selected}", refresh=False)
            elif producer is not None:
                producer.poll(0)
            done = done or scan.done(idle_s, stall_s)
        if producer is not None:
            left = producer.flush(flush_timeout_s)
            result.replayed = delivered
            if failures or left:
                first = f": {failures[0]}" if failures else ""
                raise ReplayError(
                    f"{len(failures) + left} of {result.selected} replayed records were not delivered{first}; "
                    f"{delivered} were delivered (a second replay publishes them again)"
                )
            producer = None
    finally:
        bar.close()
        reader.close()
        if producer is not None:  # an error on the way: deliver what was queued
            producer.flush(5.0)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _take(msg: Message, result: ReplayResult, topics: _Topics, producer: Producer | None, on_delivery: Any, *,
          stage_set: set[str], reasons: list[str | re.Pattern[str]], since_ms: int | None, until_ms: int | None,
          ts: int | None, dlq_topic: str, to_topic: str | None) -> bool:
    """Filter one dead letter and publish it (unless a dry run); True when it was selected."""
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    dlq: dict[str, bytes] = {}
    kept: list[tuple[str, str | bytes | None]] = []
    for k, v in pairs:
        if k.startswith(HEADER_PREFIX):
            dlq[k] = v.encode() if isinstance(v, str) else (v or b"")
        else:
            kept.append((k, v))
    source = dlq.get(HEADER_PREFIX + "topic", b"").decode("utf-8", "replace")
    if not source or (to_topic is None and source == dlq_topic):  # no dead letter, or one that would loop
        result.skipped_invalid += 1
        return False
    stage = dlq.get(HEADER_PREFIX + "stage", b"").decode("utf-8", "replace")
    reason = dlq.get(HEADER_PREFIX + "reason", b"").decode("utf-8", "replace")
    if (
        (stage_set and stage not in stage_set)
        or not _reason_matches(reason, reasons)
        or (since_ms is not None and (ts is None or ts < since_ms))
        or (until_ms is not None and (ts is None or ts >= until_ms))
    ):
        result.skipped_filter += 1
        return False
    result.matched += 1
    if dlq.get(HEADER_TRUNCATED, b"0") not in (b"", b"0"):
        result.skipped_truncated += 1
        return False
    dest = to_topic or source
    n_parts = topics.partitions(dest)
    if n_parts == 0:
        result.skipped_missing_topic += 1
        result.missing_topics[dest] = result.missing_topics.get(dest, 0) + 1
        return False
    result.selected += 1
    result.by_topic[source] = result.by_topic.get(source, 0) + 1
    per_reason = result.by_reason.setdefault(source, {})
    key = _reason_key(reason)
    per_reason[key] = per_reason.get(key, 0) + 1
    if producer is None:
        return True
    partition = -1  # the partitioner's choice
    if to_topic is None:
        try:
            original = int(dlq.get(HEADER_PREFIX + "partition", b""))
        except ValueError:
            original = -1
        if 0 <= original < n_parts:
            partition = original
    headers = [*kept, (HEADER_REPLAYED_FROM, f"{dlq_topic}:{msg.partition()}:{msg.offset()}".encode())]
    while True:
        try:
            producer.produce(dest, value=msg.value(), key=msg.key(), partition=partition, headers=headers,
                             on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.05)
        except KafkaException as exc:  # e.g. a value over the producer's message.max.bytes
            raise ReplayError(f"cannot publish the dead letter at {dlq_topic}:{msg.partition()}:{msg.offset()} "
                              f"to {dest}: {exc.args[0]}") from None
    producer.poll(0)
    return True
