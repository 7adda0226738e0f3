"""Drift monitors and retrain requests."""

from streaming.drift.monitor import STATES, DriftMonitor, build_detector

__all__ = ["STATES", "DriftMonitor", "build_detector"]
