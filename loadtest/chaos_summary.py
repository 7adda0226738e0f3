"""The chaos run's figures: every record sent has one outcome, every label is joined or lost, and why.

Outcomes are exclusive: a record with a prediction is *predicted* (a hostile one that was
predicted is a finding of its own), else one with a dead letter is *dead-lettered*, else it is
*missing*; so ``predicted + hostile_predicted + dead_lettered + missing == events_sent + hostile_sent``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.chaos_accounting import PLAIN, REDELIVERED, TOTAL, EpochTally
from loadtest.chaos_traffic import Delivered

__all__ = ["Epoch", "ranges", "summarize"]


@dataclass
class Epoch:
    """One broker epoch: what was sent (the valid event ids in order, the hostile keys), what came out."""

    event_ids: list[str] = field(default_factory=list)
    hostile: dict[str, str] = field(default_factory=dict)  # key -> kind
    delivered: Delivered = field(default_factory=Delivered)
    tally: EpochTally | None = None
    labels_unprocessed: list[str] = field(default_factory=list)  # delivered labels past the group's committed offset


def _merge(dicts: Iterable[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for d in dicts:
        for k, v in d.items():
            out.setdefault(k, []).extend(v)
    return out


def _sample(items: Iterable[str], n: int = 5) -> list[str]:
    return sorted(items)[:n]


def ranges(positions: Iterable[int], gap: int = 100, most: int = 8) -> list[str]:
    """Positions grouped into ranges (``first-last (count)``), neighbours up to ``gap`` apart in one range.

    >>> ranges([5, 7, 300, 301, 302, 900])
    ['5-7 (2)', '300-302 (3)', '900 (1)']
    """
    out: list[list[int]] = []
    for p in sorted(positions):
        if out and p - out[-1][1] <= gap:
            out[-1][1] = p
            out[-1][2] += 1
        else:
            out.append([p, p, 1])
    shown = [f"{a}-{b} ({n})" if a != b else f"{a} ({n})" for a, b, n in out[:most]]
    return shown + ([f"... {len(out) - most} more"] if len(out) > most else [])


def summarize(epochs: Sequence[Epoch]) -> dict[str, Any]:
    """The outcome counts of a run's epochs, and ``problems``: one line of evidence per kind of failure.

    ``at_events``: where in the stream (send positions of the valid events, 0-based) the missing events,
    the duplicates and the lost labels lie, to set beside the moments of the faults.

    >>> from loadtest.chaos_accounting import EpochTally
    >>> t = EpochTally(predictions={"a": [2, 1, 1, 0, 0], "b": [1, 1, 0, 0, 0]},
    ...                dead_hostile={"hostile-0-garbage": ["decode: not JSON"]})
    >>> e = Epoch(["a", "b", "c"], {"hostile-0-garbage": "garbage"}, tally=t)
    >>> s = summarize([e])
    >>> s["predicted"], s["missing"], s["duplicated"], s["duplicated_flagged"], s["hostile_dead_lettered"]
    (2, 1, 1, 1, 1)
    """
    problems: list[str] = []
    tallies = [e.tally or EpochTally() for e in epochs]
    failed = set().union(*(e.delivered.events_failed for e in epochs))
    valid = [eid for e in epochs for eid in e.event_ids if eid not in failed]
    hostile = {k: kind for e in epochs for k, kind in e.hostile.items() if k not in failed}
    preds: dict[str, list[int]] = {}
    for t in tallies:
        for eid, counts in t.predictions.items():
            acc = preds.setdefault(eid, [0] * len(counts))
            for i, c in enumerate(counts):
                acc[i] += c
    dead_events = _merge(t.dead_events for t in tallies)
    dead_hostile = _merge(t.dead_hostile for t in tallies)
    dead_labels = _merge(t.dead_labels for t in tallies)
    hostile_predicted = {k for t in tallies for k in t.hostile_predicted}

    valid_set = set(valid)
    predicted = valid_set & preds.keys()
    dead_valid = (valid_set & dead_events.keys()) - predicted
    missing_valid = valid_set - predicted - dead_valid
    hostile_dead = (hostile.keys() & dead_hostile.keys()) - hostile_predicted
    hostile_missing = hostile.keys() - hostile_dead - hostile_predicted
    duplicated = {eid for eid in predicted if preds[eid][TOTAL] > 1}
    unflagged = {eid for eid in duplicated if preds[eid][TOTAL] - preds[eid][REDELIVERED] > 1}
    flagged_single = {eid for eid in predicted if preds[eid][TOTAL] == 1 and preds[eid][REDELIVERED] == 1}
    # lost with the broker: an epoch that ended (a broker restart followed) with some of its events unaccounted for
    lost_with_broker = sum(len(set(e.event_ids) & missing_valid) for e in epochs[:-1])

    labels_sent = sum(len(e.delivered.labels) for e in epochs)
    unprocessed = {eid for e in epochs for eid in e.labels_unprocessed}
    labels_lost = set(dead_labels) | unprocessed
    label_stages = Counter(reasons[0].split(":", 1)[0] for reasons in dead_labels.values())
    produce_failed = len(failed) + sum(len(e.delivered.labels_failed) for e in epochs)

    if missing_valid:
        problems.append(f"{len(missing_valid)} events have neither a prediction nor a dead letter, e.g. "
                        f"{_sample(missing_valid)}")
    if unflagged:
        eid = min(unflagged)
        problems.append(f"{len(unflagged)} events were predicted more than once without the 'redelivered' flag, e.g. "
                        f"{eid}: {preds[eid][TOTAL]} predictions, {preds[eid][PLAIN]} without a flag")
    if dead_valid:
        eid = min(dead_valid)
        problems.append(f"{len(dead_valid)} valid events were dead-lettered, e.g. {eid}: {dead_events[eid][0]}")
    if hostile_missing:
        kinds = Counter(hostile[k] for k in hostile_missing)
        problems.append(f"{len(hostile_missing)} hostile records have no dead letter: {dict(kinds)}")
    if hostile_predicted:
        problems.append(f"{len(hostile_predicted)} hostile records were predicted: {_sample(hostile_predicted)}")
    if labels_lost:
        eid = min(labels_lost)
        why = dead_labels[eid][0] if eid in dead_labels else "never processed (past the committed offset)"
        problems.append(f"{len(labels_lost)} labels were not joined ({dict(label_stages)}, {len(unprocessed)} "
                        f"unprocessed), e.g. {eid}: {why}")
    unidentified = sum(t.unidentified_count for t in tallies)
    if unidentified:
        problems.append(f"{unidentified} dead letters of records the run did not send: "
                        + "; ".join(x for t in tallies for x in t.unidentified)[:600])
    errors = [x for e in epochs for x in e.delivered.errors]
    if produce_failed:
        problems.append(f"the broker refused {produce_failed} of the run's records: {errors[:3]}")

    copies = sum(len(v) for k, v in dead_hostile.items() if k in hostile)
    at = {eid: i for i, eid in enumerate(valid)}  # send position of each valid event (0-based)
    where = {
        "missing_at": ranges(at[e] for e in missing_valid),
        "duplicated_at": ranges(at[e] for e in duplicated),
        "duplicated_unflagged_at": ranges(at[e] for e in unflagged),
        "labels_lost_at": ranges(at[e] for e in labels_lost if e in at),
    }
    return {
        "events_sent": len(valid),
        "hostile_sent": len(hostile),
        "predicted": len(predicted),
        "dead_lettered": len(dead_valid) + len(hostile_dead),
        "missing": len(missing_valid) + len(hostile_missing),
        "hostile_predicted": len(hostile_predicted),
        "dead_lettered_valid": len(dead_valid),
        "hostile_dead_lettered": len(hostile_dead),
        "hostile_dead_letter_copies": copies,
        "duplicated": len(duplicated),
        "duplicated_flagged": len(duplicated) - len(unflagged),
        "duplicated_unflagged": len(unflagged),
        "flagged_not_duplicated": len(flagged_single),
        "predictions_total": sum(preds[eid][TOTAL] for eid in predicted),
        "lost_with_broker": lost_with_broker,
        "labels_sent": labels_sent,
        "labels_joined": labels_sent - len(labels_lost & {eid for e in epochs for _, _, eid in e.delivered.labels}),
        "labels_lost": len(labels_lost),
        "labels_dead_lettered": dict(label_stages),
        "labels_unprocessed": len(unprocessed),
        "produce_failed": produce_failed,
        "at_events": where,
        "problems": problems,
    }
