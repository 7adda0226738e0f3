"""Hostile and valid payloads of the event pipeline's two wire formats, for the fuzz tests (issue 13).

:func:`make_payloads` draws, from one seeded :class:`random.Random`, a deterministic mix of valid
events (Avro in the Confluent framing and JSON) and payloads meant to break something: random
mutations of valid encodings (bit flips, byte insertions, deletions, overwrites, truncations,
splices), trailing bytes after an Avro record, wrong schema ids, nesting a thousand deep, huge and
non-finite numbers, event times in nanoseconds or far ahead, oversized strings and values, empty
values, JSON that is not an object, unicode garbage, missing, extra and mistyped fields, and
garbage keys. Each :class:`Payload` says what must come of it: ``scored`` (one prediction, of its
``event_id``), ``dead`` (one dead letter whose reason holds ``reason``), or ``oracle`` (whatever
:class:`Oracle` says, for the random mutations whose fate is not known in advance).

:class:`Oracle` is the in-process decision the worker's decode and check stages make: the codec
with the pipeline's limits, then the event time's bounds and the magnitude of the numbers the
features read (``ScoreProcessor._check``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from streaming.events.codec import Codec, DecodeError
from streaming.events.limits import LimitError, check_magnitudes
from streaming.pipeline.spec import FieldFeature, Pipeline

__all__ = ["Oracle", "Payload", "make_payloads", "random_event", "FIELDS"]

FIELDS = ("event_id", "card_id", "merchant_id", "amount", "country", "card_country", "channel", "mcc", "event_time")
S = 1_000_000

#: expectations of a payload
SCORED, DEAD, ORACLE = "scored", "dead", "oracle"


@dataclass(frozen=True)
class Payload:
    kind: str
    key: bytes | None
    value: bytes | None
    expect: str  # SCORED, DEAD or ORACLE
    reason: str = ""  # DEAD: a substring of the dead letter's dlq.reason
    event_id: str | None = None  # SCORED: the id its prediction carries

    def describe(self, limit: int = 160) -> str:
        v = self.value
        shown = "None" if v is None else repr(v[:limit]) + (f"... ({len(v)} bytes)" if len(v) > limit else "")
        return f"{self.kind} key={self.key[:40] if self.key else self.key!r} value={shown}"


class Oracle:
    """What the worker's decode and check stages decide about one value: the event, or why not."""

    def __init__(self, codec: Codec, pipeline: Pipeline) -> None:
        self.codec = codec
        self.pipeline = pipeline
        self.limits = pipeline.limits
        self.subject = pipeline.event.schema
        self.time_field = pipeline.event.time_field
        self.numeric = sorted({f.field for f in pipeline.window_features if f.field is not None}
                              | {f.field for f in pipeline.features if isinstance(f, FieldFeature) and f.equals is None})

    def decide(self, value: bytes | None, now_us: int) -> dict[str, Any] | str:
        """The decoded event when it passes every check at ``now_us``, else the reason it does not."""
        try:
            ev = self.codec.decode(self.subject, value, self.limits)
        except DecodeError as exc:
            return str(exc)
        t = ev[self.time_field]
        if not isinstance(t, int) or isinstance(t, bool) or t <= 0:
            return f"{self.time_field} must be positive epoch microseconds"
        if (t - now_us) / 1e6 > self.limits.max_future_s:
            return "max_future"
        try:
            check_magnitudes(ev, self.numeric, self.limits)
        except LimitError as exc:
            return str(exc)
        return ev

    def near_the_future_bound(self, value: bytes | None, now_us: int, before_s: float = 5.0,
                              after_s: float = 90.0) -> bool:
        """Whether the value's event time lies so close to ``max_future`` that the worker's clock, read later than
        ``now_us``, may decide otherwise."""
        try:
            t = self.codec.decode(self.subject, value, self.limits)[self.time_field]
        except (DecodeError, KeyError):
            return False
        if not isinstance(t, int):
            return False
        ahead = (t - now_us) / 1e6 - self.limits.max_future_s
        return -before_s <= ahead <= after_s


# -- random material ---------------------------------------------------------------------------------

