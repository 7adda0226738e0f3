"""Signed checkpoints of the worker's online-learning state (learner, evaluator, drift monitors).

The state is pickled, and a pickle runs code when it is loaded, so a checkpoint is only unpickled after its
HMAC-SHA256 under a secret key has been verified, and after the River and Python versions it was written under
have been found to match the running ones (a River object pickled under another River version may load into a
subtly different object, or not at all).

Layout of a sealed blob (all integers big-endian)::

    offset       size   field
    0            4      magic b"SCKP"
    4            1      format (1)
    5            4      header length H
    9            H      header: orjson object (sorted keys) with
                          format, river, python, created_at (epoch seconds, float),
                          offsets ({labels partition: last offset the state reflects}), meta,
                          payload_sha256 (hex), payload_length
    9 + H        32     MAC = HMAC-SHA256(key, magic + format + header length + header + payload)
    41 + H       ...    payload: pickle.dumps(state, protocol=5)

The MAC covers every byte of the blob except itself. ``open_sealed`` checks, in this order, and refuses with a
``CheckpointRefused`` whose ``reason`` is one actionable line: the magic, the format byte, that the blob is long
enough for its header and MAC, that the header is a JSON object (parsed with orjson, which runs no code), that the
payload has the length the header states (truncated or over-long), the HMAC (``hmac.compare_digest``), the header's
fields and its payload sha256, the River version (exact), the Python version (major.minor). Only then is the
payload unpickled; an unpickling error is a refusal too.

>>> key = b"k" * 32
>>> blob = seal({"n": 3}, key=key, offsets={"labels-0": 41}, meta={"model": "fraud"})
>>> blob[:4]
b'SCKP'
>>> r = open_sealed(blob, key=key)
>>> r.state, r.offsets, r.meta
({'n': 3}, {'labels-0': 41}, {'model': 'fraud'})
>>> open_sealed(blob, key=b"x" * 32)
Traceback (most recent call last):
CheckpointRefused: HMAC mismatch: the checkpoint was written under another key or altered

``CheckpointStore`` keeps the latest checkpoint under a Redis key and the one before it under ``key + ":prev"``;
``load`` falls back to the previous one when the latest is refused, and to nothing (start fresh) when both are.

The key comes from ``resolve_key``: the text of ``STREAMING_CHECKPOINT_KEY``, else the file named by
``STREAMING_CHECKPOINT_KEY_FILE`` (created with 32 random bytes, as hex, mode 0600, when missing). Every worker
that must read another's checkpoints needs the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import platform
import secrets
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import river
from redis.exceptions import ResponseError

__all__ = ["MAGIC", "FORMAT", "CheckpointRefused", "Restored", "resolve_key", "seal", "open_sealed",
           "CheckpointStore"]

log = logging.getLogger(__name__)

MAGIC = b"SCKP"
FORMAT = 1
MIN_KEY_BYTES = 16
_PREFIX = struct.Struct(">4sBI")  # magic, format, header length
_MAC_LEN = hashlib.sha256().digest_size  # 32
_HEADER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int, "river": str, "python": str, "created_at": (int, float), "offsets": dict, "meta": dict,
    "payload_sha256": str, "payload_length": int,
}


class CheckpointRefused(ValueError):
    """A checkpoint that is not loaded; ``reason`` says why in one line a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Restored:
    """An opened checkpoint: the state and what its header recorded."""

    state: Any
    offsets: dict[str, int]  # labels partition -> last offset the state reflects
    meta: dict[str, Any]
    created_at: float  # epoch seconds
    river_version: str
    python_version: str


