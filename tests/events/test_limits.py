"""Input limits in the codec (issue 13, findings 1 and 6): hostile values are that record's DecodeError."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from streaming.events.codec import Codec, DecodeError
from streaming.events.deadletter import DeadLetter
from streaming.events.limits import LimitError, Limits, check_magnitudes, check_value
from streaming.events.schemas import SchemaRegistry

EVENT = {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 12.5, "country": "US",
         "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": 1_700_000_000_000_000}


@pytest.fixture(scope="module")
def codec(schema_registry: SchemaRegistry) -> Codec:
    return Codec(schema_registry)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1000, 1023])
def test_deep_nesting_in_a_string_field_is_a_decode_error_not_a_recursion_error(codec: Codec, depth: int) -> None:
    """It parsed (orjson allows 1,024 levels) and then made fastavro's validation raise RecursionError."""
    payload = b'{"event_id": "e1", "card_id": ' + nested(depth).encode() + b', "amount": 1}'
    assert isinstance(orjson.loads(payload)["card_id"], list)
    with pytest.raises(DecodeError, match="max_depth"):
        codec.decode("transaction", payload, Limits())
    with pytest.raises(DecodeError):  # without limits: still this record's error, never a RecursionError
        codec.decode("transaction", payload)


def test_avro_with_trailing_bytes_is_refused(codec: Codec) -> None:
    data = codec.encode("transaction", EVENT)
    assert codec.decode("transaction", data) == EVENT
    with pytest.raises(DecodeError, match="3 trailing bytes"):
        codec.decode("transaction", data + b"\x00\x01\x02")


def test_size_strings_and_numbers(codec: Codec) -> None:
    limits = Limits(max_value_bytes=300, max_string_chars=20)
    with pytest.raises(DecodeError, match="max_value_bytes"):
        codec.decode("transaction", orjson.dumps({**EVENT, "merchant_id": "m" * 400}), limits)
    with pytest.raises(DecodeError, match="max_string_chars"):
        codec.decode("transaction", orjson.dumps({**EVENT, "merchant_id": "m" * 30}), limits)
    avro_nan = codec.encode("transaction", {**EVENT, "amount": float("nan")})
    with pytest.raises(DecodeError, match="not a finite number"):
        codec.decode("transaction", avro_nan, Limits())
    with pytest.raises(DecodeError, match="64-bit"):
        codec.decode("transaction", b'{"event_id": "e1", "event_time": 18446744073709551615}', Limits())
    assert codec.decode("transaction", codec.encode("transaction", EVENT), Limits()) == EVENT  # timestamps pass


def test_magnitudes_bound_only_the_fields_features_read() -> None:
    check_magnitudes({**EVENT, "amount": 1e12}, ["amount"], Limits())
    for bad in (1e308, -1e308, 2**70, float("inf")):
        with pytest.raises(LimitError, match="amount"):
            check_magnitudes({**EVENT, "amount": bad}, ["amount"], Limits())
    check_value({"deep": [[[[1]]]], "s": "x" * 10}, Limits(max_depth=5))


def test_an_oversized_dead_letter_is_cut_with_its_size_and_hash() -> None:
    value = bytes(range(256)) * 1000
    dl = DeadLetter(b"k", value, "events", 3, 7, 1, "decode", "DecodeError", "too big")
    key, cut, headers = dl.parts(max_bytes=1024)
    h = dict(headers)
    assert key == b"k" and cut == value[:1024]
    assert h["dlq.truncated"] == b"1" and int(h["dlq.original_size"]) == len(value)
    assert h["dlq.original_sha256"].decode() == hashlib.sha256(value).hexdigest()
    key, same, headers = dl.parts(max_bytes=len(value))
    assert same == value and "dlq.truncated" not in dict(headers)