_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz0123456789-_",
    "{}[]\":,\\/ \t\n\r'",
    "\x00\x01\x1f\x7f",
    "éüßøåçñ",
    "日本語中文한국어",
    "\u202e\u200b\u200d\ufeff\u0301\u0308",  # RTL override, zero widths, BOM, combining marks
    "😀🃏\U0001d518\U0001d55f\U0001d55a\U0010fffd",  # emoji, mathematical letters, plane 16
)


def rand_text(rng: random.Random, n: int | None = None) -> str:
    n = rng.choice((0, 1, 3, 8, 20, 64)) if n is None else n
    alphabet = "".join(rng.sample(_ALPHABETS, rng.randint(1, len(_ALPHABETS))))
    return "".join(rng.choice(alphabet) for _ in range(n))


def rand_number(rng: random.Random) -> Any:
    return rng.choice((
        0, -0.0, 1, -1, 25.5, rng.uniform(-1e6, 1e6), rng.randint(-2**31, 2**31), 2**53 + 1, 2**63 - 1, -2**63,
        2**63, 2**64, 2**70, -2**70, 1e12, 1e12 + 1, -1e12, 1e13, 1e308, -1e308, 5e-324, 1.7976931348623157e308,
        rng.random() * 10 ** rng.randint(-30, 30),
    ))


def rand_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (nested up to a few levels)."""
    r = rng.random()
    if depth >= 4 or r < 0.45:
        return rng.choice((None, True, False, rand_number(rng), rand_text(rng)))
    if r < 0.7:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rand_text(rng, rng.randint(0, 8)): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_event(rng: random.Random, eid: str, cards: list[str], merchants: list[str], now_us: int) -> dict[str, Any]:
    """A valid transaction at about ``now_us`` (up to 20 s before it)."""
    return {
        "event_id": eid,
        "card_id": rng.choice(cards),
        "merchant_id": rng.choice(merchants),
        "amount": round(rng.choice((rng.uniform(0.5, 80), rng.uniform(80, 3000), rng.uniform(0, 1e6))), 2),
        "country": rng.choice(("US", "US", "US", "GB", "DE", "BR")),
        "card_country": rng.choice(("US", "US", "GB")),
        "channel": rng.choice(("pos", "online")),
        "mcc": rng.choice(("grocery", "fuel", "travel", "electronics", "giftcards")),
        "event_time": now_us - rng.randint(0, 20 * S),
    }


def dumps(value: Any) -> bytes:
    """JSON text of ``value``; integers beyond 64 bits too (orjson refuses them)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False).encode()


# -- byte mutations ------------------------------------------------------------------------------------

def mutate_bytes(rng: random.Random, data: bytes, *, keep: int = 0) -> tuple[str, bytes]:
    """One random mutation of ``data`` (the first ``keep`` bytes untouched); its name and the result."""
    b = bytearray(data)
    lo = min(keep, len(b))

    def pos(end_ok: bool = False) -> int:
        hi = len(b) if end_ok else max(lo, len(b) - 1)
        return rng.randint(lo, hi) if hi >= lo else lo

    op = rng.choice(("bitflip", "bitflip", "bitflip", "byte", "insert", "delete", "truncate", "splice", "interesting"))
    if not b[lo:]:
        op = "insert"
    if op == "bitflip":
        for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
            i = pos()
            b[i] ^= 1 << rng.randrange(8)
    elif op == "byte":
        for _ in range(rng.randint(1, 4)):
            b[pos()] = rng.randrange(256)
    elif op == "interesting":
        b[pos()] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, 0x22, 0x5C, 0x7B, 0x5B, 0xC0, 0xED))
    elif op == "insert":
        i = pos(end_ok=True)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == "delete":
        i = pos()
        del b[i:i + rng.randint(1, 8)]
    elif op == "truncate":
        del b[pos():]
    else:  # splice: a copy of one span over another
        i, j = pos(), pos()
        n = rng.randint(1, 16)
        b[j:j + n] = b[i:i + n]
    return op, bytes(b)


# -- the mix -------------------------------------------------------------------------------------------

