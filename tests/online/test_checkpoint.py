"""Signed checkpoints: the envelope refuses what it must before anything is unpickled; the Redis store falls back."""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
import platform
import random
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import river
from river import drift, linear_model, metrics, preprocessing

from streaming.online.checkpoint import (
    CheckpointRefused,
    CheckpointStore,
    Restored,
    open_sealed,
    resolve_key,
    seal,
)

KEY_A = b"a" * 32
KEY_B = b"b" * 32
RAN: list[str] = []  # what the malicious payload appends to when it is unpickled


def _record(what: str) -> None:
    RAN.append(what)


class Evil:
    """Unpickling this calls ``_record``: the code a forged checkpoint would run."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("ran",))


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


def rows(seed: int, n: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {f"x{i}": rng.gauss(0, 1 + i) for i in range(6)}
        out.append((x, x["x0"] + 0.5 * x["x3"] + rng.gauss(0, 1) > 0))
    return out


def forge(payload: bytes, key: bytes, **changes: Any) -> bytes:
    """A blob built from the documented layout alone, with ``changes`` to the header and a valid MAC."""
    header = {"format": 1, "river": river.__version__, "python": platform.python_version(), "created_at": 1.0,
              "offsets": {}, "meta": {}, "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "payload_length": len(payload)} | changes
    h = orjson.dumps(header)
    head = b"SCKP" + bytes([1]) + len(h).to_bytes(4, "big") + h
    return head + hmac.new(key, head + payload, hashlib.sha256).digest() + payload


def header_len(blob: bytes) -> int:
    return int.from_bytes(blob[5:9], "big")


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1:]


def refusal(blob: bytes, key: bytes = KEY_A) -> str:
    with pytest.raises(CheckpointRefused) as info:
        open_sealed(blob, key=key)
    assert "\n" not in info.value.reason
    return info.value.reason


# --- the envelope -------------------------------------------------------------------------------------------------


def test_river_pipeline_round_trip_predicts_the_same() -> None:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    evaluator = metrics.ROCAUC()
    detector = drift.ADWIN()
    for x, y in rows(1, 200):
        evaluator.update(y, model.predict_proba_one(x).get(True, 0.0))
        detector.update(float(y))
        model.learn_one(x, y)
    state = {"learner": model, "evaluator": evaluator, "drift": detector}
    blob = seal(state, key=KEY_A, offsets={"labels-0": 199, "labels-1": 7}, meta={"model": "fraud", "n": 200})

    got = open_sealed(blob, key=KEY_A)
    assert isinstance(got, Restored)
    assert got.offsets == {"labels-0": 199, "labels-1": 7}
    assert got.meta == {"model": "fraud", "n": 200}
    assert got.river_version == river.__version__
    assert got.python_version == platform.python_version()
    assert got.created_at > 1.6e9
    restored = got.state["learner"]
    assert restored is not model
    fresh = rows(2, 50)
    assert [restored.predict_proba_one(x) for x, _ in fresh] == [model.predict_proba_one(x) for x, _ in fresh]
    assert len({round(model.predict_proba_one(x)[True], 6) for x, _ in fresh}) > 10  # it learned something
    assert got.state["evaluator"].get() == evaluator.get()
    assert got.state["drift"].estimation == detector.estimation
    # both go on learning the same way
    for x, y in fresh:
        model.learn_one(x, y)
        restored.learn_one(x, y)
    assert [restored.predict_proba_one(x) for x, _ in rows(3, 20)] == [model.predict_proba_one(x) for x, _ in rows(3, 20)]


def test_the_layout_is_the_documented_one() -> None:
    blob = seal([1, 2], key=KEY_A, offsets={"p": 3})
    assert blob[:4] == b"SCKP" and blob[4] == 1
    h = header_len(blob)
    header = orjson.loads(blob[9:9 + h])
    payload = blob[9 + h + 32:]
    assert pickle.loads(payload) == [1, 2]
    assert header["payload_length"] == len(payload)
    assert header["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert blob[9 + h:9 + h + 32] == hmac.new(KEY_A, blob[:9 + h] + payload, hashlib.sha256).digest()
    assert open_sealed(forge(payload, KEY_A), key=KEY_A).state == [1, 2]  # the forger below builds valid blobs


def test_a_flipped_byte_in_the_header_is_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={"p": 1})
    at = blob.index(b'"payload_sha256":"') + len(b'"payload_sha256":"')  # a hex digit: the JSON stays valid
    assert "HMAC mismatch" in refusal(flip(blob, at))


def test_a_flipped_byte_in_the_payload_is_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={"p": 1})
    assert "HMAC mismatch" in refusal(flip(blob, len(blob) - 2))


def test_a_flipped_byte_in_the_mac_is_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={"p": 1})
    assert "HMAC mismatch" in refusal(flip(blob, 9 + header_len(blob) + 5))


def test_every_single_flipped_bit_is_refused_before_unpickling() -> None:
    blob = seal(Evil(), key=KEY_A, offsets={"p": 1})
    RAN.clear()
    for at in range(len(blob)):
        for bit in (0x01, 0x80):
            refusal(blob[:at] + bytes([blob[at] ^ bit]) + blob[at + 1:])
    assert RAN == []


def test_wrong_key_is_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={})
    assert refusal(blob, KEY_B) == "HMAC mismatch: the checkpoint was written under another key or altered"


def test_unpickling_code_does_not_run_under_the_wrong_key() -> None:
    blob = seal(Evil(), key=KEY_A, offsets={})
    assert RAN == []
    assert "HMAC mismatch" in refusal(blob, KEY_B)
    assert RAN == []  # refused before anything was unpickled
    open_sealed(blob, key=KEY_A)
    assert RAN == ["ran"]  # under the right key the payload does run: the test above proves something


@pytest.mark.parametrize("keep", [0, 3, 8, 20, -33, -32, -1])
def test_truncated_blob_is_refused(keep: int) -> None:
    blob = seal({"a": list(range(50))}, key=KEY_A, offsets={})
    reason = refusal(blob[:keep])
    assert "truncated" in reason


def test_over_long_blob_is_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={})
    assert "over-long" in refusal(blob + b"\x00")


def test_wrong_magic_and_unknown_format_are_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={})
    assert "not a checkpoint" in refusal(b"XCKP" + blob[4:])
    assert "unknown checkpoint format 2" in refusal(blob[:4] + b"\x02" + blob[5:])


def test_header_that_is_not_json_is_refused() -> None:
    blob = seal({"a": 1}, key=KEY_A, offsets={})
    h = header_len(blob)
    bad = b"{not json" + b" " * (h - 9)
    assert "header is not JSON" in refusal(blob[:9] + bad + blob[9 + h:])


def test_a_different_river_version_is_refused_before_unpickling() -> None:
    payload = pickle.dumps(Evil(), protocol=5)
    reason = refusal(forge(payload, KEY_A, river="0.0.1"))
    assert reason.startswith(f"written under River 0.0.1, running River {river.__version__}")
    assert RAN == []


def test_python_version_is_compared_on_major_minor() -> None:
    major, minor, _ = platform.python_version_tuple()
    payload = pickle.dumps(Evil(), protocol=5)
    assert "written under Python 2.7.18" in refusal(forge(payload, KEY_A, python="2.7.18"))
    assert "Python" in refusal(forge(payload, KEY_A, python=f"{major}.{int(minor) + 1}.0"))
    assert RAN == []
    open_sealed(forge(payload, KEY_A, python=f"{major}.{minor}.999"), key=KEY_A)  # another patch release is fine
    assert RAN == ["ran"]


def test_sha256_and_length_are_checked_even_under_a_valid_mac() -> None:
    payload = pickle.dumps(Evil(), protocol=5)
    assert "sha256" in refusal(forge(payload, KEY_A, payload_sha256="0" * 64))
    assert "header field 'offsets'" in refusal(forge(payload, KEY_A, offsets=[1]))
    assert RAN == []


def test_an_authentic_payload_that_does_not_unpickle_is_refused() -> None:
    assert "could not be unpickled" in refusal(forge(b"not a pickle", KEY_A))


# --- key resolution ------------------------------------------------------------------------------------------------


def test_key_from_text() -> None:
    assert resolve_key("0123456789abcdef", Path("/nonexistent/never-read")) == b"0123456789abcdef"
    assert resolve_key("é" * 8, None) == ("é" * 8).encode()  # 16 bytes in UTF-8


def test_key_text_too_short() -> None:
    with pytest.raises(ValueError, match="STREAMING_CHECKPOINT_KEY is 15 bytes"):
        resolve_key("0123456789abcde", None)


def test_key_from_file_is_stripped(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("  0123456789abcdef-secret\n")
    assert resolve_key(None, f) == b"0123456789abcdef-secret"
    assert resolve_key("", f) == b"0123456789abcdef-secret"  # an empty setting counts as unset


def test_key_file_too_short(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("short\n")
    with pytest.raises(ValueError, match="holds 5 bytes"):
        resolve_key(None, f)


def test_missing_key_file_is_created_private(tmp_path: Path) -> None:
    f = tmp_path / "deep" / "er" / "key"
    key = resolve_key(None, f)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert len(key) == 64 and bytes.fromhex(key.decode())
    assert f.read_bytes().strip() == key
    assert resolve_key(None, f) == key  # read back, not regenerated
    assert resolve_key(None, tmp_path / "other") != key


def test_missing_key_file_without_create(tmp_path: Path) -> None:
    f = tmp_path / "key"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_key(None, f, create=False)
    assert not f.exists()


def test_no_key_names_both_settings() -> None:
    with pytest.raises(ValueError, match=r"STREAMING_CHECKPOINT_KEY .*STREAMING_CHECKPOINT_KEY_FILE"):
        resolve_key(None, None)


# --- the Redis store -----------------------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis(host="127.0.0.1", port=6379)
    yield c
    await c.aclose()


@pytest.fixture
async def name(client: aioredis.Redis) -> AsyncIterator[str]:
    n = f"test-checkpoint-{uuid.uuid4().hex}"
    yield n
    await client.delete(n, n + ":prev")


async def raw(client: aioredis.Redis, key: str) -> bytes:
    blob = await client.get(key)
    assert isinstance(blob, bytes)
    return blob


async def test_store_save_and_load(client: aioredis.Redis, name: str) -> None:
    store = CheckpointStore(client, name, KEY_A)
    written = await store.save({"gen": 1}, {"labels-0": 10})
    assert written == len(await raw(client, name))
    assert not await client.exists(name + ":prev")
    await store.save({"gen": 2}, {"labels-0": 20}, meta={"why": "periodic"})
    got = await store.load()
    assert got is not None
    assert (got.state, got.offsets, got.meta) == ({"gen": 2}, {"labels-0": 20}, {"why": "periodic"})
    assert store.refused == []
    assert open_sealed(await raw(client, name + ":prev"), key=KEY_A).state == {"gen": 1}


async def test_store_falls_back_to_prev_when_latest_is_corrupted(client: aioredis.Redis, name: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(client, name, KEY_A)
    await store.save({"gen": 1}, {"p": 1})
    await store.save({"gen": 2}, {"p": 2})
    await client.set(name, b"garbage that is no checkpoint")
    with caplog.at_level(logging.WARNING, logger="streaming.online.checkpoint"):
        got = await store.load()
    assert got is not None and got.state == {"gen": 1} and got.offsets == {"p": 1}
    assert len(store.refused) == 1 and "not a checkpoint" in store.refused[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "trying the previous one" in warnings[0] and "not a checkpoint" in warnings[0]


async def test_store_starts_fresh_when_everything_is_refused(client: aioredis.Redis, name: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    await CheckpointStore(client, name, KEY_A).save({"gen": 1}, {})
    await CheckpointStore(client, name, KEY_A).save({"gen": 2}, {})
    store = CheckpointStore(client, name, KEY_B)
    with caplog.at_level(logging.WARNING, logger="streaming.online.checkpoint"):
        assert await store.load() is None
    assert len(store.refused) == 2 and all("HMAC mismatch" in r for r in store.refused)
    assert "starting fresh" in caplog.records[-1].getMessage()


async def test_store_load_is_none_when_absent(client: aioredis.Redis, name: str) -> None:
    store = CheckpointStore(client, name, KEY_A)
    assert await store.load() is None
    assert store.refused == []


async def test_store_keep_one_keeps_no_previous(client: aioredis.Redis, name: str) -> None:
    store = CheckpointStore(client, name, KEY_A, keep=1)
    await store.save({"gen": 1}, {})
    await store.save({"gen": 2}, {})
    assert not await client.exists(name + ":prev")
    got = await store.load()
    assert got is not None and got.state == {"gen": 2}
    with pytest.raises(ValueError, match="keep=3"):
        CheckpointStore(client, name, KEY_A, keep=3)
