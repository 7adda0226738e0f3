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