def resolve_key(key: str | None, key_file: Path | None, *, create: bool = True) -> bytes:
    """The checkpoint key: ``key`` (text, UTF-8) if given and not empty, else the stripped content of ``key_file``.

    A missing ``key_file`` is created (parent directories too, mode 0600) holding ``secrets.token_hex(32)`` when
    ``create`` is true. A key under 16 bytes is refused.

    >>> resolve_key("a-long-enough-secret", None)
    b'a-long-enough-secret'
    >>> resolve_key("short", None)
    Traceback (most recent call last):
    ValueError: STREAMING_CHECKPOINT_KEY is 5 bytes; a checkpoint key needs at least 16
    """
    if key:
        raw = key.encode()
        if len(raw) < MIN_KEY_BYTES:
            raise ValueError(f"STREAMING_CHECKPOINT_KEY is {len(raw)} bytes; a checkpoint key needs at least "
                             f"{MIN_KEY_BYTES}")
        return raw
    if key_file is None:
        raise ValueError("no checkpoint key: set STREAMING_CHECKPOINT_KEY (a secret of at least 16 bytes) or "
                         "STREAMING_CHECKPOINT_KEY_FILE (a file holding one; created if missing)")
    path = Path(key_file)
    if not path.exists():
        if not create:
            raise ValueError(f"checkpoint key file {path} does not exist: create it or set STREAMING_CHECKPOINT_KEY")
        _create_key_file(path)
    raw = path.read_bytes().strip()
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"checkpoint key file {path} holds {len(raw)} bytes; a checkpoint key needs at least "
                         f"{MIN_KEY_BYTES} (set STREAMING_CHECKPOINT_KEY_FILE to another file or fix this one)")
    return raw


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def _mac(key: bytes, prefix_and_header: bytes, payload: bytes) -> bytes:
    m = hmac.new(key, prefix_and_header, hashlib.sha256)
    m.update(payload)
    return m.digest()


def seal(state: object, *, key: bytes, offsets: Mapping[str, int], meta: Mapping[str, Any] | None = None) -> bytes:
    """The sealed blob of ``state`` (see the module docstring for the layout); ``meta`` must be JSON-serialisable."""
    payload = pickle.dumps(state, protocol=5)
    header = orjson.dumps({
        "format": FORMAT,
        "river": river.__version__,
        "python": platform.python_version(),
        "created_at": time.time(),
        "offsets": {str(k): int(v) for k, v in offsets.items()},
        "meta": dict(meta or {}),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_length": len(payload),
    }, option=orjson.OPT_SORT_KEYS)
    head = _PREFIX.pack(MAGIC, FORMAT, len(header)) + header
    return head + _mac(key, head, payload) + payload


