"""The wire format: Avro in the Confluent framing, JSON accepted.

A value whose first byte is 0x00 is ``0x00 | schema id (4 bytes, big endian) |
Avro binary``; it is read with the writer's schema (looked up by id) into the
reader's (the latest version of the subject), so older producers keep working.
Anything else is read as JSON and validated against the subject's schema,
with defaults filled in, so a person can produce plain JSON. An Avro body must
end where its record ends (trailing bytes are refused). Given the pipeline's
:class:`~streaming.events.limits.Limits`, the value's size, nesting, strings and
numbers are checked before the schema validation sees them.

>>> import pathlib
>>> from streaming.settings import project_root
>>> reg = SchemaRegistry.from_dir(project_root() / "schemas")
>>> codec = Codec(reg)
>>> data = codec.encode("label", {"event_id": "e1", "label": 1, "label_time": 5})
>>> data[:5].hex()
'0000000003'
>>> codec.decode("label", data)
{'event_id': 'e1', 'label': 1, 'label_time': 5}
>>> codec.decode("label", b'{"event_id": "e2", "label": 0, "label_time": 7}')["event_id"]
'e2'
>>> codec.decode("label", b"\\xff\\xfe")
Traceback (most recent call last):
...
streaming.events.codec.DecodeError: not JSON and not Avro (first byte 0xff): ...
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import orjson
from fastavro.validation import ValidationError, validate

from streaming.events.limits import LimitError, Limits, check_json_depth, check_value
from streaming.events.schemas import Schema, SchemaRegistry

__all__ = ["Codec", "DecodeError", "DEFAULT_LIMITS", "MAGIC"]

MAGIC = 0
_HEADER = struct.Struct(">bI")


#: the limits of a decode that names none (a pipeline passes its own)
DEFAULT_LIMITS = Limits()


class DecodeError(ValueError):
    """A record that cannot be decoded; the message says why (it goes to the DLQ)."""


def _fill_defaults(record: dict[str, Any], schema: Schema) -> dict[str, Any]:
    for f in schema.raw["fields"]:
        if f["name"] not in record and "default" in f:
            record[f["name"]] = f["default"]
    return record


class Codec:
    """Encode and decode records of the registry's subjects."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry

    def encode(self, subject: str, record: dict[str, Any]) -> bytes:
        schema = self.registry.latest(subject)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, schema.id))
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def encode_json(self, record: dict[str, Any]) -> bytes:
        return orjson.dumps(record)

    def decode(self, subject: str, data: bytes | None, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
        """The record in ``data``; :class:`DecodeError` saying why when it is not one or breaks ``limits``
        (the pipeline's; by default :class:`~streaming.events.limits.Limits`' defaults)."""
        if not data:
            raise DecodeError("empty value")
        try:
            limits.check_size(data)
            rec = self._decode(subject, data, limits)
            if data[0] == MAGIC:  # a JSON value was checked before its validation
                check_value(rec, limits)
            return rec
        except LimitError as exc:
            raise DecodeError(str(exc)) from None

    def _decode(self, subject: str, data: bytes, limits: Limits) -> dict[str, Any]:
        reader = self.registry.latest(subject)
        if data[0] == MAGIC:
            if len(data) < 5:
                raise DecodeError("truncated Confluent header")
            _, schema_id = _HEADER.unpack_from(data)
            writer = self.registry.by_id(schema_id)
            if writer is None:
                raise DecodeError(f"unknown schema id {schema_id}")
            if writer.subject != reader.subject:
                raise DecodeError(f"schema id {schema_id} is {writer.subject!r}, expected {subject!r}")
            body = io.BytesIO(data[5:])
            try:
                rec = fastavro.schemaless_reader(body, writer.parsed, None if writer.id == reader.id else reader.parsed)
            except Exception as exc:  # fastavro raises several types on garbage
                raise DecodeError(f"bad Avro body for schema id {schema_id}: {type(exc).__name__}: {exc}") from None
            if not isinstance(rec, dict):
                raise DecodeError("Avro body is not a record")
            if body.tell() != len(data) - 5:
                raise DecodeError(f"{len(data) - 5 - body.tell()} trailing bytes after the Avro record")
            return rec
        check_json_depth(data, limits.max_depth)  # before parsing: a deep value is never built
        try:
            rec = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not JSON and not Avro (first byte 0x{data[0]:02x}): {exc}") from None
        if not isinstance(rec, dict):
            raise DecodeError(f"JSON value is a {type(rec).__name__}, expected an object")
        check_value(rec, limits)  # before the validation: fastavro's recursion is not bounded
        _fill_defaults(rec, reader)
        try:
            validate(rec, reader.parsed, raise_errors=True)
        except ValidationError as exc:
            raise DecodeError(f"does not match schema {subject!r}: {'; '.join(map(str, exc.errors))}") from None
        except Exception as exc:  # fastavro's validation itself failed (a value it cannot handle)
            raise DecodeError(f"cannot be validated against schema {subject!r}: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
        return rec
