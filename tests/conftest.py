"""Shared fixtures: one embedded broker and one private Redis per test session.

Integration tests talk to these real servers over real connections; each
test module gets its own topic names (and consumer group), each test its own
event ids.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streaming.events.schemas import SchemaRegistry
from streaming.inference.registry import ModelRegistry, ModelVersion
from streaming.infra.stack import Stack
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings, project_root

ROOT = project_root()


@dataclass(frozen=True)
class Servers:
    bootstrap: str
    redis_url: str
    run_dir: Path


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    run_dir = tmp_path_factory.mktemp("run")
    settings = Settings.from_env({}, run_dir=str(run_dir), redis_url="", broker_url="")
    stack = Stack(settings, private_redis=True, tie_to_parent=True)
    state = stack.up()
    try:
        yield Servers(state.services["broker"].url, state.services["redis"].url, run_dir)
    finally:
        stack.down()


@pytest.fixture(scope="session")
def schema_registry() -> SchemaRegistry:
    return SchemaRegistry.from_dir(ROOT / "schemas")


@pytest.fixture(scope="session")
def fraud_pipeline(schema_registry: SchemaRegistry) -> Pipeline:
    return load_pipeline(ROOT / "models" / "fraud" / "pipeline.toml", schema_registry)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, fraud_pipeline: Pipeline) -> Path:
    """A model registry with a fraud model trained once for the session (a short training run)."""
    from streaming.training.job import train_pipeline

    root = tmp_path_factory.mktemp("models")
    train_pipeline(fraud_pipeline, ModelRegistry(root, "fraud"), seed=3)
    return root


@pytest.fixture(scope="session")
def fraud_model(models_dir: Path) -> ModelVersion:
    return ModelRegistry(models_dir, "fraud").active()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_env(servers: Servers, models: Path, *, pipeline: Path | None = None, tag: str | None = None,
               **extra: str) -> dict[str, str]:
    """STREAMING_* variables for a worker on the session's servers with its own topics and group."""
    tag = tag or unique("t")
    env = {
        "STREAMING_BROKER_URL": servers.bootstrap,
        "STREAMING_REDIS_URL": servers.redis_url,
        "STREAMING_MODELS_DIR": str(models),
        "STREAMING_PIPELINE": str(pipeline or ROOT / "models" / "fraud" / "pipeline.toml"),
        "STREAMING_SCHEMAS_DIR": str(ROOT / "schemas"),
        "STREAMING_RUN_DIR": str(servers.run_dir),
        "STREAMING_APP_ID": f"worker-{tag}",
        "STREAMING_TOPIC_EVENTS": f"events-{tag}",
        "STREAMING_TOPIC_PREDICTIONS": f"predictions-{tag}",
        "STREAMING_TOPIC_LABELS": f"labels-{tag}",
        "STREAMING_TOPIC_RETRAIN": f"retrain-{tag}",
        "STREAMING_TOPIC_DLQ": f"dlq-{tag}",
        "STREAMING_METRICS_PORT": "0",
        # its own feature-store namespace: windows, feature log, label claims, drift claims and checkpoints
        "STREAMING_REDIS_PREFIX": f"{tag}:",
    }
    env.update(extra)
    return env


def pipeline_variant(dest: Path, *, monitors: tuple[str, ...] | None = None, **tables: dict[str, Any]) -> Path:
    """A copy of the fraud pipeline at ``dest`` keeping only the ``monitors`` named, with ``tables`` replaced."""
    import tomlkit

    doc = tomlkit.parse((ROOT / "models" / "fraud" / "pipeline.toml").read_text())
    if monitors is not None:
        kept = tomlkit.aot()
        for m in doc["monitors"]:  # type: ignore[union-attr]
            if m["name"] in monitors:
                kept.append(m)
        doc["monitors"] = kept
    for name, table in tables.items():
        doc[name] = table
    dest.write_text(tomlkit.dumps(doc))
    return dest


def settings_from(env: dict[str, str]) -> Settings:
    return Settings.from_env({**{k: v for k, v in os.environ.items() if not k.startswith("STREAMING_")}, **env})
