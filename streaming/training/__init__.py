"""Offline training: datasets from the generator, an MLP exported to ONNX."""

from streaming.training.dataset import Dataset, build_dataset, featurize
from streaming.training.trainer import TrainedModel, train_mlp

__all__ = ["Dataset", "TrainedModel", "build_dataset", "featurize", "train_mlp"]