class _Maker:
    def __init__(self, codec: Codec, rng: random.Random, tag: str, cards: list[str], merchants: list[str],
                 now_us: int) -> None:
        self.codec = codec
        self.rng = rng
        self.tag = tag
        self.cards = cards
        self.merchants = merchants
        self.now_us = now_us
        self.n = 0
        self.schema_id = codec.registry.latest("transaction").id

    def eid(self, kind: str) -> str:
        """A unique id, many bits away from every other (a bit flip must not turn one into another)."""
        self.n += 1
        return f"{self.tag}-{kind}-{self.n}-{hashlib.sha256(str(self.n).encode()).hexdigest()[:12]}"

    def event(self, kind: str, **kw: Any) -> dict[str, Any]:
        ev = random_event(self.rng, self.eid(kind), self.cards, self.merchants, self.now_us)
        ev.update(kw)
        return ev

    def key(self, ev: dict[str, Any] | None) -> bytes | None:
        r = self.rng.random()
        if ev is not None and r < 0.7 and isinstance(ev.get("card_id"), str):
            return ev["card_id"].encode()
        if r < 0.8:
            return None
        if r < 0.9:
            return b""
        return bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 64)))

    def avro(self, ev: dict[str, Any]) -> bytes:
        return self.codec.encode("transaction", ev)

    def json(self, ev: Any) -> bytes:
        rng = self.rng
        r = rng.random()
        if isinstance(ev, dict) and r < 0.2:
            items = list(ev.items())
            rng.shuffle(items)
            ev = dict(items)
        if r > 0.85:  # the standard library's spelling: spaces, \\u escapes
            return json.dumps(ev, ensure_ascii=rng.random() < 0.5, indent=rng.choice((None, 2))).encode()
        return dumps(ev)

    # the valid ones
    def valid(self, fmt: str) -> Payload:
        ev = self.event("ok")
        if fmt == "json" and self.rng.random() < 0.2:
            ev["amount"] = int(ev["amount"])  # a JSON integer where a double is declared
        if self.rng.random() < 0.05:
            ev["merchant_id"] = self.rng.choice(self.merchants) + rand_text(self.rng, 40).replace("\x00", "")
        value = self.avro(ev) if fmt == "avro" else self.json(ev)
        return Payload(f"valid_{fmt}", ev["card_id"].encode(), value, SCORED, event_id=ev["event_id"])

    def valid_edge(self) -> Payload:
        """Valid, at an edge: strings at the size limit, brackets in strings, an old event, extreme amounts."""
        rng = self.rng
        lim = 4096
        which = rng.choice(("long_strings", "brackets_in_string", "old", "amount_edge", "epoch_start", "unicode"))
        ev = self.event("edge")
        if which == "long_strings":
            ev["mcc"] = "x" * lim
            ev["country"] = "é" * lim  # 4,096 characters, 8,192 bytes
        elif which == "brackets_in_string":
            ev["merchant_id"] = "[" * 1000 + "{" * 1000  # nesting only inside a string
        elif which == "old":
            ev["event_time"] = self.now_us - rng.choice((10 * 60, 3600, 86400 * 30)) * S
        elif which == "amount_edge":
            ev["amount"] = rng.choice((1e12, -1e12, 0.0, -0.0, 5e-324, -25.0, 999_999_999_999.99))
        elif which == "epoch_start":
            ev["event_time"] = rng.choice((1, 1_000_000))
        else:
            ev["merchant_id"] = rand_text(rng, 200)
        fmt = rng.choice(("avro", "json"))
        value = self.avro(ev) if fmt == "avro" else self.json(ev)
        return Payload(f"edge_{which}_{fmt}", self.key(ev), value, SCORED, event_id=ev["event_id"])

    def ahead(self) -> Payload:
        """A valid event stamped up to 290 s ahead of the clock: within the default ``max_future_s`` (300 s), but
        beyond the lateness (60 s). Its fate is the limits' (the oracle's)."""
        ev = self.event("ahead", event_time=self.now_us + self.rng.randint(10, 290) * S)
        value = self.avro(ev) if self.rng.random() < 0.5 else self.json(ev)
        return Payload("ahead", self.key(ev), value, ORACLE)

    # random mutations of valid encodings (fate unknown: the oracle decides)
    def mutated(self, fmt: str) -> Payload:
        ev = self.event("mut")
        if fmt == "avro":
            keep = 5 if self.rng.random() < 0.7 else 0  # mostly the body: the header would just be refused
            op, value = mutate_bytes(self.rng, self.avro(ev), keep=keep)
        else:
            op, value = mutate_bytes(self.rng, self.json(ev))
        return Payload(f"mut_{fmt}_{op}", self.key(ev), value, ORACLE)

    # hostile by construction: known dead letters
    def hostile(self) -> Payload:
        rng = self.rng
        lim = 4096
        ev = self.event("bad")
        key = self.key(ev)
        kind = rng.choice((
            "avro_trailing", "avro_schema_id", "avro_nonfinite", "avro_huge", "avro_nanoseconds", "avro_future",
            "avro_time_nonpositive", "avro_long_string", "avro_oversized", "avro_header_only", "avro_bad_utf8",
            "json_deep", "json_deep_object", "json_huge_number", "json_big_int", "json_nonfinite_literal",
            "json_nanoseconds", "json_future", "json_time_type", "json_long_string", "json_oversized", "json_not_object",
            "json_missing", "json_mistyped", "json_bad_utf8", "json_lone_surrogate", "json_deep_extra",
            "empty", "null_value", "garbage", "unicode_garbage", "json_bom",
        ))
        if kind == "avro_trailing":
            return Payload(kind, key, self.avro(ev) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9))),
                           DEAD, "trailing bytes")
        if kind == "avro_schema_id":
            sid = rng.choice((0, 2, 3, 4, 5, 99, 2**31, 2**32 - 1))
            body = self.avro(ev)[5:]
            reason = "unknown schema id" if self.codec.registry.by_id(sid) is None else "expected 'transaction'"
            return Payload(kind, key, struct.pack(">bI", 0, sid) + body, DEAD, reason)
        if kind == "avro_nonfinite":
            ev["amount"] = rng.choice((math.nan, math.inf, -math.inf))
            return Payload(kind, key, self.avro(ev), DEAD, "not a finite number")
        if kind == "avro_huge":
            ev["amount"] = rng.choice((1e308, -1e308, 1.7976931348623157e308, 1e12 * 1.0001, -1e13))
            return Payload(kind, key, self.avro(ev), DEAD, "max_abs_number")
        if kind == "avro_nanoseconds":
            ev["event_time"] = time.time_ns()
            return Payload(kind, key, self.avro(ev), DEAD, "max_future")
        if kind == "avro_future":
            ev["event_time"] = self.now_us + rng.choice((3600, 86400 * 365, 10**9)) * S
            return Payload(kind, key, self.avro(ev), DEAD, "max_future")
        if kind == "avro_time_nonpositive":
            ev["event_time"] = rng.choice((0, -1, -2**63))
            return Payload(kind, key, self.avro(ev), DEAD, "positive epoch microseconds")
        if kind == "avro_long_string":
            ev[rng.choice(("event_id", "card_id", "merchant_id", "mcc"))] = "z" * (lim + rng.randint(1, 20_000))
            return Payload(kind, key, self.avro(ev), DEAD, "max_string_chars")
        if kind == "avro_oversized":
            ev["merchant_id"] = "m" * rng.randint(65_536, 150_000)
            return Payload(kind, key, self.avro(ev), DEAD, "max_value_bytes")
        if kind == "avro_header_only":
            return Payload(kind, key, self.avro(ev)[:rng.randint(1, 4)], DEAD, "truncated Confluent header")
        if kind == "avro_bad_utf8":
            ev["card_id"] = "QQQQ"
            value = self.avro(ev).replace(b"QQQQ", rng.choice((b"\xff\xfe\xfd\xfc", b"\xed\xa0\x80Q", b"\xc3\x28QQ")))
            return Payload(kind, key, value, DEAD, "bad Avro body")
        if kind == "json_deep":  # the payload that once crashed the worker with RecursionError
            depth = rng.choice((17, 100, 1000, 1023, 1024, 1025, 5000))
            field = rng.choice(("card_id", "event_id", "merchant_id", "amount"))
            raw = orjson.dumps({k: v for k, v in ev.items() if k != field})[:-1]
            value = raw + b',"' + field.encode() + b'":' + b"[" * depth + b"]" * depth + b"}"
            return Payload(kind, key, value, DEAD, "max_depth")
        if kind == "json_deep_object":
            inner: Any = 1
            for _ in range(rng.choice((16, 17, 40))):
                inner = {"a": inner}
            return Payload(kind, key, orjson.dumps({**ev, "extra": inner}), DEAD, "max_depth")
        if kind == "json_deep_extra":
            depth = rng.choice((20, 1000))
            value = orjson.dumps(ev)[:-1] + b',"extra":' + b"[" * depth + b"1" + b"]" * depth + b"}"
            return Payload(kind, key, value, DEAD, "max_depth")
        if kind == "json_huge_number":
            lit = rng.choice((b"1e308", b"-1e308", b"1.7976931348623157e308", b"1e13", b"-1000000000000.5"))
            value = orjson.dumps({**ev, "amount": 0.0}).replace(b'"amount":0.0', b'"amount":' + lit)
            return Payload(kind, key, value, DEAD, "max_abs_number")
        if kind == "json_big_int":
            field, n = rng.choice((("amount", 2**62), ("amount", 2**70), ("event_time", 2**64 - 1),
                                   ("event_time", 2**63), ("amount", 10**30)))
            value = orjson.dumps({**ev, field: 0}).replace(f'"{field}":0'.encode(), f'"{field}":{n}'.encode())
            return Payload(kind, key, value, DEAD, "")
        if kind == "json_nonfinite_literal":
            lit = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"nan"))
            value = orjson.dumps({**ev, "amount": 0.0}).replace(b'"amount":0.0', b'"amount":' + lit)
            return Payload(kind, key, value, DEAD, "not JSON")
        if kind == "json_nanoseconds":
            return Payload(kind, key, self.json({**ev, "event_time": time.time_ns()}), DEAD, "max_future")
        if kind == "json_future":
            t = self.now_us + rng.choice((3600, 86400 * 365)) * S
            return Payload(kind, key, self.json({**ev, "event_time": t}), DEAD, "max_future")
        if kind == "json_time_type":
            bad = rng.choice((float(self.now_us), str(self.now_us), None, True, [self.now_us], {"t": 1}))
            return Payload(kind, key, self.json({**ev, "event_time": bad}), DEAD, "")
        if kind == "json_long_string":
            field = rng.choice(("event_id", "card_id", "merchant_id", "extra"))
            return Payload(kind, key, self.json({**ev, field: "é" * (lim + rng.randint(1, 10_000))}), DEAD,
                           "max_string_chars")
        if kind == "json_oversized":
            return Payload(kind, key, self.json({**ev, "merchant_id": "m" * rng.randint(65_536, 150_000)}), DEAD,
                           "max_value_bytes")
        if kind == "json_not_object":
            value = rng.choice((b"[]", b"[1,2,3]", b"42", b"-1.5e3", b'"a string"', b"null", b"true", b"false",
                                orjson.dumps([ev]), orjson.dumps(list(ev.values()))))
            return Payload(kind, key, value, DEAD, "expected an object")
        if kind == "json_missing":
            drop = rng.sample(FIELDS, rng.randint(1, 3))
            return Payload(kind, key, self.json({k: v for k, v in ev.items() if k not in drop}), DEAD,
                           "does not match schema")
        if kind == "json_mistyped":
            field = rng.choice(FIELDS)
            if field == "amount":
                bad = rng.choice(("12", None, [1], {"x": 1}, ""))
            elif field == "event_time":
                bad = rng.choice((str(self.now_us), None, [1], {"x": 1}, 1.5))
            else:
                bad = rng.choice((1, 1.5, None, [ev[field]], {"x": ev[field]}, 2**40))
            return Payload(kind, key, self.json({**ev, field: bad}), DEAD, "does not match schema")
        if kind == "json_bad_utf8":
            ev["card_id"] = "QQQQ"
            value = orjson.dumps(ev).replace(b"QQQQ", rng.choice((b"\xff\xfe", b"\xed\xa0\x80", b"\xc3\x28", b"\x80")))
            return Payload(kind, key, value, DEAD, "not JSON")
        if kind == "json_lone_surrogate":
            value = orjson.dumps({**ev, "card_id": "QQ"}).replace(b"QQ", rng.choice((b"\\ud800", b"\\udfff", b"\\ud83dx")))
            return Payload(kind, key, value, DEAD, "not JSON")
        if kind == "json_bom":
            return Payload(kind, key, b"\xef\xbb\xbf" + orjson.dumps(ev), DEAD, "not JSON")
        if kind == "empty":
            return Payload(kind, key, b"", DEAD, "empty value")
        if kind == "null_value":
            return Payload(kind, key, None, DEAD, "empty value")
        if kind == "unicode_garbage":
            text = rand_text(rng, rng.randint(1, 300))
            value = text.encode("utf-8")
            if not value.strip() or value[:1] in b"\x00[{\"-0123456789tfn \t\n\r":
                value = b"#" + value
            return Payload(kind, key, value, DEAD, "not JSON")
        # random bytes, never starting with 0x00 or a JSON start
        value = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
        if value[:1] in (b"\x00", b"{", b"[", b'"', b"-", b" ", b"\t", b"\n", b"\r") or value[:1].isdigit() \
                or value[:1] in b"tfn":
            value = b"\xfe" + value
        return Payload("garbage", key, value, DEAD, "not JSON")

    def structural(self) -> Payload:
        """JSON whose shape is changed: extra fields, random values in place of fields, random objects."""
        rng = self.rng
        ev: dict[str, Any] = self.event("shape")
        which = rng.choice(("extra_fields", "random_field", "random_object", "dup_key"))
        if which == "extra_fields":
            for _ in range(rng.randint(1, 5)):
                ev[rand_text(rng, rng.randint(1, 12))] = rand_json(rng)
            value = self.json(ev)
        elif which == "random_field":
            ev[rng.choice(FIELDS[1:])] = rand_json(rng)  # not the id: two random ids could be equal
            value = self.json(ev)
        elif which == "random_object":
            obj = rand_json(rng)
            value = dumps(obj if rng.random() < 0.5 else {"event_id": self.eid("obj"), "x": obj})
        else:  # a key twice: the last one counts
            value = orjson.dumps(ev)[:-1] + b',"amount":' + dumps(rand_number(rng)) + b"}"
        return Payload(f"json_{which}", self.key(ev), value, ORACLE)


