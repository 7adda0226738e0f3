"""The model registry on disk: ``models/<pipeline>/<version>/``.

Each version holds ``model.onnx`` and ``metadata.json`` (inputs in order,
sha256 of the ONNX file, metrics, training parameters and data window).
``models/<pipeline>/active.json`` names the active version and the ones active
before it (for rollback, and for a worker whose active version will not load:
see :meth:`ModelRegistry.last_good`); without it the newest version is active.
``models/<pipeline>/shadow.json`` names a version scored in shadow, if any.
Workers watch both files and change models between two batches.

With a model-signing key (:meth:`ModelRegistry.from_settings`, or a ``signer``), every version written gets a
``signature.json`` (HMAC-SHA256 over its files, :mod:`streaming.inference.signing`) and a version is only
served, activated or shadowed once its signature verifies; :meth:`ModelRegistry.sign` signs a version written
before the key was set. Without a key only the ONNX file's sha256 is checked.

Every name that becomes a path is checked first: a pipeline name, and a version name wherever one comes from
(an argument, ``active.json``, ``shadow.json``) must be 1 to 64 letters, digits, ``.``, ``_`` or ``-``, start
with a letter or digit and hold no ``..`` (:func:`check_version_name`), so no name reaches outside the
pipeline's directory.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming.errors import ConfigError, ModelError
from streaming.inference.signing import (
    REQUIRED_FILES,
    SIGNATURE_FILE,
    ModelSigner,
    SignatureError,
    signer_from_settings,
)

if TYPE_CHECKING:
    from streaming.settings import Settings

__all__ = ["ModelRegistry", "ModelVersion", "check_pipeline_name", "check_version_name"]

_VERSION = re.compile(r"v(\d{1,63})")  # the versions `streaming train` numbers (listed by ModelRegistry.names)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PIPELINE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_RESERVED_SUFFIXES = (".json", ".tmp")  # the pointer files and their temporary files live beside the versions
_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"


def _shown(name: object) -> str:
    """``name`` for a message: repr'd (a NUL or a newline stays visible) and cut short."""
    if isinstance(name, str) and len(name) > 64:
        return f"{name[:64]!r}... ({len(name)} characters)"
    return repr(name)


def check_version_name(version: object, where: str) -> str:
    """``version`` when it is a valid version name, else :class:`ModelError` saying ``where`` it came from.

    >>> check_version_name("v12", "here")
    'v12'
    >>> check_version_name("../x", "active.json")
    Traceback (most recent call last):
    streaming.errors.ModelError: active.json: '../x' is not a valid version name (...)
    """
    if (not isinstance(version, str) or not _NAME.fullmatch(version) or ".." in version
            or version.endswith(_RESERVED_SUFFIXES)):
        raise ModelError(f"{where}: {_shown(version)} is not a valid version name ({_NAME_RULE}); refused")
    return version


