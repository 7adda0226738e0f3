"""Load generation and latency analysis (the prediction collector lives here)."""

from loadtest.collector import PredictionCollector
from loadtest.percentiles import percentiles

__all__ = ["PredictionCollector", "percentiles"]
