"""Avro schemas and their ids (a small file-based schema registry).

``schemas/registry.json`` lists every schema version with its id; ids are
what the Confluent wire format carries. A pipeline may bring its own event
schema (a file beside its ``pipeline.toml``) with an id it declares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema as ParsedSchema

from streaming.errors import ConfigError

__all__ = ["Schema", "SchemaRegistry"]


@dataclass(frozen=True)
class Schema:
    id: int
    subject: str
    version: int
    raw: dict[str, Any]
    parsed: ParsedSchema

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.raw["fields"]]

    def field_type(self, name: str) -> Any:
        for f in self.raw["fields"]:
            if f["name"] == name:
                return f["type"]
        raise KeyError(name)


def _parse(path: Path) -> tuple[dict[str, Any], ParsedSchema]:
    try:
        raw = json.loads(path.read_text())
        return raw, fastavro.parse_schema(raw)
    except FileNotFoundError:
        raise ConfigError(f"schema file {path} does not exist") from None
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ConfigError(f"schema file {path} is not a valid Avro schema: {exc}") from None


class SchemaRegistry:
    """Schemas by id and by subject (the latest version wins)."""

    def __init__(self) -> None:
        self._by_id: dict[int, Schema] = {}
        self._latest: dict[str, Schema] = {}

    @classmethod
    def from_dir(cls, directory: Path) -> SchemaRegistry:
        reg = cls()
        index = directory / "registry.json"
        try:
            entries = json.loads(index.read_text())["schemas"]
        except FileNotFoundError:
            raise ConfigError(f"no schema registry at {index}: set STREAMING_SCHEMAS_DIR to the schemas/ directory") from None
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{index} is not a valid registry file: {exc}") from None
        for e in entries:
            reg.add_file(directory / e["file"], subject=e["subject"], schema_id=int(e["id"]), version=int(e["version"]))
        return reg

    def add_file(self, path: Path, *, subject: str, schema_id: int, version: int = 1) -> Schema:
        raw, parsed = _parse(path)
        return self.add(subject, raw, parsed, schema_id=schema_id, version=version)

    def add(self, subject: str, raw: dict[str, Any], parsed: ParsedSchema, *, schema_id: int, version: int) -> Schema:
        existing = self._by_id.get(schema_id)
        if existing is not None:
            if existing.raw == raw:
                return existing
            raise ConfigError(f"schema id {schema_id} is used by both {existing.subject} and {subject}")
        schema = Schema(schema_id, subject, version, raw, parsed)
        self._by_id[schema_id] = schema
        current = self._latest.get(subject)
        if current is None or current.version < version:
            self._latest[subject] = schema
        return schema

    def by_id(self, schema_id: int) -> Schema | None:
        return self._by_id.get(schema_id)

    def latest(self, subject: str) -> Schema:
        try:
            return self._latest[subject]
        except KeyError:
            raise ConfigError(f"unknown schema {subject!r}; known: {', '.join(sorted(self._latest))}") from None

    def versions(self, subject: str) -> list[Schema]:
        return sorted((s for s in self._by_id.values() if s.subject == subject), key=lambda s: s.version)

    @property
    def subjects(self) -> list[str]:
        return sorted(self._latest)
