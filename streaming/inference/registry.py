"""The model registry on disk: ``models/<pipeline>/<version>/``.

Each version holds ``model.onnx`` and ``metadata.json`` (inputs in order,
sha256 of the ONNX file, metrics, training parameters and data window).
``models/<pipeline>/active.json`` names the active version; without it the
newest version is active.
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
    def inputs(self) -> list[str]:
        return list(self.metadata["inputs"])

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

    def versions(self) -> list[ModelVersion]:
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _VERSION.match(p.name)
            if m and (p / "metadata.json").exists():
                found.append((int(m.group(1)), p))
        return [self._load(p) for _, p in sorted(found)]

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

    def active(self) -> ModelVersion:
        pointer = self.dir / "active.json"
        if pointer.exists():
            return self.get(json.loads(pointer.read_text())["version"])
        versions = self.versions()
        if not versions:
            raise ModelError(f"no model for pipeline {self.name!r} under {self.root}: run `streaming train`")
        return versions[-1]

    def activate(self, version: str) -> ModelVersion:
        mv = self.get(version)
        mv.verify()
        tmp = self.dir / "active.json.tmp"
        tmp.write_text(json.dumps({"version": version, "activated_at": time.time()}))
        tmp.replace(self.dir / "active.json")
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
