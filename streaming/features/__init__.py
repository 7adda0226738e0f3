"""Online features: specs to vectors, the Redis store, the feature log, a reference."""

from streaming.features.layout import WindowPlan
from streaming.features.reference import ReferenceStore
from streaming.features.store import FeatureStore, RedisFeatureStore, ServedVector, WindowResult
from streaming.features.vector import VectorBuilder

__all__ = ["FeatureStore", "RedisFeatureStore", "ReferenceStore", "ServedVector", "VectorBuilder", "WindowPlan", "WindowResult"]
