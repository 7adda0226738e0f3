"""SEA concepts (River) with a concept drift at a known position, as a stream of labelled events.

The data is River's: :class:`river.datasets.synth.SEA` draws three features uniformly from [0, 10]
and labels an event positive when ``x1 + x2`` exceeds the variant's threshold (variant 0: 8,
1: 9, 2: 7, 3: 9.5; ``x3`` is irrelevant); ``noise`` flips that share of the labels. With a
``drift_position``, :class:`river.datasets.synth.ConceptDriftStream` mixes the ``variant`` stream
(before) with the ``drift_variant`` stream (after): event ``i`` (1-based, River's count) comes from
the new concept with probability ``1 / (1 + exp(-4 (i - drift_position) / width))``, one half at the
drift position. The inputs do not drift (uniform throughout): only the concept does, so a
label-free monitor has nothing to see and the model's error is the signal.

The two SEA streams have seeds of their own (``seed`` and ``seed + DRIFT_SEED_OFFSET``), so the
events after the drift are fresh draws; the mixing uses ``seed``. Without a drift position the
stream is ``SEA(variant, noise, seed)`` itself: the same events as the drift stream's "before" part.

**Width.** River 0.26.1 computes ``exp(-4 (i - position) / width)`` for every event, which
overflows (``OverflowError``) when ``4 (position - i) / width`` passes ~709: ``width = 1`` fails
for any position beyond ~177. :func:`min_width` is the smallest width that stays finite for
every event of a position; a smaller one is refused.

Events: ``event_id`` (``{id_prefix}{seed}-{i}``, 0-based), ``event_time`` (epoch µs,
``start_us + i / rate`` seconds: a fixed pace, so an event's index follows from its time),
``key`` (``s{i % keys}``), ``x1``, ``x2``, ``x3``; the label is 1 or 0 and the pattern
``"before"`` or ``"after"`` (which concept labelled the event).

>>> gen = SEAGenerator(rate=100, seed=1, drift_position=50, width=10, start_us=0)
>>> first = list(itertools.islice(gen, 3))
>>> [x.event["event_id"] for x in first], [x.event["event_time"] for x in first]
(['s1-0', 's1-1', 's1-2'], [0, 10000, 20000])
>>> sorted(first[0].event), first[0].pattern
(['event_id', 'event_time', 'key', 'x1', 'x2', 'x3'], 'before')
>>> min_width(5000)
29
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from river.datasets import synth

from streaming.synthetic.fraud import Labelled

__all__ = ["DRIFT_SEED_OFFSET", "SEA_THRESHOLDS", "SEAGenerator", "min_width"]

#: the drift stream's seed is the stream's plus this
DRIFT_SEED_OFFSET = 10_000
#: ``x1 + x2 > threshold`` per SEA variant (River's)
SEA_THRESHOLDS = {0: 8.0, 1: 9.0, 2: 7.0, 3: 9.5}
#: the largest exponent ``math.exp`` takes (ln of the largest double is ~709.78), with a margin
_MAX_EXP = 700.0


def min_width(position: int) -> int:
    """The smallest ``ConceptDriftStream`` width whose sigmoid stays finite for every event up to ``position``.

    >>> min_width(100), min_width(5000), min_width(100_000)
    (1, 29, 572)
    """
    return max(1, math.floor(4.0 * max(position - 1, 0) / _MAX_EXP) + 1)


class _TaggedSEA(synth.SEA):  # type: ignore[misc]
    """River's SEA whose ``x`` says which of the two streams drew it (``_tag``), popped by the generator."""

    def __init__(self, variant: int, noise: float, seed: int, tag: str) -> None:
        super().__init__(variant=variant, noise=noise, seed=seed)
        self.tag = tag

    def __iter__(self) -> Iterator[tuple[dict[Any, Any], bool]]:
        for x, y in super().__iter__():
            x["_tag"] = self.tag
            yield x, y


class SEAGenerator:
    """An endless stream of labelled SEA events (see the module's text).

    >>> stationary = SEAGenerator(rate=100, seed=3)
    >>> all(x.pattern == "before" for x in itertools.islice(stationary, 500))
    True
    """

    def __init__(
        self,
        *,
        rate: float,
        seed: int = 0,
        start_us: int = 0,
        id_prefix: str = "s",
        variant: int = 0,
        drift_variant: int = 3,
        drift_position: int | None = None,
        width: int = 50,
        noise: float = 0.1,
        keys: int = 64,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        for v in (variant, drift_variant):
            if v not in SEA_THRESHOLDS:
                raise ValueError(f"SEA variant must be one of 0, 1, 2, 3, got {v!r}")
        if not 0.0 <= noise < 0.5:
            raise ValueError(f"noise must be a share in [0, 0.5), got {noise!r}")
        if keys < 1:
            raise ValueError("keys must be at least 1")
        if drift_position is not None:
            if drift_position < 1:
                raise ValueError(f"drift_position must be at least 1 (events), got {drift_position!r}")
            if width < min_width(drift_position):
                raise ValueError(f"width {width} overflows River's ConceptDriftStream at position {drift_position} "
                                 f"(exp of 4 x position / width); use at least {min_width(drift_position)}")
        self.rate = rate
        self.seed = seed
        self.start_us = start_us
        self.id_prefix = f"{id_prefix}{seed}-"
        self.variant = variant
        self.drift_variant = drift_variant
        self.drift_position = drift_position
        self.width = width
        self.noise = noise
        self.keys = keys
        before = _TaggedSEA(variant, noise, seed, "before")
        if drift_position is None:
            self._source: Iterator[tuple[dict[Any, Any], bool]] = iter(before)
        else:
            after = _TaggedSEA(drift_variant, noise, seed + DRIFT_SEED_OFFSET, "after")
            self._source = iter(synth.ConceptDriftStream(stream=before, drift_stream=after, position=drift_position,
                                                         width=width, seed=seed))
        self._index = itertools.count()

    def event_time(self, index: int) -> int:
        """The event time (epoch µs) of the event at ``index`` (0-based)."""
        return self.start_us + round(index * 1e6 / self.rate)

    def __iter__(self) -> Iterator[Labelled]:
        return self

    def __next__(self) -> Labelled:
        x, y = next(self._source)
        i = next(self._index)
        event = {
            "event_id": f"{self.id_prefix}{i}",
            "event_time": self.event_time(i),
            "key": f"s{i % self.keys}",
            "x1": float(x[0]),
            "x2": float(x[1]),
            "x3": float(x[2]),
        }
        return Labelled(event, int(bool(y)), str(x["_tag"]))
