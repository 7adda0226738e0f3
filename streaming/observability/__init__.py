"""Prometheus metrics and the /metrics endpoint."""

from streaming.observability.metrics import Metrics, latency_buckets
from streaming.observability.server import serve_metrics

__all__ = ["Metrics", "latency_buckets", "serve_metrics"]
