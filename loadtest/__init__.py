"""Load generation and latency analysis (the prediction reader the demo and the load test share lives here)."""

from loadtest.percentiles import percentiles
from loadtest.reader import ReaderProcess

__all__ = ["ReaderProcess", "percentiles"]
