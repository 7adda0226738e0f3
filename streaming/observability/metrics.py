"""The worker's Prometheus metrics (names per docs/operations.md).

Each :class:`Metrics` owns its registry, so several workers (tests) can live
in one process. Latency histograms put the pipeline's SLO on a bucket edge.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streaming.observability import kafka_requests

__all__ = ["Metrics", "latency_buckets"]

_BASE_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STAGE = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def latency_buckets(slo_s: float) -> list[float]:
    """Latency buckets with ``slo_s`` on an edge.

    >>> 0.04 in latency_buckets(0.04)
    True
    """
    return sorted(set(_BASE_LATENCY) | {round(slo_s, 6)})


class Metrics:
    def __init__(self, slo_s: float = 0.05, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter("streaming_events", "Events by outcome.", ["outcome"], registry=r)
        self.e2e = Histogram(
            "streaming_e2e_latency_seconds",
            "Event record timestamp to prediction acknowledged by the broker.",
            buckets=latency_buckets(slo_s),
            registry=r,
        )
        self.stage = Histogram("streaming_stage_seconds", "Time per stage per batch.", ["stage"], buckets=_STAGE, registry=r)
        self.batch_size = Histogram("streaming_batch_size", "Rows per scored micro-batch.", buckets=_ROWS, registry=r)
        self.batch_target = Gauge("streaming_batch_target_rows", "The batch policy's current target size.", registry=r)
        self.dispatches = Counter(
            "streaming_batch_dispatches", "Inference batches dispatched, by the policy's reason.", ["reason"], registry=r
        )
        self.queue_wait = Histogram(
            "streaming_batch_queue_wait_seconds", "How long a batch's oldest row waited in the inference queue.",
            buckets=_STAGE, registry=r,
        )
        self.batch_seconds = Histogram(
            "streaming_batch_run_seconds", "Inference batch run time: the policy's p99 prediction and the actual.",
            ["kind"], buckets=_STAGE, registry=r,
        )
        self.queue_rows = Gauge("streaming_batch_queue_rows", "Rows waiting in the inference queue.", registry=r)
        self.consumer_lag = Gauge(
            "streaming_consumer_lag_messages", "Messages behind the log end (taken by the worker).",
            ["topic", "partition"], registry=r
        )
        self.committed_lag = Gauge(
            "streaming_consumer_committed_lag_messages",
            "Messages between the committed offset and the log end (what a restart would read again).",
            ["topic", "partition"], registry=r
        )
        self.labels_waiting = Gauge(
            "streaming_labels_waiting", "Labels waiting for their event's served vector.", registry=r
        )
        self.acks_waiting = Gauge(
            "streaming_acks_waiting", "Acknowledgements held back until an earlier offset is acknowledged.", registry=r
        )
        self.loop_lag = Gauge("streaming_event_loop_lag_seconds", "How late the event loop runs a 0.1 s timer.", registry=r)
        self.store_seconds = Histogram(
            "streaming_feature_store_seconds", "Feature store round trips.", ["op"], buckets=_STAGE, registry=r
        )
        self.store_errors = Counter("streaming_feature_store_errors", "Failed feature store calls.", ["op"], registry=r)
        self.model_info = Gauge(
            "streaming_model_info", "The model serving (value 1).", ["model", "version", "provider"], registry=r
        )
        self.model_refused = Counter(
            "streaming_model_refused", "Model versions refused at start or at a change (corrupt, incompatible, failing "
            "warm-up).", ["role"], registry=r
        )
        self.model_changes = Counter("streaming_model_changes", "Models swapped in without a stop.", ["role"], registry=r)
        self.shadow_diff = Histogram(
            "streaming_shadow_score_diff", "|active score - shadow score| per event.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0), registry=r,
        )
        self.shadow_disagreements = Counter(
            "streaming_shadow_disagreements", "Events whose decision differs between active and shadow.", registry=r
        )
        self.fallback = Counter(
            "streaming_fallback_predictions", "Predictions not from the model, by reason.", ["reason"], registry=r
        )
        self.labels = Counter("streaming_labels", "Labels by outcome (joined, duplicate, unjoined, invalid, unlearnable).", ["outcome"], registry=r)
        self.online_metric = Gauge(
            "streaming_online_metric", "Prequential metric against labels.", ["model", "scorer", "metric"], registry=r
        )
        self.drift_statistic = Gauge(
            "streaming_drift_statistic", "The monitored statistic.", ["monitor", "signal"], registry=r
        )
        self.drift_state = Gauge("streaming_drift_state", "0 ok, 1 warning, 2 drift.", ["monitor"], registry=r)
        self.drift_detections = Counter(
            "streaming_drift_detections", "Detector firings, cooldown included.", ["monitor"], registry=r
        )
        self.checkpoints = Counter(
            "streaming_checkpoints", "Learner checkpoints saved, restored and refused (tampered, unreadable).",
            ["outcome"], registry=r,
        )
        self.checkpoint_bytes = Gauge("streaming_checkpoint_bytes", "Size of the last checkpoint written.",
                                      registry=r)
        self.retrain_deduplicated = Counter(
            "streaming_retrain_deduplicated", "Drifts another worker or monitor group requested first.", ["model"],
            registry=r,
        )
        self.learner_labels = Gauge(
            "streaming_learner_labels", "Labels the online learner has learned from (it abstains below its warmup).",
            ["pipeline"], registry=r,
        )
        self.retrain_requests = Counter(
            "streaming_retrain_requests", "Retrain requests published.", ["model", "monitor"], registry=r
        )
        self.deadletters = Counter("streaming_deadletter", "Dead letters by stage.", ["reason"], registry=r)
        # the process's aiokafka requests by API (streaming_kafka_requests_total): one counter per process, in
        # the default registry where the transport's wrapper counts them, served from this registry too
        kafka_requests.register(r)
        self.kafka_requests = kafka_requests.REQUESTS
