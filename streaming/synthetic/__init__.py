"""Synthetic event streams for demos, training and tests."""

from streaming.synthetic.fraud import FraudGenerator, Labelled
from streaming.synthetic.player import Player, PlayStats
from streaming.synthetic.registry import generator_for

__all__ = ["FraudGenerator", "Labelled", "PlayStats", "Player", "generator_for"]
