from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from streaming.errors import ModelError
from streaming.inference.registry import ModelRegistry

INPUTS = ["amount", "count_1h"]


def tiny_onnx() -> bytes:
    """A two-class model over :data:`INPUTS` (MatMul + Softmax) that ONNX Runtime loads and warms."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(INPUTS)])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    w = numpy_helper.from_array(np.tile(np.array([[0.5, -0.5]], dtype=np.float32), (len(INPUTS), 1)), name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["logits"]),
                               helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
                              "tiny", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


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


BAD_NAMES = ["../x", "..", ".", "/abs", "/etc", "a/b", "a\\b", "", "v" * 65, "v1\x00", "v1\n", ".hidden", "-v1",
             "a..b", "v 1", "active.json", "shadow.tmp", "vé"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_bad_version_name_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    outside = tmp_path / "x"  # what ../x would reach: a version-looking directory outside the pipeline's
    outside.mkdir()
    (outside / "metadata.json").write_text('{"inputs": ["a"]}')
    reg = ModelRegistry(tmp_path, "fraud")
    reg.write(b"one", {"inputs": ["a"]})
    for action in (lambda: reg.get(bad), lambda: reg.activate(bad), lambda: reg.set_shadow(bad),
                   lambda: reg.write(b"two", {"inputs": ["a"]}, version=bad)):
        with pytest.raises(ModelError, match="is not a valid version name") as info:
            action()
        assert "\n" not in str(info.value) and "\x00" not in str(info.value) and len(str(info.value)) < 400
    assert sorted(p.name for p in reg.dir.iterdir()) == ["v1"]  # nothing written, not even a pointer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fraud", "x"]


@pytest.mark.parametrize("bad", ["../x", "/etc", "a/b", "", "v1\x00", "v" * 100])
@pytest.mark.parametrize("pointer", ["active.json", "shadow.json"])
def test_a_tampered_pointer_is_refused(tmp_path: Path, bad: str, pointer: str) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    reg.write(b"one", {"inputs": ["a"]})
    (reg.dir / pointer).write_text(json.dumps({"version": bad, "history": []}))
    with pytest.raises(ModelError, match=f"{pointer}: .* is not a valid version name"):
        reg.pointers()
    with pytest.raises(ModelError, match="is not a valid version name"):
        reg.active() if pointer == "active.json" else reg.shadow()


def test_a_bad_rollback_target_in_the_history_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    reg.write(b"one", {"inputs": ["a"]})
    (reg.dir / "active.json").write_text(json.dumps({"version": "v1", "history": ["../../etc"]}))
    assert reg.last_good("v1") == []  # names outside the versions on disk are never offered
    with pytest.raises(ModelError, match=r"'\.\./\.\./etc' is not a valid version name"):
        reg.rollback()


async def test_a_worker_keeps_serving_when_a_pointer_is_tampered(tmp_path: Path) -> None:
    from streaming.inference.manager import ModelManager

    reg = ModelRegistry(tmp_path, "fraud")
    reg.write(tiny_onnx(), {"inputs": INPUTS})
    m = ModelManager(reg, INPUTS, provider="cpu", buckets=(1,))
    (reg.dir / "active.json").write_text(json.dumps({"version": "../../etc"}))
    assert await m.refresh() is False and m.active.tag == "v1"
    with pytest.raises(ModelError, match="is not a valid version name"):  # and a worker starting now says why
        ModelManager(reg, INPUTS, provider="cpu", buckets=(1,))


@pytest.mark.parametrize("good", ["v1", "v12", "candidate", "v2.1-rc_1", "V9", "1", "a" * 64])
def test_good_version_names_are_accepted(tmp_path: Path, good: str) -> None:
    reg = ModelRegistry(tmp_path, "fraud")
    mv = reg.write(b"model", {"inputs": ["a"]}, version=good)
    assert mv.path == tmp_path / "fraud" / good and reg.get(good).verify() == b"model"
    assert reg.activate(good).version == good and reg.pointers() == (good, None)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "", "..", ".", "f" * 65, "fraud\x00"])
def test_a_bad_pipeline_name_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ModelError, match=r"not a valid model \(pipeline\) name"):
        ModelRegistry(tmp_path, bad)


@pytest.mark.parametrize("good", ["fraud", "sensor_2", "_private", "sea"])
def test_pipeline_names_of_pipeline_files_are_accepted(tmp_path: Path, good: str) -> None:
    assert ModelRegistry(tmp_path, good).dir == tmp_path / good
