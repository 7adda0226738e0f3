"""Batch policies behind one interface: `none`, `static` (Triton-style) and `adaptive` (deadline + online model).

See :mod:`streaming.inference.batching.base` for the protocol the batcher follows.
"""

from streaming.inference.batching.adaptive import AdaptivePolicy
from streaming.inference.batching.base import BatchPolicy, Dispatch, DispatchReason, QueueState, Wait
from streaming.inference.batching.buckets import bucket_for, check_buckets, default_buckets, floor_bucket, pad
from streaming.inference.batching.feedback import AimdCorrection
from streaming.inference.batching.none import NoBatching
from streaming.inference.batching.rate import ArrivalRate
from streaming.inference.batching.service_model import ServiceModel, quantile
from streaming.inference.batching.static import StaticPolicy

__all__ = [
    "AdaptivePolicy",
    "AimdCorrection",
    "ArrivalRate",
    "BatchPolicy",
    "Dispatch",
    "DispatchReason",
    "NoBatching",
    "QueueState",
    "ServiceModel",
    "StaticPolicy",
    "Wait",
    "bucket_for",
    "check_buckets",
    "default_buckets",
    "floor_bucket",
    "make_policy",
    "pad",
    "quantile",
]


def make_policy(kind: str, *, slo_s: float, max_rows: int, max_wait_s: float = 0.005,
                buckets: tuple[int, ...] | None = None, provider: str = "cpu") -> BatchPolicy:
    """The policy a pipeline selects by name: ``none``, ``static`` or ``adaptive``."""
    if kind == "none":
        return NoBatching(provider=provider)
    if kind == "static":
        return StaticPolicy(max_rows, max_wait_s, buckets=buckets, provider=provider)
    if kind == "adaptive":
        return AdaptivePolicy(slo_s, max_rows, buckets, provider=provider)
    raise ValueError(f"unknown batch policy {kind!r} (none, static, adaptive)")
