"""ModelManager: a version that will not load or warm up is refused (logged once, counted) and never ends the
worker; at start it falls back to the last good version."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from streaming.errors import ModelError
from streaming.inference.manager import ModelManager
from streaming.inference.registry import ModelRegistry, ModelVersion
from streaming.inference.session import OnnxModel

INPUTS = ["amount", "count_1h", "distance"]


def tiny_onnx(rows: int = len(INPUTS), *, width: int | None = len(INPUTS)) -> bytes:
    """A two-class model (MatMul + Softmax) whose weights have ``rows`` rows; ``width`` is the declared input width
    (None: dynamic, so a mismatch shows only when the session runs)."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    w = numpy_helper.from_array(np.tile(np.array([[0.5, -0.5]], dtype=np.float32), (rows, 1)), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [x], [y], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


class Calls:
    def __init__(self) -> None:
        self.refused: list[tuple[str, str, str]] = []
        self.changed: list[tuple[str, str | None, str | None]] = []

    def on_refused(self, role: str, version: str, reason: str) -> None:
        self.refused.append((role, version, reason))

    def on_change(self, role: str, old: OnnxModel | None, new: OnnxModel | None) -> None:
        self.changed.append((role, None if old is None else old.tag, None if new is None else new.tag))


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path, "fraud")


@pytest.fixture
def calls() -> Calls:
    return Calls()


def good(reg: ModelRegistry) -> ModelVersion:
    return reg.write(tiny_onnx(), {"inputs": INPUTS})


def manager(reg: ModelRegistry, calls: Calls) -> ModelManager:
    return ModelManager(reg, INPUTS, provider="cpu", buckets=(1, 2), on_change=calls.on_change,
                        on_refused=calls.on_refused)


def point_active(reg: ModelRegistry, version: str, history: list[str]) -> None:
    """Write active.json as an operator's hand (or a copy from elsewhere) would: no verification."""
    (reg.dir / "active.json").write_text(json.dumps({"version": version, "history": history}))


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "refusing" in r.getMessage()]


async def test_garbage_model_bytes_are_refused_once_and_the_old_version_serves(
        reg: ModelRegistry, calls: Calls, caplog: pytest.LogCaptureFixture) -> None:
    good(reg)
    m = manager(reg, calls)
    assert m.active.tag == "v1"
    reg.write(b"garbage bytes, not an ONNX model", {"inputs": INPUTS})  # its sha256 matches: ORT must reject it
    point_active(reg, "v2", ["v1"])
    for _ in range(4):
        assert await m.refresh() is False
    assert m.active.tag == "v1" and calls.changed == []
    assert [(role, v) for role, v, _ in calls.refused] == [("active", "v2")]
    assert "cannot be loaded by ONNX Runtime" in calls.refused[0][2]
    lines = refusal_lines(caplog)
    assert len(lines) == 1 and "v2" in lines[0] and "ONNX Runtime" in lines[0] and "\n" not in lines[0]
    assert m.active.predict(np.zeros((3, len(INPUTS)), dtype=np.float32)).shape == (3,)


