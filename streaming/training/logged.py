"""Training sets from production: the labels topic joined to the feature log (the vectors the worker served).

Any pipeline's rows: each label (``schemas/label.avsc``) finds the vector its event was scored with in the
feature log (:meth:`~streaming.features.store.RedisFeatureStore.read_served`, in batches of ``batch`` ids per
round trip), so a model trained on them sees exactly what the worker computed, in the pipeline's input order.
A label becomes a row when:

- it decodes and its label is 0 or 1 (else ``invalid``);
- it is the last label of its event in the topic (earlier ones are ``duplicates``: the last label wins);
- its event has a readable served vector (else ``missing_vector``: expired after ``feature_log_ttl_s``,
  never scored, or logged under another Redis prefix; ``unreadable_vector``: a malformed entry);
- the vector was built by the pipeline's current features (``feature_spec`` equal to
  :attr:`VectorBuilder.spec_version <streaming.features.vector.VectorBuilder.spec_version>`, else
  ``other_spec``) and has the pipeline's width (else ``wrong_width``);
- the vector's event time lies in ``[since_us, until_us]`` (else ``outside_window``).

Every label read is counted once: ``labels_read`` is the sum of ``rows`` and the reasons above
(:meth:`LoggedStats.accounted`). Rows are ordered by event time (ties by event id), so a time split keeps
the most recent rows for evaluation.

The labels topic is read from the beginning up to its end when the read starts
(:func:`read_label_values`). On the embedded broker the high watermark is the last batch's base offset + 1
(``docs/platform.md``), so the reader also takes what follows in that last batch, and stops once every
partition has reached its end and been quiet for ``idle_s``; a record written after the read started
(its timestamp later than the start, past the end) is left for the next read (``after_start``). The read
gives up after ``timeout_s`` with a :class:`LabelReadError` saying how far each partition got.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streaming.errors import UnreachableError
from streaming.events.codec import Codec, DecodeError
from streaming.events.limits import Limits
from streaming.events.reader import EndRead, TopicReader
from streaming.features.store import ServedVector
from streaming.features.vector import VectorBuilder
from streaming.pipeline.spec import Pipeline
from streaming.training.dataset import Dataset

__all__ = ["LabelReadError", "LabelValues", "LoggedStats", "ServedLog", "dataset_from_topic", "logged_dataset",
           "read_label_values"]

#: event ids per feature-log read (one pipelined round trip each)
READ_BATCH = 500


class LabelReadError(UnreachableError):
    """The labels topic could not be read to its end in time."""


class ServedLog(Protocol):
    """The part of the feature store the join needs."""

    async def read_served(self, event_ids: Sequence[str]) -> list[ServedVector | ValueError | None]: ...


@dataclass(frozen=True)
class LoggedStats:
    """What became of every label read (see the module docstring).

    >>> s = LoggedStats(labels_read=10, rows=6, invalid=1, duplicates=1, missing_vector=1, outside_window=1)
    >>> s.accounted
    True
    >>> s.as_dict()["rows"]
    6
    """

    labels_read: int = 0
    rows: int = 0  # labels joined to a vector that became a row
    invalid: int = 0  # undecodable, or a label that is neither 0 nor 1
    duplicates: int = 0  # an earlier label of an event labelled again (the last label wins)
    missing_vector: int = 0  # no served vector in the feature log
    unreadable_vector: int = 0  # a malformed feature-log entry
    other_spec: int = 0  # served with other feature declarations (feature_spec differs)
    wrong_width: int = 0  # the current feature_spec but not the pipeline's number of inputs
    outside_window: int = 0  # served vector's event time outside [since_us, until_us]
    after_start: int = 0  # records written after the read started: not read (not in labels_read)
    positives: int = 0  # rows labelled 1

    @property
    def accounted(self) -> bool:
        """Whether every label read is counted exactly once."""
        return self.labels_read == (self.rows + self.invalid + self.duplicates + self.missing_vector
                                    + self.unreadable_vector + self.other_spec + self.wrong_width
                                    + self.outside_window)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: the rows and what the other labels were."""
        parts = [f"{v:,} {k.replace('_', ' ')}" for k, v in self.as_dict().items()
                 if v and k not in ("labels_read", "rows", "positives")]
        rest = f" ({', '.join(parts)})" if parts else ""
        return f"{self.rows:,} rows ({self.positives:,} positive) from {self.labels_read:,} labels{rest}"


@dataclass(frozen=True)
class LabelValues:
    """The labels topic's record values up to its end at the start of the read, in offset order per partition."""

    values: list[bytes | None]
    ends: dict[int, int]  # partition -> high watermark at the start
    after_start: int = 0
    seconds: float = 0.0


