"""Every learner kind learns a simple concept; a cold learner abstains."""

from __future__ import annotations

import random

import pytest

from streaming.online.learners import OnlineLearner, build_learner
from streaming.pipeline.spec import LEARNERS, LearnerSpec


def stream(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {"a": rng.uniform(0, 10), "b": rng.uniform(0, 10), "noise": rng.random()}
        out.append((x, x["a"] + x["b"] > 10))
    return out


@pytest.mark.parametrize("kind", LEARNERS)
def test_each_kind_learns_a_linear_concept(kind: str) -> None:
    learner = OnlineLearner(build_learner(LearnerSpec(kind)), warmup=100)
    hits = seen = 0
    for x, y in stream(3000, seed=1):
        p = learner.predict(x)
        if p is not None:
            seen += 1
            hits += (p >= 0.5) == y
        learner.learn(x, y)
    assert learner.seen == 3000 and seen == 2900  # it abstained on exactly the first 100
    assert hits / seen > 0.85, f"{kind}: prequential accuracy {hits / seen:.3f}"


def test_a_cold_learner_abstains_until_its_warmup() -> None:
    learner = OnlineLearner.from_spec(LearnerSpec("logistic_regression", warmup=3))
    data = stream(5, seed=2)
    for x, y in data[:3]:
        assert learner.predict(x) is None and not learner.ready
        learner.learn(x, y)
    assert learner.ready and learner.predict(data[3][0]) is not None


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown learner kind 'svm'"):
        build_learner(LearnerSpec("svm"))
