"""Serving ``/metrics`` over HTTP."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

from streaming.errors import ConfigError

__all__ = ["serve_metrics"]


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    if port == 0:
        return
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}): set STREAMING_METRICS_PORT to a free port or 0"
        ) from None
