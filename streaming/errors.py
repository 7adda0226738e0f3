"""Errors a user can act on.

Every error that reaches the command line as a one-line message derives from
:class:`UserError`; the CLI prints ``error: <message>`` and exits non-zero
instead of showing a traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "UnreachableError", "PipelineError", "ModelError"]


class UserError(Exception):
    """An error with a message that tells the user what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A setting has a bad value."""


class UnreachableError(UserError):
    """The broker or Redis does not answer."""

    exit_code = 3


class PipelineError(UserError):
    """A ``pipeline.toml`` is invalid."""


class ModelError(UserError):
    """A model file is missing, corrupt or does not fit its pipeline."""