def open_sealed(blob: bytes, *, key: bytes) -> Restored:
    """The state sealed in ``blob``, or ``CheckpointRefused``; nothing is unpickled before every check passed."""
    blob = bytes(blob)
    if len(blob) < _PREFIX.size:
        raise CheckpointRefused(f"truncated: {len(blob)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, fmt, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointRefused(f"not a checkpoint: magic {magic!r}, expected {MAGIC!r}")
    if fmt != FORMAT:
        raise CheckpointRefused(f"unknown checkpoint format {fmt} (this code reads format {FORMAT}): "
                                "written by another version of the worker")
    mac_at = _PREFIX.size + header_len
    payload_at = mac_at + _MAC_LEN
    if len(blob) < payload_at:
        raise CheckpointRefused(f"truncated: {len(blob)} bytes, but the header and MAC alone need {payload_at}")
    try:
        header = orjson.loads(blob[_PREFIX.size:mac_at])
    except orjson.JSONDecodeError as exc:
        raise CheckpointRefused(f"header is not JSON ({exc}): the checkpoint is corrupted") from None
    if not isinstance(header, dict):
        raise CheckpointRefused("header is not a JSON object: the checkpoint is corrupted")
    payload = blob[payload_at:]
    stated = header.get("payload_length")
    if isinstance(stated, int) and stated != len(payload):
        what = "truncated" if len(payload) < stated else "over-long"
        raise CheckpointRefused(f"{what}: the payload is {len(payload)} bytes but the header says {stated}; "
                                "the checkpoint was cut short or altered")
    if not hmac.compare_digest(blob[mac_at:payload_at], _mac(key, blob[:mac_at], payload)):
        raise CheckpointRefused("HMAC mismatch: the checkpoint was written under another key or altered")
    # From here on the header is authentic: what is wrong with it was written so.
    for name, kind in _HEADER_FIELDS.items():
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointRefused(f"header field {name!r} is missing or of the wrong type ({type(value).__name__}):"
                                    " written by an incompatible worker")
    if header["format"] != fmt:
        raise CheckpointRefused(f"header format {header['format']} disagrees with the format byte {fmt}")
    if header["payload_length"] != len(payload) or header["payload_sha256"] != hashlib.sha256(payload).hexdigest():
        raise CheckpointRefused("payload sha256 or length mismatch: the checkpoint was corrupted before it was sealed")
    if header["river"] != river.__version__:
        raise CheckpointRefused(f"written under River {header['river']}, running River {river.__version__}: "
                                "River objects do not survive a version change; start fresh or pin River")
    if header["python"].split(".")[:2] != platform.python_version().split(".")[:2]:
        raise CheckpointRefused(f"written under Python {header['python']}, running Python "
                                f"{platform.python_version()}: start fresh or run the same Python major.minor")
    try:
        state = pickle.loads(payload)
    except Exception as exc:
        raise CheckpointRefused(f"payload could not be unpickled ({type(exc).__name__}: {exc})") from None
    return Restored(state=state, offsets={str(k): int(v) for k, v in header["offsets"].items()},
                    meta=header["meta"], created_at=float(header["created_at"]), river_version=header["river"],
                    python_version=header["python"])


class CheckpointStore:
    """Sealed checkpoints in Redis: the latest under ``name``, the one before under ``name + ":prev"``.

    ``save`` runs one MULTI/EXEC transaction: RENAME ``name`` to ``name:prev`` (an error Redis reports when there is
    no latest yet, which is ignored), then SET ``name``. No client sees the state between the two, and a SET that
    fails inside EXEC (out of memory) leaves no latest but the previous in place, which ``load`` then opens.
    ``keep=1`` keeps no previous (SET, DEL prev). In Redis Cluster both keys must hash to one slot: give ``name`` a
    hash tag (``"{ckpt:fraud}"``).

    ``load`` opens the latest, falls back to the previous when the latest is absent or refused, and returns None when
    neither opens; ``refused`` lists the reasons of the last ``load``. Bad content never raises; a Redis error does.
    The client must return bytes (``decode_responses=False``, the default).
    """

    def __init__(self, client: aioredis.Redis, name: str, key: bytes, *, keep: int = 2) -> None:
        if keep not in (1, 2):
            raise ValueError(f"keep={keep}: a checkpoint store keeps the latest (1) or the latest and previous (2)")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the checkpoint key is {len(key)} bytes; it needs at least {MIN_KEY_BYTES}")
        self.client = client
        self.name = name
        self.prev_name = name + ":prev"
        self.key = key
        self.keep = keep
        self.refused: list[str] = []

    async def save(self, state: object, offsets: Mapping[str, int], meta: Mapping[str, Any] | None = None) -> int:
        """Seal ``state`` and store it as the latest; returns the bytes written."""
        blob = seal(state, key=self.key, offsets=offsets, meta=meta)
        async with self.client.pipeline(transaction=True) as pipe:
            if self.keep == 2:
                pipe.execute_command("RENAME", self.name, self.prev_name)  # (a cluster pipeline refuses .rename)
            else:
                pipe.execute_command("DEL", self.prev_name)
            pipe.set(self.name, blob)
            results = await pipe.execute(raise_on_error=False)
        first, stored = results
        if isinstance(first, ResponseError) and "no such key" not in str(first).lower():
            raise first
        if isinstance(stored, Exception):
            raise stored
        return len(blob)

    async def load(self) -> Restored | None:
        """The latest checkpoint that opens (latest, else previous), or None; see ``refused`` for what did not."""
        self.refused = []
        blobs = await self.client.mget([self.name, self.prev_name])  # one round trip, one consistent view
        found = [(name, blob) for name, blob in zip((self.name, self.prev_name), blobs, strict=True) if blob is not None]
        for i, (name, blob) in enumerate(found):
            if not isinstance(blob, bytes):
                raise TypeError("the checkpoint store needs a Redis client with decode_responses=False")
            try:
                return open_sealed(blob, key=self.key)
            except CheckpointRefused as exc:
                self.refused.append(f"{name}: {exc.reason}")
                then = "trying the previous one" if i + 1 < len(found) else "starting fresh"
                log.warning("checkpoint %s refused (%s); %s", name, exc.reason, then)
        return None
