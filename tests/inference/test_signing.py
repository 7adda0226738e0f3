"""Signed model artefacts: a version written under a key verifies; a changed file, an unsigned version, another key
or a signature copied from another version is refused with a ModelError naming the version and the reason, and
the key appears in no message and no file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streaming.errors import ConfigError, ModelError
from streaming.inference.manager import ModelManager
from streaming.inference.registry import ModelRegistry
from streaming.inference.signing import ModelSigner, SignatureError, resolve_signing_key, signer_from_settings
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from tests.inference.test_registry import INPUTS, tiny_onnx

pytestmark = pytest.mark.security

KEY = "correct horse battery staple 42"
OTHER = "another key, also long enough"
REFERENCE = b'{"format": 1, "names": ["a"]}'


def signed(tmp_path: Path, key: str = KEY) -> ModelRegistry:
    return ModelRegistry(tmp_path, "fraud", signer=ModelSigner(key.encode()))


def refusal(action: Callable[[], Any], match: str) -> str:
    """The message of the SignatureError ``action`` raises (it must match ``match``)."""
    with pytest.raises(SignatureError, match=match) as info:
        action()
    assert isinstance(info.value, ModelError)  # a one-line user error at the CLI
    return str(info.value)


def assert_no_key(text: str, *keys: str) -> None:
    for key in (KEY, OTHER, *keys):
        assert key not in text
        assert key.encode().hex() not in text


# -- signed versions verify --------------------------------------------------------------------------------------

def test_a_signed_version_verifies_and_serves(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    mv = reg.write(b"onnx bytes", {"inputs": ["a"]}, reference=REFERENCE)
    sig = json.loads(mv.signature_path.read_text())
    assert sig["alg"] == "HMAC-SHA256" and sig["format"] == 1
    assert sig["pipeline"] == "fraud" and sig["version"] == "v1"
    assert sorted(sig["files"]) == ["metadata.json", "model.onnx", "reference.json"]
    assert reg.signer is not None and sig["key_id"] == reg.signer.key_id and len(sig["mac"]) == 64
    assert mv.verify() == b"onnx bytes"
    assert reg.get("v1").verify() == b"onnx bytes"  # read back from disk
    assert reg.activate("v1").version == "v1" and reg.set_shadow("v1") is not None
    assert mv.reference_path.read_bytes() == REFERENCE


def test_the_reference_is_read_as_it_was_signed(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    mv = reg.write(b"onnx", {"inputs": ["a"]}, reference=REFERENCE)
    assert mv.read_reference() == REFERENCE
    assert reg.write(b"onnx", {"inputs": ["a"]}).read_reference() is None
    mv.reference_path.write_bytes(b'{"format": 1, "names": ["evil"]}')
    refusal(mv.read_reference, "reference.json does not match its signature")
    assert ModelRegistry(tmp_path, "fraud").get("v1").read_reference() == b'{"format": 1, "names": ["evil"]}'


def test_a_version_without_a_reference_is_signed_over_its_two_files(tmp_path: Path) -> None:
    mv = signed(tmp_path).write(b"onnx", {"inputs": ["a"]})
    assert sorted(json.loads(mv.signature_path.read_text())["files"]) == ["metadata.json", "model.onnx"]
    assert mv.verify() == b"onnx"


def test_without_a_key_signed_and_unsigned_versions_are_accepted(tmp_path: Path) -> None:
    signed(tmp_path).write(b"signed", {"inputs": ["a"]})
    plain = ModelRegistry(tmp_path, "fraud")
    plain.write(b"unsigned", {"inputs": ["a"]})
    assert not (tmp_path / "fraud" / "v2" / "signature.json").exists()
    assert plain.get("v1").verify() == b"signed" and plain.get("v2").verify() == b"unsigned"
    assert plain.activate("v2").version == "v2"


# -- what is refused ---------------------------------------------------------------------------------------------

def test_a_changed_model_is_refused_even_with_its_sha256_updated(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    mv = reg.write(b"good model", {"inputs": ["a"]})
    reg.write(b"second", {"inputs": ["a"]})
    reg.activate("v1")
    reg.activate("v2")  # v1 is the one to roll back to
    mv.onnx_path.write_bytes(b"evil model")  # whoever can write the registry updates the metadata's sha256 too
    meta = {**mv.metadata, "sha256": hashlib.sha256(b"evil model").hexdigest()}
    (mv.path / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    fresh = reg.get("v1")
    msg = refusal(fresh.verify, "model fraud v1 is refused: (model.onnx|metadata.json) does not match its signature")
    assert "v1" in msg and "\n" not in msg
    for action in (lambda: reg.activate("v1"), lambda: reg.set_shadow("v1"), reg.rollback):
        refusal(action, "does not match its signature")
    assert reg.pointers() == ("v2", None)  # nothing was pointed at the tampered version


def test_a_changed_model_file_alone_is_refused(tmp_path: Path) -> None:
    mv = signed(tmp_path).write(b"good model", {"inputs": ["a"]})
    mv.onnx_path.write_bytes(b"evil model")
    refusal(mv.verify, "model.onnx does not match its signature")


def test_changed_metadata_is_refused(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    mv = reg.write(b"model", {"inputs": ["a", "b"]})
    meta = json.loads((mv.path / "metadata.json").read_text())
    meta["inputs"] = ["b", "a"]  # a swapped input order scores garbage without any error
    (mv.path / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    refusal(reg.get("v1").verify, "metadata.json does not match its signature")
    # and metadata that changes between reading the version and verifying it is refused too
    refusal(mv.verify, "metadata.json")


@pytest.mark.parametrize("change", ["files", "mac", "garbage", "not an object", "no mac", "alg", "deleted"])
def test_a_changed_signature_is_refused(tmp_path: Path, change: str) -> None:
    mv = signed(tmp_path).write(b"good model", {"inputs": ["a"]})
    sig = json.loads(mv.signature_path.read_text())
    if change == "files":  # point the signed hash at a replaced model
        mv.onnx_path.write_bytes(b"evil model")
        sig["files"]["model.onnx"] = hashlib.sha256(b"evil model").hexdigest()
        text = json.dumps(sig)
    elif change == "mac":
        text = json.dumps({**sig, "mac": "0" * 64})
    elif change == "garbage":
        text = "{not json"
    elif change == "not an object":
        text = "[1, 2]"
    elif change == "no mac":
        text = json.dumps({k: v for k, v in sig.items() if k != "mac"})
    elif change == "alg":
        text = json.dumps({**sig, "alg": "none"})
    else:
        text = ""
        mv.signature_path.unlink()
    if text:
        mv.signature_path.write_text(text)
    msg = refusal(mv.verify, "model fraud v1 is refused")
    assert_no_key(msg)


def test_an_unsigned_version_is_refused_when_a_key_is_set(tmp_path: Path) -> None:
    ModelRegistry(tmp_path, "fraud").write(b"trained before the key", {"inputs": ["a"]})
    reg = signed(tmp_path)
    msg = refusal(reg.get("v1").verify, "model fraud v1 is refused: it is not signed")
    assert "streaming models sign v1" in msg
    refusal(lambda: reg.activate("v1"), "not signed")


def test_a_version_signed_under_another_key_is_refused(tmp_path: Path) -> None:
    signed(tmp_path, OTHER).write(b"model", {"inputs": ["a"]})
    reg = signed(tmp_path)
    msg = refusal(reg.get("v1").verify, "signed under another key")
    assert reg.signer is not None and reg.signer.key_id in msg
    assert_no_key(msg)


def test_a_reference_added_changed_or_removed_after_signing_is_refused(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    with_ref = reg.write(b"one", {"inputs": ["a"]}, reference=REFERENCE)
    without = reg.write(b"two", {"inputs": ["a"]})
    with_ref.reference_path.write_bytes(b'{"format": 1, "names": ["b"]}')
    refusal(with_ref.verify, "reference.json does not match its signature")
    with_ref.reference_path.unlink()
    refusal(with_ref.verify, "reference.json is signed but missing")
    without.reference_path.write_bytes(REFERENCE)
    refusal(without.verify, "reference.json is not signed")


def test_a_signed_version_copied_under_another_name_is_refused(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    old = reg.write(b"old weak model", {"inputs": ["a"]})
    reg.write(b"new model", {"inputs": ["a"]})
    for name in ("model.onnx", "metadata.json", "signature.json"):  # v1's signed files dropped in as v2
        (reg.dir / "v2" / name).write_bytes((old.path / name).read_bytes())
    refusal(reg.get("v2").verify, "the signature is for model 'fraud' version 'v1'")


async def test_the_worker_refuses_an_unsigned_version_and_keeps_serving(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = signed(tmp_path)
    reg.write(tiny_onnx(), {"inputs": INPUTS})
    refused: list[tuple[str, str, str]] = []
    m = ModelManager(reg, INPUTS, provider="cpu", buckets=(1, 2), on_refused=lambda *a: refused.append(a))
    assert m.active.tag == "v1"
    ModelRegistry(tmp_path, "fraud").write(tiny_onnx(), {"inputs": INPUTS})  # v2, written without the key
    (reg.dir / "active.json").write_text(json.dumps({"version": "v2", "history": ["v1"]}))
    with caplog.at_level(logging.ERROR):
        assert await m.refresh() is False
    assert m.active.tag == "v1"
    assert [(role, v) for role, v, _ in refused] == [("active", "v2")] and "not signed" in refused[0][2]
    assert_no_key(caplog.text)


# -- signing existing versions -----------------------------------------------------------------------------------

def test_sign_an_existing_version(tmp_path: Path) -> None:
    ModelRegistry(tmp_path, "fraud").write(b"old model", {"inputs": ["a"]}, reference=REFERENCE)
    reg = signed(tmp_path)
    mv = reg.sign("v1")
    assert mv.verify() == b"old model"
    assert sorted(json.loads(mv.signature_path.read_text())["files"]) == [
        "metadata.json", "model.onnx", "reference.json"]
    assert reg.sign("v1").verify() == b"old model"  # signing again is harmless
    assert not list(mv.path.glob(".*.tmp"))


def test_a_reference_written_after_the_version_is_signed_by_sign(tmp_path: Path) -> None:
    reg = signed(tmp_path)
    mv = reg.write(b"retrained", {"inputs": ["a"]})
    mv.reference_path.write_bytes(REFERENCE)  # as the retrain job does today, after write()
    refusal(mv.verify, "reference.json is not signed")
    assert reg.sign("v1").verify() == b"retrained"


def test_sign_refuses_without_a_key_a_corrupt_model_and_a_change_since_signing(tmp_path: Path) -> None:
    plain = ModelRegistry(tmp_path, "fraud")
    plain.write(b"model", {"inputs": ["a"]})
    with pytest.raises(ConfigError, match="no model-signing key"):
        plain.sign("v1")
    corrupt = plain.write(b"model two", {"inputs": ["a"]})
    corrupt.onnx_path.write_bytes(b"evil")
    reg = signed(tmp_path)
    with pytest.raises(ModelError, match="does not match its recorded sha256"):
        reg.sign("v2")
    assert not corrupt.signature_path.exists()
    # a version signed under this key whose metadata changed since is not blessed by signing it again
    mv = reg.sign("v1")
    meta = {**mv.metadata, "inputs": ["b"]}
    (mv.path / "metadata.json").write_text(json.dumps(meta))
    before = mv.signature_path.read_bytes()
    with pytest.raises(SignatureError, match=r"metadata\.json changed since it was signed"):
        reg.sign("v1")
    assert mv.signature_path.read_bytes() == before


def test_sign_moves_a_version_to_a_new_key(tmp_path: Path) -> None:
    signed(tmp_path, OTHER).write(b"model", {"inputs": ["a"]})
    reg = signed(tmp_path)
    refusal(reg.get("v1").verify, "another key")
    assert reg.sign("v1").verify() == b"model"
    refusal(signed(tmp_path, OTHER).get("v1").verify, "another key")


def test_training_writes_a_signed_version_with_its_reference(fraud_pipeline: Pipeline, tmp_path: Path) -> None:
    from streaming.training.job import train_pipeline

    short = {**fraud_pipeline.model.train, "rate": 50, "duration": "2m", "hidden": (4,), "max_iter": 5}
    pipeline = dataclasses.replace(fraud_pipeline, model=dataclasses.replace(fraud_pipeline.model, train=short))
    reg = signed(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a five-iteration MLP does not converge, and need not
        mv = train_pipeline(pipeline, reg, seed=5)
    assert mv.reference_path.exists()
    assert "reference.json" in json.loads(mv.signature_path.read_text())["files"]
    assert reg.active().verify() == mv.onnx_path.read_bytes()


# -- the key -----------------------------------------------------------------------------------------------------

def test_a_short_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        ModelSigner(b"short")
    with pytest.raises(ConfigError, match="STREAMING_MODEL_SIGNING_KEY is 5 bytes"):
        resolve_signing_key("short", None)
    with pytest.raises(ConfigError, match="at least 16"):
        ModelRegistry.from_settings(Settings(models_dir=str(tmp_path), model_signing_key="short"), "fraud")
    key_file = tmp_path / "model.key"
    key_file.write_text("tiny\n")
    with pytest.raises(ConfigError, match=f"key file {key_file} holds 4 bytes"):
        resolve_signing_key(None, key_file)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_signing_key(None, tmp_path / "missing.key")


def test_the_key_comes_from_the_settings_text_first_then_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "model.key"
    key_file.write_text(OTHER + "\n")
    assert signer_from_settings(Settings()) is None
    assert ModelRegistry.from_settings(Settings(models_dir=str(tmp_path)), "fraud").signer is None
    from_file = signer_from_settings(Settings(model_signing_key_file=str(key_file)))
    assert from_file is not None and from_file.key_id == ModelSigner(OTHER.encode()).key_id
    both = signer_from_settings(Settings(model_signing_key=KEY, model_signing_key_file=str(key_file)))
    assert both is not None and both.key_id == ModelSigner(KEY.encode()).key_id
    reg = ModelRegistry.from_settings(Settings(models_dir=str(tmp_path), model_signing_key=KEY), "fraud")
    assert reg.root == tmp_path and reg.write(b"m", {"inputs": ["a"]}).signature_path.exists()


def test_the_key_appears_in_no_message_file_or_repr(tmp_path: Path) -> None:
    key_file = tmp_path / "model.key"
    key_file.write_text(OTHER)
    texts: list[str] = []
    reg = signed(tmp_path)
    mv = reg.write(b"model", {"inputs": ["a"]}, reference=REFERENCE)
    texts += [p.read_text() for p in mv.path.iterdir()]
    texts += [repr(reg.signer), repr(mv), repr(Settings(model_signing_key=KEY))]
    from_file = ModelRegistry.from_settings(Settings(models_dir=str(tmp_path), model_signing_key_file=str(key_file)),
                                            "fraud")
    with pytest.raises(ConfigError) as short:
        resolve_signing_key(KEY[:10], None)
    texts.append(str(short.value))
    mv.onnx_path.write_bytes(b"changed")
    for action in (signed(tmp_path, OTHER).get("v1").verify, from_file.get("v1").verify, mv.verify,
                   reg.get("v1").verify, lambda: reg.activate("v1")):
        with pytest.raises(ModelError) as info:
            action()
        texts.append(str(info.value))
    for text in texts:
        assert_no_key(text, KEY[:10])
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(reg.signer)
