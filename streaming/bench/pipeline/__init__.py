"""``streaming bench pipeline``: bare broker, Faust and Quix forwarders, a naive worker and ours, same run."""

from streaming.bench.pipeline.bench import FULL, QUICK, run_pipeline_bench
from streaming.bench.pipeline.systems import DESCRIPTIONS, SYSTEMS

__all__ = ["run_pipeline_bench", "SYSTEMS", "DESCRIPTIONS", "FULL", "QUICK"]
