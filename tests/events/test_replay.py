"""`streaming dlq replay` against the embedded broker: original bytes back to their topic, filters, dry run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, Producer

from streaming.cli import cli
from streaming.errors import UserError
from streaming.events.deadletter import DeadLetter
from streaming.events.reader import TopicReader
from streaming.events.replay import HEADER_REPLAYED_FROM, ReplayError, replay
from streaming.events.topics import ensure_topics
from tests.conftest import Servers, unique

#: an Avro-framed value (magic byte, schema id 1) with every byte value after it: not UTF-8
AVRO_VALUE = b"\x00\x00\x00\x00\x01" + bytes(range(256))
AVRO_KEY = b"\xff\xfe\x00card"
JSON_VALUE = b'{"event_id": "j1", "amount": "lots"}'


@dataclass(frozen=True)
class Dlq:
    dlq: str
    events: str
    labels: str
    gone: str


def _read_all(bootstrap: str, topic: str, idle_s: float = 1.5) -> list[Any]:
    """Every record of ``topic``, read until it has been quiet for ``idle_s``."""
    reader = TopicReader(bootstrap, topic)
    got: list[Any] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < idle_s:
            msgs = reader.poll(0.1)
            if msgs:
                got.extend(msgs)
                quiet_since = time.monotonic()
        return got
    finally:
        reader.close()


@pytest.fixture
def dead_letters(servers: Servers) -> Iterator[Dlq]:
    """Fresh topics, and a dead-letter topic holding, in order: an Avro one and a JSON one from the events topic, a truncated one,
    one from the labels topic, one from a topic that does not exist, and a record that is no dead letter."""
    t = Dlq(unique("dlq"), unique("events"), unique("labels"), unique("gone"))
    ensure_topics(servers.bootstrap, [t.events], 2)
    ensure_topics(servers.bootstrap, [t.dlq, t.labels], 1)
    schema = "does not match schema 'transaction': "
    avro = DeadLetter(AVRO_KEY, AVRO_VALUE, t.events, 1, 7, 1000, "decode", "DecodeError", schema + "amount")
    js = DeadLetter(b"card-1", JSON_VALUE, t.events, 0, 8, 1001, "decode", "DecodeError", schema + "amount: 'lots'")
    cut = DeadLetter(b"card-2", b"x" * 64, t.events, 0, 9, 1002, "decode", "LimitError", schema + "too big")
    label = DeadLetter(None, b"\x00garbage", t.labels, 0, 3, 1003, "label_decode", "DecodeError",
                       "not JSON and not Avro")
    gone = DeadLetter(b"k", b"v", t.gone, 0, 1, 1004, "decode", "DecodeError", schema + "gone")
    truncated = [("dlq.truncated", b"1"), ("dlq.original_size", b"100000"), ("dlq.original_sha256", b"ab" * 32)]
    prod = Producer({"bootstrap.servers": servers.bootstrap, "linger.ms": 5})
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (avro.key, AVRO_VALUE, [("trace", b"\x01\xff"), *avro.headers()]),
        (js.key, JSON_VALUE, js.headers()),
        (cut.key, b"x" * 64, cut.headers() + truncated),
        (label.key, b"\x00garbage", label.headers()),
        (gone.key, b"v", gone.headers()),
        (b"stray", b"not a dead letter", [("trace", b"1")]),
    ]
    for key, value, headers in records:
        prod.produce(t.dlq, value=value, key=key, headers=headers)
    assert prod.flush(10) == 0
    yield t


@pytest.mark.integration
def test_a_dry_run_counts_what_would_be_replayed_and_publishes_nothing(servers: Servers, dead_letters: Dlq) -> None:
    t = dead_letters
    r = replay(servers.bootstrap, t.dlq, reasons=["does not match schema"], dry_run=True)
    assert (r.read, r.matched, r.selected, r.replayed) == (6, 4, 2, 0)
    assert (r.skipped_truncated, r.skipped_filter, r.skipped_invalid, r.skipped_missing_topic) == (1, 1, 1, 1)
    assert r.by_topic == {t.events: 2} and r.missing_topics == {t.gone: 1}
    assert r.by_reason == {t.events: {"does not match schema 'transaction': amount": 1,
                                      "does not match schema 'transaction': amount: 'lots'": 1}}
    assert "dry run: would replay 2 of 6" in r.summary_lines()[0]
    later = replay(servers.bootstrap, t.dlq, since_ms=time.time_ns() // 1_000_000 + 60_000, dry_run=True)
    assert later.read == 6 and later.skipped_filter == 5 and later.selected == 0  # the stray one is invalid
    assert _read_all(servers.bootstrap, t.events) == [] and _read_all(servers.bootstrap, t.labels) == []


@pytest.mark.integration
def test_replay_publishes_the_matching_records_byte_for_byte(servers: Servers, dead_letters: Dlq) -> None:
    t = dead_letters
    r = replay(servers.bootstrap, t.dlq, reasons=["does not match schema"])
    assert (r.read, r.matched, r.selected, r.replayed, r.skipped_truncated) == (6, 4, 2, 2, 1)
    assert r.by_topic == {t.events: 2} and r.missing_topics == {t.gone: 1}
    got = sorted(_read_all(servers.bootstrap, t.events), key=lambda m: m.partition())
    assert len(got) == 2
    js, avro = got
    assert avro.key() == AVRO_KEY and avro.value() == AVRO_VALUE and avro.partition() == 1  # its source partition
    assert js.key() == b"card-1" and js.value() == JSON_VALUE and js.partition() == 0
    assert avro.headers() == [("trace", b"\x01\xff"), (HEADER_REPLAYED_FROM, f"{t.dlq}:0:0".encode())]
    assert js.headers() == [(HEADER_REPLAYED_FROM, f"{t.dlq}:0:1".encode())]
    assert _read_all(servers.bootstrap, t.labels) == []  # filtered out by its reason


@pytest.mark.integration
def test_stage_filter_to_topic_and_limit(servers: Servers, dead_letters: Dlq) -> None:
    t = dead_letters
    to = unique("fixed")
    ensure_topics(servers.bootstrap, [to], 1)
    r = replay(servers.bootstrap, t.dlq, stages=["label_decode"], to_topic=to)
    assert (r.selected, r.replayed, r.skipped_filter) == (1, 1, 4) and r.by_topic == {t.labels: 1}
    [m] = _read_all(servers.bootstrap, to)
    assert m.key() is None and m.value() == b"\x00garbage"
    to2 = unique("limited")
    ensure_topics(servers.bootstrap, [to2], 1)
    r = replay(servers.bootstrap, t.dlq, to_topic=to2, limit=1)
    assert r.replayed == 1 and r.limit_reached
    [m] = _read_all(servers.bootstrap, to2)
    assert m.value() == AVRO_VALUE


@pytest.mark.integration
def test_dead_letters_written_after_the_start_are_left_alone(servers: Servers) -> None:
    """Past the end offsets, a dead letter newer than the replay (say, a replayed record that failed again) is not
    replayed. Tansu's end offset is the last batch's base offset + 1, so the second record of the one batch here is
    past it."""
    dlq, events = unique("dlq"), unique("events")
    ensure_topics(servers.bootstrap, [dlq, events], 1)
    prod = Producer({"bootstrap.servers": servers.bootstrap, "linger.ms": 200})
    for i, ts in enumerate((None, time.time_ns() // 1_000_000 + 3_600_000)):
        dl = DeadLetter(b"k", b"v%d" % i, events, 0, i, 1, "decode", "DecodeError", "bad")
        prod.produce(dlq, value=dl.value, key=dl.key, headers=dl.headers(), **({"timestamp": ts} if ts else {}))
    assert prod.flush(10) == 0
    r = replay(servers.bootstrap, dlq)
    assert (r.read, r.newer, r.replayed) == (1, 1, 1)
    assert [m.value() for m in _read_all(servers.bootstrap, events)] == [b"v0"]


@pytest.mark.integration
def test_a_failed_delivery_is_an_error(servers: Servers, dead_letters: Dlq, monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming.events.replay as mod

    class Failing:
        """The real producer, whose delivery reports all say the message timed out."""

        def __init__(self, conf: dict[str, Any]) -> None:
            self._p = Producer(conf)

        def produce(self, topic: str, *, on_delivery: Any, **kw: Any) -> None:
            fail = lambda err, msg: on_delivery(err or KafkaError(KafkaError._MSG_TIMED_OUT), msg)  # noqa: E731
            self._p.produce(topic, on_delivery=fail, **kw)

        def poll(self, timeout: float) -> int:
            return self._p.poll(timeout)

        def flush(self, timeout: float) -> int:
            return self._p.flush(timeout)

    monkeypatch.setattr(mod, "Producer", Failing)
    with pytest.raises(ReplayError, match=r"2 of 2 replayed records were not delivered: .*timed out.*; 0 were"):
        replay(servers.bootstrap, dead_letters.dlq, reasons=["does not match schema"])


@pytest.mark.integration
def test_bad_arguments_are_user_errors(servers: Servers, dead_letters: Dlq) -> None:
    with pytest.raises(UserError, match="into the dead-letter topic"):
        replay(servers.bootstrap, dead_letters.dlq, to_topic=dead_letters.dlq)
    with pytest.raises(UserError, match="bad limit 0"):
        replay(servers.bootstrap, dead_letters.dlq, limit=0)
    with pytest.raises(UserError, match="does not exist"):
        replay(servers.bootstrap, unique("no-such-dlq"))


@pytest.mark.integration
def test_the_command_prints_one_json_object_last(servers: Servers, dead_letters: Dlq) -> None:
    t = dead_letters
    to = unique("cli")
    ensure_topics(servers.bootstrap, [to], 1)
    env = {"STREAMING_BROKER_URL": servers.bootstrap, "STREAMING_TOPIC_DLQ": t.dlq}
    dry = CliRunner().invoke(cli, ["dlq", "replay", "--reason", "schema", "--to-topic", to, "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "dry run: would replay 3 of 6" in dry.stdout and f"  {t.events}: 2" in dry.stdout
    assert _read_all(servers.bootstrap, to) == []
    done = CliRunner().invoke(cli, ["dlq", "replay", "--reason-regex", r"schema '\w+': (amount|gone)$",
                                    "--to-topic", to, "--json"], env=env)
    assert done.exit_code == 0, done.output
    last = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert last["replayed"] == 2 and last["skipped_truncated"] == 0 and last["dry_run"] is False
    assert last["by_topic"] == {t.events: 1, t.gone: 1} and last["to_topic"] == to
    assert sorted(m.value() for m in _read_all(servers.bootstrap, to)) == [AVRO_VALUE, b"v"]
    missing = CliRunner().invoke(cli, ["dlq", "replay", "--stage", "decode", "--dry-run", "--json"], env=env)
    assert missing.exit_code == 1 and orjson.loads(missing.stdout.splitlines()[-1])["missing_topics"] == {t.gone: 1}
    assert "does not exist (create it, or use --to-topic)" in missing.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--reason-regex", "("], "error: bad --reason-regex '('"),
    (["--since", "yesterday"], "error: bad time 'yesterday'"),
    (["--limit", "0"], "error: bad --limit 0"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    done = CliRunner().invoke(cli, ["dlq", "replay", *args], env={"STREAMING_BROKER_URL": "127.0.0.1:1"})
    assert done.exit_code == 2, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