def read_label_values(bootstrap: str, topic: str, *, timeout_s: float = 120.0, idle_s: float = 0.5,
                      config: dict[str, Any] | None = None) -> LabelValues:
    """Every record value of ``topic`` up to its end when the read starts (blocking; see the module docstring).

    Raises :class:`LabelReadError` when the topic is not read to its end within ``timeout_s``, and
    :class:`~streaming.errors.UnreachableError` when the broker or the topic is not there.
    """
    t0 = time.monotonic()
    started_ms = time.time_ns() // 1_000_000
    reader = TopicReader(bootstrap, topic, from_beginning=True, config=config)
    try:
        scan = EndRead(reader, started_ms)
        values: list[bytes | None] = []
        while True:
            values.extend(msg.value() for msg in scan.poll(0.2))
            now = time.monotonic()
            if scan.done(idle_s):
                return LabelValues(values, scan.ends, scan.newer, round(now - t0, 3))
            if now - t0 > timeout_s:
                raise LabelReadError(f"reading the labels topic {topic} took over {timeout_s:g}s ({scan.behind()}); "
                                     "is the broker overloaded? raise the timeout or retry")
    finally:
        reader.close()


def _decode(codec: Codec, value: bytes | None, limits: Limits) -> tuple[str, int] | None:
    try:
        rec = codec.decode("label", value, limits)
    except DecodeError:
        return None
    label = rec.get("label")
    eid = rec.get("event_id")
    if label not in (0, 1) or isinstance(label, bool) or not isinstance(eid, str) or not eid:
        return None
    return eid, int(label)


async def logged_dataset(values: Iterable[bytes | None], store: ServedLog, codec: Codec, pipeline: Pipeline, *,
                         since_us: int, until_us: int | None = None, limits: Limits | None = None,
                         batch: int = READ_BATCH) -> tuple[Dataset, LoggedStats]:
    """The rows of ``pipeline``'s current vector for the labels in ``values`` (raw label record values, in topic
    order) whose served vectors' event times lie in ``[since_us, until_us]`` (None: no upper bound).

    ``limits``: the decode limits of a label (default: the pipeline's ``[limits]``). Returns the dataset
    (``X`` float64, ``y`` int64, ``event_time`` int64 epoch µs, ordered by event time) and what became of
    every label.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    lim = limits if limits is not None else pipeline.limits
    builder = VectorBuilder(pipeline)
    spec, width = builder.spec_version, builder.width
    read = invalid = 0
    labels: dict[str, int] = {}  # event id -> its last label (insertion order: first seen)
    for value in values:
        read += 1
        got = _decode(codec, value, lim)
        if got is None:
            invalid += 1
            continue
        eid, label = got
        labels.pop(eid, None)
        labels[eid] = label  # re-inserted: the last label wins
    counts = dict.fromkeys(("missing_vector", "unreadable_vector", "other_spec", "wrong_width", "outside_window"), 0)
    rows: list[tuple[int, str, list[float], int]] = []
    ids = list(labels)
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        for eid, sv in zip(chunk, await store.read_served(chunk), strict=True):
            if sv is None:
                counts["missing_vector"] += 1
            elif isinstance(sv, ValueError):
                counts["unreadable_vector"] += 1
            elif sv.feature_spec != spec:
                counts["other_spec"] += 1
            elif len(sv.x) != width:
                counts["wrong_width"] += 1
            elif sv.event_time < since_us or (until_us is not None and sv.event_time > until_us):
                counts["outside_window"] += 1
            else:
                rows.append((sv.event_time, eid, sv.x, labels[eid]))
        await asyncio.sleep(0)
    rows.sort(key=lambda r: (r[0], r[1]))
    X = np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), width)
    y = np.array([r[3] for r in rows], dtype=np.int64)
    t = np.array([r[0] for r in rows], dtype=np.int64)
    stats = LoggedStats(labels_read=read, rows=len(rows), invalid=invalid, duplicates=read - invalid - len(labels),
                        positives=int(y.sum()), **counts)
    return Dataset(X, y, t, list(builder.names)), stats


async def dataset_from_topic(bootstrap: str, topic: str, store: ServedLog, codec: Codec, pipeline: Pipeline, *,
                             since_us: int, until_us: int | None = None, limits: Limits | None = None,
                             timeout_s: float = 120.0, idle_s: float = 0.5) -> tuple[Dataset, LoggedStats]:
    """:func:`read_label_values` (in a thread) then :func:`logged_dataset`; ``after_start`` is filled in."""
    got = await asyncio.to_thread(read_label_values, bootstrap, topic, timeout_s=timeout_s, idle_s=idle_s)
    ds, stats = await logged_dataset(got.values, store, codec, pipeline, since_us=since_us, until_us=until_us,
                                     limits=limits)
    return ds, dataclasses.replace(stats, after_start=got.after_start)