async def test_metadata_without_inputs_is_refused_with_a_clear_reason(
        reg: ModelRegistry, calls: Calls, caplog: pytest.LogCaptureFixture) -> None:
    good(reg)
    m = manager(reg, calls)
    v2 = reg.write(tiny_onnx(), {"note": "no inputs"})
    point_active(reg, "v2", ["v1"])
    assert await m.refresh() is False and await m.refresh() is False
    assert m.active.tag == "v1"
    [(role, version, reason)] = calls.refused
    assert (role, version) == ("active", "v2")
    assert 'has no "inputs" list' in reason and "metadata.json" in reason
    assert "KeyError" not in caplog.text
    # the metadata fixed (the ONNX file untouched): tried again, and served
    meta = json.loads((v2.path / "metadata.json").read_text())
    (v2.path / "metadata.json").write_text(json.dumps({**meta, "inputs": INPUTS}))
    st = (v2.path / "metadata.json").stat()
    os.utime(v2.path / "metadata.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert await m.refresh() is True
    assert m.active.tag == "v2" and calls.changed == [("active", "v1", "v2")] and len(calls.refused) == 1


async def test_a_session_that_fails_in_warm_up_is_refused(reg: ModelRegistry, calls: Calls) -> None:
    good(reg)
    m = manager(reg, calls)
    # loads (the declared width is dynamic) but its weights want 4 inputs: ONNX Runtime raises its own
    # exception type at the first warm-up run
    reg.write(tiny_onnx(rows=4, width=None), {"inputs": INPUTS})
    point_active(reg, "v2", ["v1"])
    assert await m.refresh() is False and await m.refresh() is False
    assert m.active.tag == "v1"
    [(role, version, reason)] = calls.refused
    assert (role, version) == ("active", "v2") and "MatMul" in reason


async def test_any_exception_in_warm_up_is_a_refusal(reg: ModelRegistry, calls: Calls,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    good(reg)
    m = manager(reg, calls)
    good(reg)
    point_active(reg, "v2", ["v1"])

    def warm(self: OnnxModel, rounds: int = 3) -> None:
        raise RuntimeError("CUDA failure 2: out of memory\n(while warming bucket 2)")

    monkeypatch.setattr(OnnxModel, "warm", warm)
    assert await m.refresh() is False and await m.refresh() is False
    assert m.active.tag == "v1"
    assert calls.refused == [("active", "v2", "RuntimeError: CUDA failure 2: out of memory (while warming bucket 2)")]


def test_start_on_the_last_good_version_when_the_active_one_is_corrupt(
        reg: ModelRegistry, calls: Calls, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        good(reg)
    reg.activate("v1")
    reg.activate("v3")  # history: v3 (newest before any pointer), v1
    (reg.dir / "v3" / "model.onnx").write_bytes(b"corrupted on disk")
    pointer = (reg.dir / "active.json").read_text()
    caplog.set_level(logging.WARNING, logger="streaming.inference.manager")
    m = manager(reg, calls)
    assert m.active.tag == "v1"  # the one active before v3, not merely the newest other (v2)
    [(role, version, reason)] = calls.refused
    assert (role, version) == ("active", "v3") and "sha256" in reason
    assert any("starting on v1 instead of v3 (refused: " in r.getMessage() and "sha256" in r.getMessage()
               for r in caplog.records)
    assert (reg.dir / "active.json").read_text() == pointer  # the operator decides


async def test_the_version_refused_at_start_is_not_tried_every_second(reg: ModelRegistry, calls: Calls) -> None:
    good(reg)
    reg.write(tiny_onnx(), {"inputs": "amount"})  # malformed inputs
    point_active(reg, "v2", ["v1"])
    m = manager(reg, calls)
    assert m.active.tag == "v1"
    for _ in range(3):
        assert await m.refresh() is False
    assert m.active.tag == "v1" and [v for _, v, _ in calls.refused] == ["v2"]
    assert "must be a list of input names" in calls.refused[0][2]


def test_start_on_the_newest_loadable_version_without_a_pointer(reg: ModelRegistry, calls: Calls) -> None:
    good(reg)
    good(reg)
    reg.write(tiny_onnx(), {})
    assert manager(reg, calls).active.tag == "v2"
    assert [v for _, v, _ in calls.refused] == ["v3"]


def test_start_fails_only_when_no_version_loads(reg: ModelRegistry, calls: Calls) -> None:
    reg.write(b"garbage", {"inputs": INPUTS})
    reg.write(tiny_onnx(), {"note": "no inputs"})
    point_active(reg, "v9", ["v1"])  # a version that is not there at all
    with pytest.raises(ModelError) as err:
        manager(reg, calls)
    msg = str(err.value)
    assert msg.startswith("no version of model fraud loads")
    assert "v9: model fraud has no version 'v9'" in msg
    assert "v1: " in msg and "cannot be loaded by ONNX Runtime" in msg
    assert 'v2: ' in msg and 'has no "inputs" list' in msg
    assert [v for _, v, _ in calls.refused] == ["v9", "v1", "v2"]


async def test_a_shadow_that_does_not_load_at_start_is_refused_and_left_out(reg: ModelRegistry, calls: Calls) -> None:
    good(reg)
    reg.write(b"garbage", {"inputs": INPUTS})
    reg.activate("v1")
    reg.set_shadow("v2")  # the recorded sha256 matches: only loading it shows it is not a model
    m = manager(reg, calls)
    assert m.active.tag == "v1" and m.shadow is None
    assert [(role, v) for role, v, _ in calls.refused] == [("shadow", "v2")]
    assert await m.refresh() is False and await m.refresh() is False
    assert m.shadow is None and len(calls.refused) == 1


async def test_a_malformed_pointer_is_logged_not_raised(reg: ModelRegistry, calls: Calls,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    good(reg)
    m = manager(reg, calls)
    (reg.dir / "active.json").write_text(json.dumps({"version": 2}))
    assert await m.refresh() is False
    assert m.active.tag == "v1" and "must be a version name" in caplog.text


async def test_a_shadow_promoted_to_active_is_not_loaded_again(reg: ModelRegistry, calls: Calls) -> None:
    good(reg)
    reg.activate("v1")
    m = manager(reg, calls)
    good(reg)
    reg.set_shadow("v2")
    assert await m.refresh() and m.shadow is not None and m.shadow.tag == "v2"
    shadow = m.shadow
    loads: list[str] = []
    real_load = m.load
    m.load = lambda version: loads.append(version) or real_load(version)  # type: ignore[method-assign]
    reg.activate("v2")  # the retrain job's promotion: the shadow becomes the active version
    assert await m.refresh()
    assert m.active is shadow and m.shadow is None and loads == []  # swapped in at once, no second warm-up
    assert calls.changed[-2:] == [("active", "v1", "v2"), ("shadow", "v2", None)]