def make_payloads(codec: Codec, *, seed: int, tag: str, cards: list[str], merchants: list[str],
                  now_us: int, valid: int = 4000, edge: int = 400, ahead: int = 20, mutated: int = 3400,
                  hostile: int = 2000, structural: int = 600) -> list[Payload]:
    """The shuffled mix of ``valid`` events (half Avro, half JSON), ``edge`` valid events at the limits, ``mutated``
    random byte mutations of valid encodings (half each format), ``hostile`` payloads built to break a limit and
    ``structural`` JSON shape changes; then ``ahead`` events stamped ahead of the clock."""
    rng = random.Random(seed)
    m = _Maker(codec, rng, tag, cards, merchants, now_us)
    out = [m.valid("avro" if i % 2 else "json") for i in range(valid)]
    out += [m.valid_edge() for _ in range(edge)]
    out += [m.mutated("avro" if i % 2 else "json") for i in range(mutated)]
    out += [m.hostile() for _ in range(hostile)]
    out += [m.structural() for _ in range(structural)]
    rng.shuffle(out)
    return out + [m.ahead() for _ in range(ahead)]  # last: the rest is not scored after them


def kinds(payloads: list[Payload]) -> Counter[str]:
    """How many payloads of each kind (the mutation op's name folded in)."""
    return Counter(p.kind for p in payloads)
