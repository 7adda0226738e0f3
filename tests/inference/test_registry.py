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
