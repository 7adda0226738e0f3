"""Secrets from files: the first line of a mounted secret (Docker, Kubernetes), never echoed back."""

from __future__ import annotations

from pathlib import Path

from streaming.errors import ConfigError

__all__ = ["read_secret"]


def read_secret(path: str, var: str) -> str:
    """The first line of the file ``path`` named by the setting ``var``, without its line end.

    >>> read_secret("/nonexistent/pw", "STREAMING_REDIS_PASSWORD_FILE")
    Traceback (most recent call last):
    ...
    streaming.errors.ConfigError: STREAMING_REDIS_PASSWORD_FILE='/nonexistent/pw' cannot be read: No such file or directory
    """
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"{var}={path!r} cannot be read: {exc.strerror or exc}") from None
    lines = text.splitlines()
    first = lines[0].rstrip("\r\n") if lines else ""
    if not first:
        raise ConfigError(f"{var}={path!r} is empty: its first line is the secret")
    return first
