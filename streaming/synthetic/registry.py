"""The synthetic generator a pipeline names in its ``[generator]`` table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streaming.errors import PipelineError
from streaming.pipeline.spec import Pipeline, parse_duration
from streaming.synthetic.fraud import FraudGenerator, Labelled

__all__ = ["generator_for", "GENERATORS"]

GENERATORS = ("fraud",)


def generator_for(
    pipeline: Pipeline, *, rate: float, seed: int, start_us: int, drift_at_us: int | None = None,
    id_prefix: str = "e",
) -> Iterator[Labelled]:
    cfg: dict[str, Any] = dict(pipeline.generator)
    kind = cfg.pop("kind", None)
    if kind == "fraud":
        return FraudGenerator(
            rate=rate,
            seed=seed,
            start_us=start_us,
            drift_at_us=drift_at_us,
            id_prefix=id_prefix,
            fraud_rate=float(cfg.get("fraud_rate", 0.02)),
            card_interval_s=parse_duration(cfg.get("card_interval_s", 120)),
        )
    raise PipelineError(
        f"{pipeline.root / 'pipeline.toml'}: [generator] kind {kind!r} is not one of: {', '.join(GENERATORS)} "
        "(synthetic data needs a generator; produce your own events with `streaming produce FILE`)"
    )
