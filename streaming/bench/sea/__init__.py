"""The SEA pipeline of ``streaming bench drift``: ``pipeline.toml`` and its event schema, ``sea_event.avsc``."""

from pathlib import Path

__all__ = ["PIPELINE_FILE"]

#: the pipeline file (its schema file lies beside it)
PIPELINE_FILE = Path(__file__).with_name("pipeline.toml")
