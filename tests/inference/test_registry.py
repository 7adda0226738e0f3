from __future__ import annotations

from pathlib import Path

import pytest

from streaming.errors import ModelError
from streaming.inference.registry import ModelRegistry


def test_versions_active_pointer_and_activate(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    assert reg.versions() == [] and reg.next_version() == "v1"
    v1 = reg.write(b"one", {"inputs": ["a"]})
    v2 = reg.write(b"two", {"inputs": ["a"]})
    assert [v.version for v in reg.versions()] == ["v1", "v2"]
    assert reg.active().version == "v2"  # newest without a pointer
    reg.activate("v1")
    assert reg.active().version == "v1"
    assert v1.verify() == b"one" and v2.metadata["sha256"] != v1.metadata["sha256"]
    with pytest.raises(ModelError, match="no version 'v9'"):
        reg.activate("v9")


def test_rollback_walks_back_and_shadow_is_promoted(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    for b in (b"one", b"two", b"three"):
        reg.write(b, {"inputs": ["a"]})
    reg.activate("v1")
    reg.set_shadow("v2")
    assert reg.pointers() == ("v1", "v2") and reg.shadow() is not None
    reg.activate("v2")
    assert reg.pointers() == ("v2", None)  # the shadow was promoted
    reg.activate("v3")
    assert reg.rollback().version == "v2"
    assert reg.rollback().version == "v1"
    assert reg.rollback().version == "v3"  # newest: active before any pointer existed
    with pytest.raises(ModelError, match="no earlier active version"):
        reg.rollback()
    reg.set_shadow(None)
    assert reg.shadow() is None


def test_a_corrupt_version_cannot_be_activated_or_shadowed(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    reg.write(b"good", {"inputs": ["a"]})
    bad = reg.write(b"also good", {"inputs": ["a"]})
    bad.onnx_path.write_bytes(b"tampered")
    reg.activate("v1")
    for action in (lambda: reg.activate("v2"), lambda: reg.set_shadow("v2")):
        with pytest.raises(ModelError, match="sha256"):
            action()
    assert reg.pointers() == ("v1", None)


def test_metadata_inputs_missing_or_malformed_are_a_model_error(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    assert reg.write(b"x", {"inputs": ["a", "b"]}).inputs == ["a", "b"]
    with pytest.raises(ModelError, match='has no "inputs" list'):
        _ = reg.write(b"x", {"note": "no inputs"}).inputs
    for bad in ("ab", [1, 2], {"a": 1}):
        with pytest.raises(ModelError, match='"inputs" must be a list of input names'):
            _ = reg.write(b"x", {"inputs": bad}).inputs


def test_last_good_is_the_history_then_the_newest(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    for b in (b"one", b"two", b"three", b"four"):
        reg.write(b, {"inputs": ["a"]})
    assert reg.last_good("v4") == ["v3", "v2", "v1"]  # no pointer: newest first
    reg.activate("v2")
    reg.activate("v4")  # history: v4 (newest before any pointer), v2
    assert reg.active_name() == "v4"
    assert reg.last_good("v4") == ["v2", "v3", "v1"]
    (tmp_path / "fraud" / "active.json").write_text('{"version": "v4", "history": ["v1", "gone", "v3"]}')
    assert reg.last_good("v4") == ["v3", "v1", "v2"]  # a version no longer on disk is skipped


def test_a_pointer_must_name_a_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    reg.write(b"one", {"inputs": ["a"]})
    (tmp_path / "fraud" / "shadow.json").write_text('{"version": 1}')
    with pytest.raises(ModelError, match='"version" must be a version name'):
        reg.pointers()
