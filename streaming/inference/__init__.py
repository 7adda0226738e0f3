"""Inference: ONNX Runtime sessions, providers and the model registry."""

from streaming.inference.providers import choose_providers, cuda_usable
from streaming.inference.registry import ModelRegistry, ModelVersion
from streaming.inference.session import OnnxModel

__all__ = ["ModelRegistry", "ModelVersion", "OnnxModel", "choose_providers", "cuda_usable"]
