"""The model registry on disk: ``models/<pipeline>/<version>/``.

Each version holds ``model.onnx`` and ``metadata.json`` (inputs in order,
sha256 of the ONNX file, metrics, training parameters and data window).
``models/<pipeline>/active.json`` names the active version and the ones active
before it (for rollback, and for a worker whose active version will not load:
see :meth:`ModelRegistry.last_good`); without it the newest version is active.
``models/<pipeline>/shadow.json`` names a version scored in shadow, if any.
Workers watch both files and change models between two batches.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.errors import ModelError

__all__ = ["ModelRegistry", "ModelVersion"]

_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def reference_path(self) -> Path:
        """The reference snapshot the label-free drift monitors compare with (written at training)."""
        return self.path / "reference.json"

    @property
    def inputs(self) -> list[str]:
        """The input names in order, from the metadata (:class:`ModelError` when missing or malformed)."""
        inputs = self.metadata.get("inputs")
        if inputs is None:
            raise ModelError(f"{self.path / 'metadata.json'} has no \"inputs\" list: retrain with `streaming train`")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise ModelError(f"{self.path / 'metadata.json'}: \"inputs\" must be a list of input names, "
                             f"not {inputs!r}: retrain with `streaming train`")
        return list(inputs)

    def verify(self) -> bytes:
        """The model bytes, after checking the sha256 recorded at training."""
        try:
            data = self.onnx_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file {self.onnx_path} is missing: run `streaming train`") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.metadata.get("sha256"):
            raise ModelError(f"{self.onnx_path} does not match its recorded sha256 (corrupt or replaced)")
        return data


class ModelRegistry:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.dir = root / name

    def names(self) -> list[str]:
        """The version names on disk, oldest first, without reading their metadata."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _VERSION.match(p.name)
            if m and (p / "metadata.json").exists():
                found.append((int(m.group(1)), p.name))
        return [name for _, name in sorted(found)]

    def versions(self) -> list[ModelVersion]:
        return [self._load(self.dir / name) for name in self.names()]

    def _load(self, path: Path) -> ModelVersion:
        try:
            meta = json.loads((path / "metadata.json").read_text())
        except ValueError as exc:
            raise ModelError(f"{path / 'metadata.json'} is not valid JSON: {exc}") from None
        return ModelVersion(self.name, path.name, path, meta)

    def get(self, version: str) -> ModelVersion:
        path = self.dir / version
        if not (path / "metadata.json").exists():
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise ModelError(f"model {self.name} has no version {version!r} (known: {known})")
        return self._load(path)

    def _pointer(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ModelError(f"{self.dir / name} is not valid JSON: {exc}") from None
        return data if isinstance(data, dict) else None

    def _write_pointer(self, name: str, data: dict[str, Any] | None) -> None:
        path = self.dir / name
        if data is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def pointers(self) -> tuple[str | None, str | None]:
        """(active version, shadow version) as the pointer files say; cheap, for watchers."""
        found = []
        for name in ("active.json", "shadow.json"):
            version = (self._pointer(name) or {}).get("version")
            if version is not None and not isinstance(version, str):
                raise ModelError(f"{self.dir / name}: \"version\" must be a version name, not {version!r}")
            found.append(version)
        return found[0], found[1]

    def active_name(self) -> str:
        """The active version's name: ``active.json``'s, else the newest on disk (its files are not read)."""
        version, _ = self.pointers()
        if version is not None:
            return version
        names = self.names()
        if not names:
            raise ModelError(f"no model for pipeline {self.name!r} under {self.root}: run `streaming train`")
        return names[-1]

    def active(self) -> ModelVersion:
        return self.get(self.active_name())

    def last_good(self, bad: str) -> list[str]:
        """The versions to try, in order, when ``bad`` (the active one) will not load: those active before it,
        most recent first (``active.json``'s history), then the others on disk, newest first."""
        current = self._pointer("active.json") or {}
        history = current.get("history", [])
        on_disk = self.names()
        order = [v for v in reversed(history if isinstance(history, list) else []) if v in on_disk]
        order += reversed(on_disk)
        return [v for v in dict.fromkeys(order) if v != bad]

    def shadow(self) -> ModelVersion | None:
        _, version = self.pointers()
        return None if version is None else self.get(version)

    def activate(self, version: str) -> ModelVersion:
        """Make ``version`` active (its file is verified first); the previous one is kept for rollback."""
        mv = self.get(version)
        mv.verify()
        current = self._pointer("active.json") or {}
        history = list(current.get("history", []))
        previous = current.get("version")
        if previous is None and self.names():
            previous = self.active().version
        if previous is not None and previous != version:
            history.append(previous)
        self._write_pointer("active.json", {"version": version, "history": history[-20:], "activated_at": time.time()})
        if self.pointers()[1] == version:
            self._write_pointer("shadow.json", None)  # promoted: no longer a shadow
        return mv

    def rollback(self) -> ModelVersion:
        """Re-activate the version that was active before the current one."""
        current = self._pointer("active.json") or {}
        history = list(current.get("history", []))
        if not history:
            raise ModelError(f"model {self.name} has no earlier active version to roll back to")
        version = history.pop()
        mv = self.get(version)
        mv.verify()
        self._write_pointer("active.json", {"version": version, "history": history, "activated_at": time.time()})
        return mv

    def set_shadow(self, version: str | None) -> ModelVersion | None:
        """Score ``version`` in shadow beside the active one (None: stop)."""
        if version is None:
            self._write_pointer("shadow.json", None)
            return None
        mv = self.get(version)
        mv.verify()
        self._write_pointer("shadow.json", {"version": version, "since": time.time()})
        return mv

    def next_version(self) -> str:
        versions = self.versions()
        n = int(versions[-1].version[1:]) + 1 if versions else 1
        return f"v{n}"

    def write(self, onnx_bytes: bytes, metadata: dict[str, Any], version: str | None = None) -> ModelVersion:
        version = version or self.next_version()
        path = self.dir / version
        path.mkdir(parents=True, exist_ok=False)
        (path / "model.onnx").write_bytes(onnx_bytes)
        meta = {**metadata, "name": self.name, "version": version, "sha256": hashlib.sha256(onnx_bytes).hexdigest()}
        (path / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return ModelVersion(self.name, version, path, meta)
