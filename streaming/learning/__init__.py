"""Online learning from delayed labels: River learners and their evaluation."""

from streaming.learning.evaluator import OnlineEvaluator
from streaming.learning.learners import build_learner

__all__ = ["OnlineEvaluator", "build_learner"]
