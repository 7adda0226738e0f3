"""Signed model artefacts: HMAC-SHA256 under a secret key over a version's files.

When a model-signing key is configured (``STREAMING_MODEL_SIGNING_KEY``, else the file named by
``STREAMING_MODEL_SIGNING_KEY_FILE``), every version the registry writes gets a ``signature.json``
beside its files, and a version is only served, activated or shadowed once that signature verifies.
Without a key nothing is signed or required and the registry checks the ONNX file's sha256 only.

``signature.json`` is a JSON object::

    {"format": 1, "alg": "HMAC-SHA256", "key_id": "<16 hex>", "pipeline": "fraud", "version": "v3",
     "files": {"metadata.json": "<sha256 hex>", "model.onnx": "<sha256 hex>", "reference.json": "<sha256 hex>"},
     "signed_at": "2025-01-01T00:00:00Z", "mac": "<64 hex>"}

``files`` holds the sha256 of the exact bytes on disk of ``model.onnx`` and ``metadata.json`` (always) and of
``reference.json`` (when the version has one). ``key_id`` is a fingerprint of the key (the first 16 hex digits of
HMAC-SHA256(key, ``"streaming model-signing key id"``)), never the key. The MAC is

    HMAC-SHA256(key, b"streaming model signature v1" + b"\\x00" + canonical)

where ``canonical`` is every field of the object except ``mac`` as JSON with sorted keys, no spaces
(``separators=(",", ":")``) and ASCII only. Naming the pipeline and the version in the signed bytes means a signed
version copied under another name (an old, weaker v1 dropped in as v7) is refused too.

:meth:`ModelSigner.verify` checks, in this order: that there is a signature, that it is a JSON object with a
64-hex ``mac``, the format and algorithm, the key id (a clearer reason than a bare MAC mismatch: signed under
another key), the MAC (``hmac.compare_digest``), the pipeline and version it names, then each file: every file
it lists and every one that must be signed (``model.onnx``, ``metadata.json``, and ``reference.json`` when it is
on disk) must be listed and match its sha256. Reasons are one line and never hold the key.

>>> signer = ModelSigner(b"k" * 32)
>>> files = {"model.onnx": b"onnx", "metadata.json": b"{}"}
>>> sig = signer.sign("fraud", "v1", files)
>>> signer.verify("fraud", "v1", sig, files)
>>> signer.verify("fraud", "v1", sig, {**files, "model.onnx": b"other"})
Traceback (most recent call last):
SignatureError: model.onnx does not match its signature (changed after it was signed)
>>> ModelSigner(b"x" * 32).verify("fraud", "v1", sig, files)  # doctest: +ELLIPSIS
Traceback (most recent call last):
SignatureError: signed under another key (key id ...; the configured key's id is ...)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from streaming.settings import Settings

__all__ = ["ALG", "FORMAT", "MIN_KEY_BYTES", "SIGNATURE_FILE", "REQUIRED_FILES", "SIGNED_FILES", "ModelSigner",
           "SignatureError", "resolve_signing_key", "signer_from_settings"]

ALG = "HMAC-SHA256"
FORMAT = 1
MIN_KEY_BYTES = 16
SIGNATURE_FILE = "signature.json"
#: files every signature covers, and the one it covers when the version has it
REQUIRED_FILES = ("model.onnx", "metadata.json")
SIGNED_FILES = (*REQUIRED_FILES, "reference.json")
_DOMAIN = b"streaming model signature v1\x00"
_KEY_ID_LABEL = b"streaming model-signing key id"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SignatureError(ModelError):
    """A model version whose signature is missing, malformed or does not verify; the message is the reason."""


def resolve_signing_key(key: str | None, key_file: Path | None) -> bytes | None:
    """The model-signing key: ``key`` (text, UTF-8) when not empty, else the stripped content of ``key_file``,
    else None (no key: models are not signed and only their sha256 is checked).

    Unlike the checkpoint key, a missing key file is not created: a fresh random key would refuse every model
    signed before. A key under 16 bytes, or a key file that is missing or unreadable, is a :class:`ConfigError`.

    >>> resolve_signing_key("a-long-enough-secret", None)
    b'a-long-enough-secret'
    >>> resolve_signing_key("", None) is None
    True
    >>> resolve_signing_key("short", None)
    Traceback (most recent call last):
    ConfigError: STREAMING_MODEL_SIGNING_KEY is 5 bytes; a model-signing key needs at least 16
    """
    if key:
        raw = key.encode()
        if len(raw) < MIN_KEY_BYTES:
            raise ConfigError(f"STREAMING_MODEL_SIGNING_KEY is {len(raw)} bytes; a model-signing key needs at "
                              f"least {MIN_KEY_BYTES}")
        return raw
    if key_file is None:
        return None
    path = Path(key_file)
    try:
        raw = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"model-signing key file {path} does not exist: create it (e.g. `python -c "
                          "\"import secrets; print(secrets.token_hex(32))\" > FILE`, mode 0600) or unset "
                          "STREAMING_MODEL_SIGNING_KEY_FILE") from None
    except OSError as exc:
        raise ConfigError(f"model-signing key file {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigError(f"model-signing key file {path} holds {len(raw)} bytes; a model-signing key needs at "
                          f"least {MIN_KEY_BYTES}")
    return raw


def signer_from_settings(settings: Settings) -> ModelSigner | None:
    """The signer of the configured key (``model_signing_key``, else ``model_signing_key_file``), or None."""
    key_file = settings.path(settings.model_signing_key_file) if settings.model_signing_key_file else None
    key = resolve_signing_key(settings.model_signing_key or None, key_file)
    return None if key is None else ModelSigner(key)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(doc: Mapping[str, Any]) -> bytes:
    """The signed bytes of a signature document: every field but ``mac``, sorted, compact, ASCII."""
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class ModelSigner:
    """Signs and verifies model versions under one key (kept private: neither its repr nor its errors show it)."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes):
            raise TypeError("a model-signing key is bytes")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the model-signing key is {len(key)} bytes; it needs at least {MIN_KEY_BYTES}")
        self._key = key
        #: a fingerprint that names the key in signatures and messages (not the key, nor a plain hash of it)
        self.key_id = hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ModelSigner(key_id={self.key_id!r})"

    def __reduce__(self) -> Any:  # never pickled (into a checkpoint, a process pipe) by accident
        raise TypeError("a ModelSigner holds a secret key and is not pickled")

    def _mac(self, doc: Mapping[str, Any]) -> str:
        return hmac.new(self._key, _DOMAIN + _canonical(doc), hashlib.sha256).hexdigest()

    def sign(self, pipeline: str, version: str, files: Mapping[str, bytes], *, signed_at: float | None = None) -> bytes:
        """The ``signature.json`` bytes of a version made of ``files`` (name -> content)."""
        missing = [f for f in REQUIRED_FILES if f not in files]
        if missing:
            raise ModelError(f"model {pipeline} {version}: cannot sign without {', '.join(missing)}")
        unknown = sorted(set(files) - set(SIGNED_FILES))
        if unknown:
            raise ModelError(f"model {pipeline} {version}: cannot sign {', '.join(unknown)} (signed files: "
                             f"{', '.join(SIGNED_FILES)})")
        doc: dict[str, Any] = {
            "format": FORMAT,
            "alg": ALG,
            "key_id": self.key_id,
            "pipeline": pipeline,
            "version": version,
            "files": {name: _sha256(data) for name, data in sorted(files.items())},
            "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(signed_at)),
        }
        doc["mac"] = self._mac(doc)
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def authentic(self, signature: bytes) -> dict[str, Any] | None:
        """The signature document when its MAC verifies under this key, else None (nothing else is checked)."""
        try:
            doc = json.loads(signature)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("mac"), str) or not _HEX64.fullmatch(doc["mac"]):
            return None
        return doc if hmac.compare_digest(doc["mac"], self._mac(doc)) else None

    def verify(self, pipeline: str, version: str, signature: bytes | None, files: Mapping[str, bytes]) -> None:
        """Check ``signature`` (``signature.json``'s bytes, None when there is none) against ``files`` (name ->
        content of each of :data:`SIGNED_FILES` the version has); :class:`SignatureError` with the reason."""
        if signature is None:
            raise SignatureError(f"it is not signed (no {SIGNATURE_FILE}) and a model-signing key is set")
        try:
            doc = json.loads(signature)
        except ValueError:
            raise SignatureError(f"{SIGNATURE_FILE} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise SignatureError(f"{SIGNATURE_FILE} is not a JSON object")
        mac = doc.get("mac")
        if not isinstance(mac, str) or not _HEX64.fullmatch(mac):
            raise SignatureError(f"{SIGNATURE_FILE} has no MAC (\"mac\" must be 64 lowercase hex digits)")
        if doc.get("format") != FORMAT or doc.get("alg") != ALG:
            raise SignatureError(f"{SIGNATURE_FILE} is format {doc.get('format')!r}, alg {doc.get('alg')!r}; "
                                 f"this code verifies format {FORMAT}, {ALG}")
        key_id = doc.get("key_id")
        if key_id != self.key_id:
            shown = key_id[:16] if isinstance(key_id, str) else repr(key_id)
            raise SignatureError(f"signed under another key (key id {shown}; the configured key's id is "
                                 f"{self.key_id}): sign it again under this key, or configure the key it was "
                                 "signed with")
        if not hmac.compare_digest(mac, self._mac(doc)):
            raise SignatureError(f"{SIGNATURE_FILE} does not verify: it was altered after signing")
        # from here on the document is authentic
        if doc.get("pipeline") != pipeline or doc.get("version") != version:
            raise SignatureError(f"the signature is for model {doc.get('pipeline')!r} version {doc.get('version')!r}"
                                 ": a signed version copied under another name")
        signed = doc.get("files")
        if not isinstance(signed, dict):
            raise SignatureError(f"{SIGNATURE_FILE} lists no files")
        for name in SIGNED_FILES:
            if name in files and name not in signed:
                raise SignatureError(f"{name} is not signed (added after signing)")
        for name, digest in signed.items():
            if name not in SIGNED_FILES:
                raise SignatureError(f"{SIGNATURE_FILE} lists an unknown file {name!r}")
            if name not in files:
                raise SignatureError(f"{name} is signed but missing")
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest) \
                    or not hmac.compare_digest(digest, _sha256(files[name])):
                raise SignatureError(f"{name} does not match its signature (changed after it was signed)")
        for name in REQUIRED_FILES:
            if name not in signed:
                raise SignatureError(f"{name} is not covered by the signature")
