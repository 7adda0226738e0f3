"""Streaming real-time inference: Kafka events in, features in Redis, ONNX scores out."""

__version__ = "0.1.0"
