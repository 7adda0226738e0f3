"""The synthetic generator a pipeline names in its ``[generator]`` table.

``kind = "fraud"`` (:class:`~streaming.synthetic.fraud.FraudGenerator`: ``fraud_rate``, ``card_interval_s``) or
``kind = "sea"`` (:class:`~streaming.synthetic.sea.SEAGenerator`: ``variant``, ``drift_variant``, ``noise``,
``width``, ``keys``). A drift switch is given in event time (``drift_at_us``); the SEA stream, paced at a fixed
``rate``, turns it into a position in events, and its width is raised to :func:`~streaming.synthetic.sea.min_width`
of that position when the configured one would overflow River's sigmoid.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streaming.errors import PipelineError
from streaming.pipeline.spec import Pipeline, parse_duration
from streaming.synthetic.fraud import FraudGenerator, Labelled
from streaming.synthetic.sea import SEAGenerator, min_width

__all__ = ["generator_for", "GENERATORS"]

GENERATORS = ("fraud", "sea")


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
    if kind == "sea":
        position = None if drift_at_us is None else max(1, round((drift_at_us - start_us) * rate / 1e6))
        width = int(cfg.get("width", 50))
        try:
            return SEAGenerator(
                rate=rate,
                seed=seed,
                start_us=start_us,
                id_prefix=id_prefix,
                variant=int(cfg.get("variant", 0)),
                drift_variant=int(cfg.get("drift_variant", 3)),
                drift_position=position,
                width=width if position is None else max(width, min_width(position)),
                noise=float(cfg.get("noise", 0.1)),
                keys=int(cfg.get("keys", 64)),
            )
        except ValueError as exc:
            raise PipelineError(f"{pipeline.root / 'pipeline.toml'}: [generator] {exc}") from None
    raise PipelineError(
        f"{pipeline.root / 'pipeline.toml'}: [generator] kind {kind!r} is not one of: {', '.join(GENERATORS)} "
        "(synthetic data needs a generator; produce your own events with `streaming produce FILE`)"
    )
