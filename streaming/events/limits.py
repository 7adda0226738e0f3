"""What one input record may be, and the check that enforces it before anything downstream runs.

The limits are declared per pipeline (the ``[limits]`` table, :class:`Limits`); the codec applies
them while decoding (:meth:`streaming.events.codec.Codec.decode`), so a hostile record fails as
*that record's* :class:`~streaming.events.codec.DecodeError` (a dead letter with the limit it
broke), never as an exception in a library further down: a JSON array nested a thousand deep
made fastavro's validation raise ``RecursionError``, a float of 1e308 overflowed the float32
vector and the window sums.

>>> check_value({"a": [1, 2, {"b": "x" * 5}]}, Limits(max_depth=3, max_string_chars=5))
>>> check_value({"a": [[[1]]]}, Limits(max_depth=3))
Traceback (most recent call last):
...
streaming.events.limits.LimitError: nested deeper than 3 levels (limit max_depth)
>>> check_value({"amount": float("inf")}, Limits())
Traceback (most recent call last):
...
streaming.events.limits.LimitError: amount: inf is not a finite number
>>> check_magnitudes({"amount": 1e308, "event_time": 1_800_000_000_000_000}, ["amount"], Limits())
Traceback (most recent call last):
...
streaming.events.limits.LimitError: amount: 1e+308 exceeds the magnitude limit 1e+12 (limit max_abs_number)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Limits", "LimitError", "check_json_depth", "check_magnitudes", "check_value"]

_INT64 = 2**63


class LimitError(ValueError):
    """A record beyond one of its pipeline's limits; the message names the limit."""


@dataclass(frozen=True)
class Limits:
    """What one input record may be (the pipeline's ``[limits]`` table; docs/reliability.md).

    A record beyond any limit is dead-lettered with the limit it broke, before anything downstream
    sees it: the value's size in bytes, the nesting depth of a JSON value, the length of any
    string, the magnitude of any number a feature reads (so that no float32 vector or window sum
    overflows; NaN and infinities are refused everywhere, integers must fit 64 bits), and how far its event time may lie ahead of the worker's
    clock (so that one mis-stamped event cannot move its partition's watermark and make every
    later event late). A dead letter's value is cut to ``dead_letter_bytes`` (its headers then
    carry the original size and sha256), so that a dead letter can always be published.
    """

    max_value_bytes: int = 65_536
    max_depth: int = 16
    max_string_chars: int = 4_096
    max_abs_number: float = 1e12
    max_future_s: float = 300.0
    dead_letter_bytes: int = 65_536

    def check_size(self, data: bytes | None) -> None:
        if data is not None and len(data) > self.max_value_bytes:
            raise LimitError(f"value of {len(data)} bytes exceeds {self.max_value_bytes} (limit max_value_bytes)")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def check_json_depth(data: bytes, max_depth: int) -> None:
    """Raise :class:`LimitError` when the JSON text ``data`` nests deeper than ``max_depth``, before it is parsed.

    A deeply nested value is refused unparsed: built, it would cost CPU and memory, and freeing a
    structure nested hundreds deep disturbs CPython 3.11's recursion accounting (the next
    ``compile()`` then fails with "AST constructor recursion depth mismatch"). Cheap for ordinary
    values: the scan runs only when the text holds more brackets than ``max_depth``.

    >>> check_json_depth(b'{"a": "[[[[[[", "b": [1]}', 3)
    >>> check_json_depth(b'[[[[1]]]]', 3)
    Traceback (most recent call last):
    ...
    streaming.events.limits.LimitError: nested deeper than 3 levels (limit max_depth)
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    depth = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub(b'""', data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise LimitError(f"nested deeper than {max_depth} levels (limit max_depth)")
        else:
            depth -= 1


def check_value(value: Any, limits: Limits) -> None:
    """Raise :class:`LimitError` when ``value`` (decoded JSON or Avro) breaks a limit.

    Walks the value without recursion (a stack), so its own depth cannot be the problem.
    """
    max_depth, max_chars = limits.max_depth, limits.max_string_chars
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        v, depth, where = stack.pop()
        if isinstance(v, dict):
            if depth > max_depth:
                raise LimitError(f"nested deeper than {max_depth} levels (limit max_depth)")
            for k, item in v.items():
                if isinstance(k, str) and len(k) > max_chars:
                    raise LimitError(f"a key of {len(k)} characters exceeds {max_chars} (limit max_string_chars)")
                stack.append((item, depth + 1, str(k)[:64]))
        elif isinstance(v, list):
            if depth > max_depth:
                raise LimitError(f"nested deeper than {max_depth} levels (limit max_depth)")
            stack.extend((item, depth + 1, where) for item in v)
        elif isinstance(v, str):
            if len(v) > max_chars:
                raise LimitError(f"{where or 'a string'}: {len(v)} characters exceed {max_chars} "
                                 "(limit max_string_chars)")
        elif isinstance(v, bytes):
            if len(v) > max_chars:
                raise LimitError(f"{where or 'a bytes value'}: {len(v)} bytes exceed {max_chars} "
                                 "(limit max_string_chars)")
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not -_INT64 <= v < _INT64:
                raise LimitError(f"{where or 'a number'}: {_short(v)} does not fit a 64-bit integer")
        elif isinstance(v, float) and not math.isfinite(v):
            raise LimitError(f"{where or 'a number'}: {v!r} is not a finite number")


def check_magnitudes(record: dict[str, Any], fields: Any, limits: Limits) -> None:
    """Raise :class:`LimitError` when a numeric field the features read is larger than ``max_abs_number``.

    Only the fields that reach a float32 vector or a window sum are bounded: an id or a
    timestamp in epoch microseconds (about 1.8e15) may be larger.
    """
    max_abs = limits.max_abs_number
    for name in fields:
        v = record.get(name)
        if isinstance(v, int | float) and not isinstance(v, bool) and not abs(v) <= max_abs:
            shown = _short(v) if isinstance(v, int) else f"{v:g}"
            raise LimitError(f"{name}: {shown} exceeds the magnitude limit {max_abs:g} (limit max_abs_number)")


def _short(n: int) -> str:
    """An integer for a message: huge ones by their size, not their 4,300 digits."""
    digits = n.bit_length() * 0.30103
    return str(n) if digits < 30 else f"an integer of about {digits:.0f} digits"