def check_pipeline_name(name: object) -> str:
    """``name`` when it can name a pipeline's directory of the registry (as :func:`check_version_name`, or
    a Python identifier of at most 64 characters, as ``pipeline.toml`` requires), else :class:`ModelError`."""
    if not isinstance(name, str) or len(name) > 64 or ".." in name or not (
            _PIPELINE.fullmatch(name) or name.isidentifier()):
        raise ModelError(f"{_shown(name)} is not a valid model (pipeline) name for the registry ({_NAME_RULE})")
    return name


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    #: the registry's signer: when set, :meth:`verify` requires a valid ``signature.json``
    signer: ModelSigner | None = field(default=None, repr=False, compare=False)

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

    @property
    def signature_path(self) -> Path:
        return self.path / SIGNATURE_FILE

    def verify(self) -> bytes:
        """The model bytes, after checking the sha256 recorded at training and, with a signer, the signature
        (:class:`~streaming.inference.signing.SignatureError` naming the version and the reason)."""
        try:
            data = self.onnx_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file {self.onnx_path} is missing: run `streaming train`") from None
        if self.signer is not None:
            self._check_signature(self.signer, data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.metadata.get("sha256"):
            raise ModelError(f"{self.onnx_path} does not match its recorded sha256 (corrupt or replaced)")
        return data

    def artefacts(self, onnx: bytes | None = None) -> dict[str, bytes]:
        """The signed files' bytes as they are on disk: model.onnx (``onnx`` when given), metadata.json, and
        reference.json when the version has one."""
        files = {"model.onnx": self.onnx_path.read_bytes() if onnx is None else onnx}
        try:
            files["metadata.json"] = (self.path / "metadata.json").read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{self.path / 'metadata.json'} is missing") from None
        try:
            files["reference.json"] = self.reference_path.read_bytes()
        except FileNotFoundError:
            pass
        return files

    def read_reference(self) -> bytes | None:
        """reference.json's bytes (None when the version has none); with a signer, the version's signature is
        verified over these very bytes first, so what the drift monitors read is what was signed."""
        if self.signer is None:
            try:
                return self.reference_path.read_bytes()
            except FileNotFoundError:
                return None
        try:
            onnx = self.onnx_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file {self.onnx_path} is missing: run `streaming train`") from None
        return self._check_signature(self.signer, onnx).get("reference.json")

    def _check_signature(self, signer: ModelSigner, onnx: bytes) -> dict[str, bytes]:
        """The version's signed files, read once, after their signature verified."""
        files = self.artefacts(onnx)
        try:
            signature: bytes | None = self.signature_path.read_bytes()
        except FileNotFoundError:
            signature = None
        try:
            signer.verify(self.name, self.version, signature, files)
        except SignatureError as exc:
            hint = f" (sign it with `streaming models sign {self.version}` once you trust it)" \
                if signature is None else ""
            raise SignatureError(f"model {self.name} {self.version} is refused: {exc}{hint} [{self.path}]") from None
        try:
            verified = json.loads(files["metadata.json"])
        except ValueError:
            verified = None
        if verified != self.metadata:  # the metadata this version was read with is the one that verified
            raise SignatureError(f"model {self.name} {self.version} is refused: metadata.json changed after it was "
                                 f"read [{self.path}]")
        return files


class ModelRegistry:
    """The versions of one pipeline's model under ``root/name``; ``signer``: sign what is written and require
    valid signatures on what is served (None: sha256 checks only)."""

    def __init__(self, root: Path, name: str, *, signer: ModelSigner | None = None) -> None:
        self.root = root
        self.name = check_pipeline_name(name)
        self.dir = root / name
        self.signer = signer

    @classmethod
    def from_settings(cls, settings: Settings, name: str) -> ModelRegistry:
        """The registry under ``models_dir``, with the model-signing key of the settings when one is set
        (:class:`ConfigError` for a key under 16 bytes or a key file that cannot be read)."""
        return cls(settings.path(settings.models_dir), name, signer=signer_from_settings(settings))

    def _check(self, version: object) -> str:
        return check_version_name(version, f"model {self.name}")

    def names(self) -> list[str]:
        """The version names on disk, oldest first, without reading their metadata."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _VERSION.fullmatch(p.name)
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
        if not isinstance(meta, dict):
            raise ModelError(f"{path / 'metadata.json'} is not a JSON object")
        return ModelVersion(self.name, path.name, path, meta, self.signer)

    def get(self, version: str) -> ModelVersion:
        path = self.dir / self._check(version)
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
            if version is not None:
                check_version_name(version, str(self.dir / name))  # a pointer edited to name ../x or /etc
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

    def write(self, onnx_bytes: bytes, metadata: dict[str, Any], version: str | None = None, *,
              reference: bytes | None = None) -> ModelVersion:
        """Register ``onnx_bytes`` as ``version`` (None: the next one), with ``reference`` as its reference.json
        (the drift monitors' snapshot), signed when the registry has a signer. ``metadata.json`` is written
        last, so :meth:`names` lists the version only once its files are all there."""
        version = self.next_version() if version is None else self._check(version)
        path = self.dir / version
        path.mkdir(parents=True, exist_ok=False)
        meta = {**metadata, "name": self.name, "version": version, "sha256": hashlib.sha256(onnx_bytes).hexdigest()}
        meta_bytes = json.dumps(meta, indent=2, sort_keys=True).encode()
        files = {"model.onnx": onnx_bytes, "metadata.json": meta_bytes}
        (path / "model.onnx").write_bytes(onnx_bytes)
        if reference is not None:
            files["reference.json"] = reference
            (path / "reference.json").write_bytes(reference)
        if self.signer is not None:
            (path / SIGNATURE_FILE).write_bytes(self.signer.sign(self.name, version, files))
        (path / "metadata.json").write_bytes(meta_bytes)
        return ModelVersion(self.name, version, path, meta, self.signer)

    def sign(self, version: str) -> ModelVersion:
        """Sign ``version`` as it is on disk under the registry's key (a version written before the key was set,
        or whose reference.json was written after it), and return it verified.

        Refused (nothing written) without a key, when model.onnx does not match the sha256 in its metadata, and
        when the version holds a signature under this same key and its model.onnx or metadata.json changed
        since: signing attests to the files, so it does not bless a change it did not make (delete
        signature.json first when the change is intended)."""
        if self.signer is None:
            raise ConfigError("no model-signing key to sign with: set STREAMING_MODEL_SIGNING_KEY or "
                              "STREAMING_MODEL_SIGNING_KEY_FILE")
        mv = self.get(version)
        try:
            files = mv.artefacts()
        except FileNotFoundError:
            raise ModelError(f"model file {mv.onnx_path} is missing: nothing to sign") from None
        try:
            on_disk = json.loads(files["metadata.json"])
        except ValueError:
            on_disk = None
        if on_disk != mv.metadata or hashlib.sha256(files["model.onnx"]).hexdigest() != mv.metadata.get("sha256"):
            raise ModelError(f"{mv.onnx_path} does not match its recorded sha256 (corrupt or replaced, or being "
                             "written): not signed")
        try:
            previous: bytes | None = mv.signature_path.read_bytes()
        except FileNotFoundError:
            previous = None
        doc = None if previous is None else self.signer.authentic(previous)
        signed = doc.get("files") if doc is not None else None
        if isinstance(signed, dict):
            for name in REQUIRED_FILES:
                if signed.get(name) != hashlib.sha256(files[name]).hexdigest():
                    raise SignatureError(f"model {self.name} {mv.version}: {name} changed since it was signed under "
                                         "this key; not signed again (delete signature.json first if the change is "
                                         "intended)")
        tmp = mv.path / f".{SIGNATURE_FILE}.tmp"
        tmp.write_bytes(self.signer.sign(self.name, mv.version, files))
        tmp.replace(mv.signature_path)
        signed_mv = self.get(mv.version)
        signed_mv.verify()
        return signed_mv
