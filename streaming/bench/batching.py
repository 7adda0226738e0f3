"""``streaming bench batching``: batch policies side by side, open loop, in process (no Kafka, no Redis).

The model is an MLP generated for the benchmark (256 inputs, 4 hidden layers
of 2,048, ReLU, one sigmoid output: 13 M weights, 52 MB, more than the last-level cache), so a
batch of one pays a large fixed cost (reading every weight) that larger
batches share. One ONNX Runtime session (one intra-op thread) runs on a worker
thread; the dispatch loop on the calling thread plays the batcher. Arrivals
are a Poisson schedule fixed in advance, so a row's latency is its completion
time minus its *intended* arrival time and a slow loop cannot hide queueing
(no coordinated omission). Every policy sees the same arrival times at a given
rate (one unit-rate process, scaled).

1. The service-time curve per bucket (each bucket warmed first), printed.
2. Capacity, MLPerf-server style: per policy, a bisection on the arrival rate,
   each step held ``hold_s``; a step passes when the p99 latency is within the
   SLO and every row was served. Then a confirmation: from the bisection's
   result each policy walks a common grid of rates (2.5 % apart), each rate
   probed with up to three fresh arrival sequences (the same ones for every
   policy) and passed on a majority: up while it passes, down while it fails.
   The result is the highest rate that passed its confirmation (one probe
   per rate on a machine whose speed drifts lets a lucky pass stand).
   Last, head to head: the best static setting, selected on those probes,
   is the luckiest of nine noisy walks, so it and adaptive are measured again
   on other sequences, five per rate, on one walk from the lower of their two
   results (both probed at every rate, back to back: paired in arrivals and in
   time); ``adaptive_over_best_static`` is that ratio.
3. A load step (10 % -> 90 % -> 10 % of adaptive's capacity) for adaptive and
   every static setting, and a burst (30 % -> 150 % for 0.5 s -> 30 %) for
   adaptive and the best static setting, with p99 over 0.5 s windows of
   arrival time.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from streaming.inference.batching import (
    AdaptivePolicy,
    BatchPolicy,
    Dispatch,
    NoBatching,
    QueueState,
    ServiceModel,
    StaticPolicy,
    Wait,
    default_buckets,
    pad,
)
from streaming.inference.iobinding import CudaBinding
from streaming.inference.providers import choose_providers

__all__ = ["run_batching_bench", "build_mlp", "SLO_S", "MAX_ROWS", "STATIC_GRID"]

SLO_S = 0.050
MAX_ROWS = 256
BUCKETS = default_buckets(MAX_ROWS)
STATIC_GRID = tuple((rows, wait) for rows in (16, 64, 256) for wait in (0.001, 0.005, 0.025))
WINDOW_S = 0.5
TRANSIENT_S = 2.0
CONFIRM_STEP = 0.025
D_IN, WIDTH, DEPTH = 256, 2048, 4

Factory = Callable[[], BatchPolicy]


# -- the model and its executor ----------------------------------------------
def build_mlp(d_in: int = D_IN, width: int = WIDTH, depth: int = DEPTH, seed: int = 0) -> bytes:
    """An ONNX MLP: ``depth`` MatMul+Add+Relu layers of ``width``, then one sigmoid output."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, d_prev = [], [], "x", d_in
    for i in range(depth + 1):
        d = width if i < depth else 1
        w = (rng.standard_normal((d_prev, d)) / np.sqrt(d_prev)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(d, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        out = f"h{i}" if i < depth else "y"
        nodes.append(helper.make_node("Relu" if i < depth else "Sigmoid", [f"a{i}"], [out]))
        prev, d_prev = out, d
    graph = helper.make_graph(nodes, "bench_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class _Executor:
    """One session, one worker thread: :meth:`run` hands a batch over and blocks until it is scored.

    On ``cuda`` the session runs through IO binding with pinned host buffers, one binding per bucket
    (what the worker's :class:`~streaming.inference.session.OnnxModel` does).
    """

    def __init__(self, model: bytes, provider: str = "cpu") -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # two cores: one scores, the dispatch loop has the other
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model, sess_options=opts, providers=choose_providers(provider))
        self.provider = self.session.get_providers()[0]
        self._binding = CudaBinding(self.session, "x", "y", D_IN, BUCKETS) \
            if self.provider == "CUDAExecutionProvider" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-onnx")

    def _run(self, X: np.ndarray) -> None:
        if self._binding is not None:
            self._binding.run(X, X.shape[0])
        else:
            self.session.run(None, {"x": X})

    def run(self, X: np.ndarray) -> None:
        self._pool.submit(self._run, X).result()

    def close(self) -> None:
        self._pool.shutdown()


def _service_curve(ex: _Executor, X: np.ndarray, reps: int) -> dict[int, list[float]]:
    """Run times per bucket (seconds), each bucket warmed with 3 runs first, measured as the loop sees them."""
    out: dict[int, list[float]] = {}
    for b in BUCKETS:
        for _ in range(3):
            ex.run(X[:b])
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            ex.run(X[:b])
            times.append(time.perf_counter() - t0)
        out[b] = times
    return out


def _seeded(samples: dict[int, list[float]], buckets: Sequence[int]) -> ServiceModel:
    model = ServiceModel(buckets)
    for b in buckets:
        for s in samples[b]:
            model.observe(b, s)
    return model


# -- one open-loop run ---------------------------------------------------------
@dataclass
class _Run:
    arrivals: np.ndarray  # intended arrival offsets, s
    latency: np.ndarray  # s; inf for rows never served (run aborted)
    dispatches: list[Dispatch] = field(default_factory=list)
    aborted: bool = False

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latency, 99)) if len(self.latency) else 0.0


def _sleep_until(t: float) -> None:
    dt = t - time.perf_counter()
    if dt > 0:
        time.sleep(dt)


def _open_loop(ex: _Executor, policy: BatchPolicy, arrivals: np.ndarray, X: np.ndarray, *,
               max_late: int | None = None, max_age_s: float = 5.0) -> _Run:
    """Serve ``arrivals`` (offsets, s) in real time with ``policy``; stop early past ``max_late`` late rows."""
    n = len(arrivals)
    lat = np.full(n, np.inf)
    run = _Run(arrivals, lat)
    gc.collect()
    start = time.perf_counter() + 0.005
    arr = arrivals + start
    head = late = 0
    while head < n:
        now = time.perf_counter()
        tail = int(np.searchsorted(arr, now, "right"))
        if tail == head:
            _sleep_until(arr[head])
            continue
        if now - arr[head] > max_age_s:
            run.aborted = True
            break
        action = policy.next_action(now, QueueState(tail - head, float(arr[head]), tail))
        if isinstance(action, Wait):
            _sleep_until(min(action.until_s, arr[tail] if tail < n else math.inf))
            continue
        rows = action.rows
        t0 = time.perf_counter()
        ex.run(pad(X[:rows], action.bucket))
        t1 = time.perf_counter()
        done = t1 - arr[head:head + rows]
        lat[head:head + rows] = done
        policy.observe(action, t1 - t0, done)
        run.dispatches.append(action)
        head += rows
        late += int(np.count_nonzero(done > SLO_S))
        if max_late is not None and late > max_late:
            run.aborted = True
            break
    return run


def _unit(seed: int, n: int) -> np.ndarray:
    """``n`` arrival times of a unit-rate Poisson process; ``unit[unit < rate * t] / rate`` is ``t`` seconds at ``rate``."""
    return np.cumsum(np.random.default_rng(seed).exponential(1.0, n))


def _poisson(schedule: Sequence[tuple[float, float]], seed: int) -> np.ndarray:
    """Arrival offsets of a piecewise-constant Poisson process: ``schedule`` is (rate, seconds) pairs."""
    rng = np.random.default_rng(seed)
    out, t0 = [], 0.0
    for rate, dur in schedule:
        k = int(rate * dur * 1.3 + 50)
        t = t0 + np.cumsum(rng.exponential(1.0 / rate, k))
        while t[-1] < t0 + dur:
            t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, k))])
        out.append(t[t < t0 + dur])
        t0 += dur
    return np.concatenate(out)


# -- capacity ------------------------------------------------------------------
def _capacities(ex: _Executor, factories: dict[str, Factory], X: np.ndarray, *, his: dict[str, float], steps: int,
                hold_s: float, unit: np.ndarray, say: Callable[[str], None]) -> dict[str, list[tuple[float, float | None, bool]]]:
    """Bisection on [0, hi] rows/s per policy, interleaved: step k of every policy runs before step k + 1 of any,
    in an order rotated each round, so a slow spell of the machine hits every policy alike.

    ``unit`` is a unit-rate arrival process: every probe at a given rate sees the same arrival times.
    Returns each policy's probes (rate, p99 ms or None if aborted, passed); its capacity is the highest passing rate.
    """
    bounds = {name: (0.0, his[name]) for name in factories}
    points: dict[str, list[tuple[float, float | None, bool]]] = {name: [] for name in factories}
    names = list(factories)
    for k in range(steps):
        for name in names[k % len(names):] + names[:k % len(names)]:
            lo, hi = bounds[name]
            rate = (lo + hi) / 2
            arrivals = unit[unit < rate * hold_s] / rate
            run = _open_loop(ex, factories[name](), arrivals, X, max_late=int(0.01 * len(arrivals)))
            ok = not run.aborted and run.p99 <= SLO_S
            points[name].append((round(rate, 1), None if run.aborted else round(run.p99 * 1e3, 2), ok))
            bounds[name] = (rate, hi) if ok else (lo, rate)
        say(f"  round {k + 1}/{steps} done")
    return points


def _max_passing(points: list[tuple[float, float | None, bool]]) -> float:
    return max((r for r, _, ok in points if ok), default=0.0)


def _walk_line(name: str, rate: float, walked: Confirmation) -> str:
    """One policy's walk for the log: its capacity, then each rate with o/x per arrival sequence."""
    return f"  {name:<20} {rate:>8,.0f} rows/s   (" + ", ".join(
        f"{r:,.0f}:{''.join('x' if p is None or p > SLO_S * 1e3 else 'o' for p in p99s)}" for r, p99s, _ in walked) + ")"


def _capped(walks: dict[str, Confirmation]) -> list[str]:
    """The policies whose walk ended on a pass at its highest rate (out of moves): capacity at least that."""
    return [n for n, pts in walks.items() if pts and max(pts, key=lambda p: p[0])[2]]


Confirmation = list[tuple[float, list[float | None], bool]]  # (rate, p99 ms per repeat or None if stopped early, passed)


def _probe_rate(ex: _Executor, factories: dict[str, Factory], X: np.ndarray, rate: float, *, repeats: int,
                hold_s: float, units: Sequence[np.ndarray]) -> dict[str, tuple[list[float | None], bool]]:
    """Each policy at ``rate`` on arrival sequences ``units[j]`` (scaled), until its majority of ``repeats`` is
    decided: (p99 ms per sequence, None where the probe stopped early; passed). With several policies,
    sequence ``j`` runs for each back to back, in an order that alternates with ``j``."""
    need, names = repeats // 2 + 1, list(factories)
    p99s: dict[str, list[float | None]] = {n: [] for n in names}
    passed = dict.fromkeys(names, 0)
    for j, unit in enumerate(units[:repeats]):
        arrivals = unit[unit < rate * hold_s] / rate
        for name in names if j % 2 == 0 else names[::-1]:
            if passed[name] >= need or len(p99s[name]) - passed[name] >= need:
                continue  # decided
            run = _open_loop(ex, factories[name](), arrivals, X, max_late=int(0.01 * len(arrivals)))
            p99s[name].append(None if run.aborted else round(run.p99 * 1e3, 2))
            passed[name] += not run.aborted and run.p99 <= SLO_S
    return {n: (p99s[n], passed[n] >= need) for n in names}


def _confirm(ex: _Executor, factories: dict[str, Factory], X: np.ndarray, *, starts: dict[str, float],
             anchors: dict[str, float], repeats: int, max_moves: int, hold_s: float, units: Sequence[np.ndarray],
             say: Callable[[str], None]) -> tuple[dict[str, float], dict[str, Confirmation]]:
    """Confirm each policy's bisection capacity on the grid ``anchor * (1 + CONFIRM_STEP) ** k``.

    At each rate a policy runs up to ``repeats`` probes (arrival sequence ``j`` is ``units[j]`` scaled, the
    same for every policy: paired) and passes on a majority (it stops once the majority is decided). From
    the grid rate nearest its start it moves up while it passes and down while it fails, at most
    ``max_moves`` times up (three times as many down); rounds are interleaved across policies like the
    bisection. Returns each policy's confirmed capacity (the highest rate that passed; 0 if none did) and
    its probes.
    """
    ratio = 1.0 + CONFIRM_STEP
    walk = {n: round(math.log(starts[n] / anchors[n]) / math.log(ratio)) for n in factories if starts[n] > 0}
    going: dict[str, int] = {}  # +1 up, -1 down once the first rate is decided
    best = {n: 0.0 for n in factories}
    points: dict[str, Confirmation] = {n: [] for n in factories}
    names, moves = list(walk), dict.fromkeys(walk, 0)
    for rnd in range(3 * max_moves + 1):
        active = [n for n in names if n in walk]
        if not active:
            break
        for name in active[rnd % len(active):] + active[:rnd % len(active)]:
            rate = anchors[name] * ratio ** walk[name]
            p99s, ok = _probe_rate(ex, {name: factories[name]}, X, rate, repeats=repeats, hold_s=hold_s,
                                   units=units)[name]
            points[name].append((round(rate, 1), p99s, ok))
            if ok:
                best[name] = max(best[name], rate)
            step = going.setdefault(name, 1 if ok else -1)
            moves[name] += 1
            # decided: passed on the way down, failed on the way up; or out of moves (up: max_moves; down: 3 times
            # as many, so a lucky bisection result still ends at a rate that passes)
            if (step > 0) != ok or moves[name] > (max_moves if step > 0 else 3 * max_moves):
                del walk[name]
            else:
                walk[name] += step
        say(f"  confirmation round {rnd + 1} done ({len(active)} policies)")
    return best, points


def _head_to_head(ex: _Executor, pair: dict[str, Factory], X: np.ndarray, *, start: float, anchor: float,
                  repeats: int, max_moves: int, hold_s: float, units: Sequence[np.ndarray],
                  say: Callable[[str], None]) -> tuple[dict[str, float], dict[str, Confirmation]]:
    """Two policies on one walk of the grid ``anchor * (1 + CONFIRM_STEP) ** k``, paired in time and in arrivals.

    At each rate both run sequence ``j`` back to back (the order alternating with ``j``) until each one's
    majority of ``repeats`` is decided. From the grid rate nearest ``start`` the walk goes up while either
    passes (at most ``max_moves``), and down while either has not passed yet (at most three times as many);
    an upward walk that leaves one policy without a pass then goes down from below ``start`` for it. Each
    policy's capacity is the highest rate it passed; both were measured at the same rates, minutes apart
    at most, so a drift of the machine hits both.
    """
    ratio = 1.0 + CONFIRM_STEP
    k0 = round(math.log(start / anchor) / math.log(ratio))
    best = dict.fromkeys(pair, 0.0)
    points: dict[str, Confirmation] = {n: [] for n in pair}

    def probe(k: int) -> dict[str, bool]:
        rate = anchor * ratio ** k
        out = {}
        for name, (p99s, ok) in _probe_rate(ex, pair, X, rate, repeats=repeats, hold_s=hold_s, units=units).items():
            out[name] = ok
            points[name].append((round(rate, 1), p99s, ok))
            if ok:
                best[name] = max(best[name], rate)
        say(f"  head to head at {rate:,.0f} rows/s: " + ", ".join(f"{n} {'passed' if ok else 'failed'}"
                                                                for n, ok in out.items()))
        return out

    k = k0
    if any(probe(k).values()):
        for _ in range(max_moves):
            k += 1
            if not any(probe(k).values()):
                break
        k = k0
    for _ in range(3 * max_moves):
        if all(best.values()):
            break
        k -= 1
        probe(k)
    return best, points


# -- time series -----------------------------------------------------------------
def _windows(run: _Run, total_s: float) -> list[float]:
    """p99 (ms) of the rows that arrived in each ``WINDOW_S`` window (inf if one was never served)."""
    idx = (run.arrivals // WINDOW_S).astype(int)
    out = []
    for w in range(math.ceil(total_s / WINDOW_S - 1e-9)):
        sel = run.latency[idx == w]
        out.append(float(np.percentile(sel, 99)) * 1e3 if len(sel) else 0.0)
    return out


def _violations(p99s: Sequence[float], changes: Sequence[float]) -> tuple[float, float, list[int]]:
    """(seconds of windows over the SLO, the same outside ``TRANSIENT_S`` after each change, windows per phase that fail outside it)."""
    bounds = [0.0, *changes, len(p99s) * WINDOW_S]
    over = [i for i, p in enumerate(p99s) if p > SLO_S * 1e3]
    outside = [i for i in over if not any(c <= i * WINDOW_S < c + TRANSIENT_S for c in changes)]
    per_phase = [sum(1 for i in outside if bounds[k] <= i * WINDOW_S < bounds[k + 1]) for k in range(len(bounds) - 1)]
    return len(over) * WINDOW_S, len(outside) * WINDOW_S, per_phase


def _series(ex: _Executor, factory: Factory, X: np.ndarray, schedule: list[tuple[float, float]], seed: int) -> dict[str, Any]:
    run = _open_loop(ex, factory(), _poisson(schedule, seed), X, max_age_s=10.0)
    total = sum(d for _, d in schedule)
    changes = list(np.cumsum([d for _, d in schedule])[:-1])
    p99s = _windows(run, total)
    over, outside, per_phase = _violations(p99s, changes)
    return {"window_p99_ms": [round(p, 2) if math.isfinite(p) else None for p in p99s], "violation_s": over,
            "violation_s_outside_transient": outside, "phase_failed": [k > 0 for k in per_phase],
            "p99_ms": round(run.p99 * 1e3, 2) if math.isfinite(run.p99) else None, "aborted": run.aborted,
            "dispatch": _dispatch_summary(run)}


def _dispatch_summary(run: _Run) -> dict[str, Any]:
    ds = run.dispatches
    if not ds:
        return {"dispatches": 0}
    pred = np.array([d.predicted_s for d in ds])
    act = np.array([d.actual_s or 0.0 for d in ds])
    return {"dispatches": len(ds), "reasons": dict(Counter(d.reason.value for d in ds)),
            "mean_rows": round(float(np.mean([d.rows for d in ds])), 1),
            "mean_queue_wait_ms": round(float(np.mean([d.queue_wait_s for d in ds])) * 1e3, 2),
            "actual_over_predicted_p99_fraction": round(float(np.mean(act > pred)), 4),
            "median_predicted_over_actual": round(float(np.median(pred / act)), 3)}


# -- plots -----------------------------------------------------------------------
def _plot(result: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo_ms = result["slo_ms"]
    best, paths = result["best_static"], []
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, pts in result["capacity_points"].items():
        pts = sorted(pts)
        xs = [r for r, _, _ in pts]
        ys = [p if p is not None else slo_ms * 20 for _, p, _ in pts]
        style = ({"color": "black", "lw": 2.5} if name == "adaptive" else {"color": "tab:red", "lw": 2} if name == best
                 else {"color": "tab:gray", "lw": 1.5, "ls": ":"} if name == "none" else {"lw": 0.8, "alpha": 0.6})
        line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{name} ({result['max_rate_at_slo'][name]:,.0f}/s)", **style)
        confirmed = [(r, p) for r, p99s, _ in result["confirm_points"].get(name, []) for p in p99s]
        if confirmed:  # the confirmation's probes: hollow markers in the line's colour
            ax.scatter([r for r, _ in confirmed], [p if p is not None else slo_ms * 20 for _, p in confirmed],
                       s=14, facecolors="none", edgecolors=line.get_color(), lw=0.8)
    ax.axhline(slo_ms, color="tab:red", ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="offered rate (rows/s, Poisson)", ylabel="p99 latency (ms; aborted runs on top)",
           title=f"p99 vs rate, SLO {slo_ms:g} ms (legend: confirmed max rate at SLO; hollow: confirmation probes)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(str(out_dir / "batching-capacity.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 1, figsize=(9, 7))
    for ax, key in zip(axes, ("step", "burst"), strict=True):
        part = result[key]
        for name, s in part["policies"].items():
            ys = [p if p is not None else float("nan") for p in s["window_p99_ms"]]
            xs = [(i + 0.5) * WINDOW_S for i in range(len(ys))]
            style = ({"color": "black", "lw": 2.5} if name == "adaptive" else {"color": "tab:red", "lw": 2} if name == best
                     else {"lw": 0.7, "alpha": 0.5})
            ax.plot(xs, ys, label=name, **style)
        for c in part["changes_s"]:
            ax.axvspan(c, c + TRANSIENT_S, color="0.9")
        ax.axhline(slo_ms, color="tab:red", ls="--", lw=1)
        ax.set(yscale="log", xlabel="seconds", ylabel=f"p99 per {WINDOW_S:g} s window (ms)",
               title=f"{key}: rates {', '.join(f'{r:,.0f}' for r in part['rates'])} rows/s (grey: {TRANSIENT_S:g} s transient)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    paths.append(str(out_dir / "batching-step.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _static_factory(rows: int, wait: float, samples: dict[int, list[float]]) -> Factory:
    return lambda: StaticPolicy(rows, wait, buckets=BUCKETS, service=_seeded(samples, BUCKETS))


# -- the benchmark -----------------------------------------------------------------
def run_batching_bench(*, quick: bool, out_dir: Path, say: Callable[[str], None], provider: str = "cpu",
                       probes: int | None = None, probe_s: float | None = None,
                       phase_s: float | None = None) -> dict[str, Any]:
    """Run the benchmark; return the JSON-able result; PNG plots go to ``out_dir``.

    ``provider``: ``cpu``, ``cuda`` (an error where the CUDA provider cannot load) or ``auto``.
    ``probes``, ``probe_s``, ``phase_s`` override the bisection steps, each probe's length and each
    load-step phase's length (quick: 4, 1 s, 2.5 s; full: 6, 4 s, 10 s), for a run that must fit a
    time budget (a lent GPU). The confirmation probes as long as the bisection, up to 3 times per
    rate, at most 4 moves (quick: 2). The full run steps every static setting, quick only the best.
    """
    steps, hold, phase, reps, moves = (4, 1.0, 2.5, 8, 2) if quick else (6, 4.0, 10.0, 30, 4)
    return _bench(steps=probes or steps, hold_s=probe_s or hold, phase_s=phase_s or phase, reps=reps,
                  all_static_step=not quick, out_dir=out_dir, say=say, quick=quick, provider=provider,
                  confirm_moves=moves)


@dataclass
class _Capacity:
    """The capacity stage's outcome: bisection, confirmation and head to head."""

    points: dict[str, list[tuple[float, float | None, bool]]]  # the bisection's probes per policy
    bisected: dict[str, float]
    max_rate: dict[str, float]  # confirmed
    confirm: dict[str, Confirmation]
    best: str  # the best static setting on the confirmation
    h2h_rate: dict[str, float]
    h2h: dict[str, Confirmation]


def _measure_capacity(ex: _Executor, factories: dict[str, Factory], X: np.ndarray, curve: dict[int, dict[str, float]],
                      *, steps: int, hold_s: float, confirm_repeats: int, confirm_moves: int, h2h_repeats: int,
                      say: Callable[[str], None]) -> _Capacity:
    """Bisection, then each policy's confirmation, then adaptive and the best static setting head to head."""
    # one probe grid for every batching policy (the same rates, the same arrival times), its own for `none`
    top = 1.05 * max(c["rows_per_s"] for c in curve.values())
    his = {name: 1.05 * curve[1]["rows_per_s"] if name == "none" else top for name in factories}
    unit = _unit(7, int(1.3 * hold_s * max(his.values()) + 1_000))
    say(f"capacity at p99 <= {SLO_S * 1e3:g} ms: bisection, {steps} steps of {hold_s:g} s per policy, interleaved")
    points = _capacities(ex, factories, X, his=his, steps=steps, hold_s=hold_s, unit=unit, say=say)
    bisected = {name: _max_passing(p) for name, p in points.items()}
    for name, pts in points.items():
        say(f"  {name:<20} {bisected[name]:>8,.0f} rows/s   (" + ", ".join(
            f"{r:,.0f}:{'ok' if ok else 'x'}" for r, _, ok in pts) + ")")
    say(f"confirmation: a grid {CONFIRM_STEP:.1%} apart from each result, up to {confirm_repeats} fresh arrival "
        f"sequences per rate (majority), at most {confirm_moves} moves")
    units = [_unit(101 + j, len(unit)) for j in range(confirm_repeats)]
    max_rate, confirm = _confirm(ex, factories, X, starts=bisected, anchors=his, repeats=confirm_repeats,
                                 max_moves=confirm_moves, hold_s=hold_s, units=units, say=say)
    for name, walked in confirm.items():
        say(_walk_line(name, max_rate[name], walked))
    best = max((n for n in factories if n.startswith("static")), key=lambda n: max_rate[n])
    # The best of nine confirmed statics is still the luckiest of nine noisy walks: selected on these
    # probes, it must be measured on others. Adaptive and it, paired, on fresh sequences, from the lower
    # of their two results, 5 sequences per rate.
    pair = {"adaptive": factories["adaptive"], best: factories[best]}
    low = min(max_rate["adaptive"], max_rate[best])
    say(f"head to head: adaptive and {best}, from {low:,.0f} rows/s, up to {h2h_repeats} fresh sequences per rate")
    h2h_units = [_unit(201 + j, len(unit)) for j in range(h2h_repeats)]
    h2h_rate, h2h = _head_to_head(ex, pair, X, start=low, anchor=his[best], repeats=h2h_repeats,
                                  max_moves=confirm_moves, hold_s=hold_s, units=h2h_units, say=say) \
        if low > 0 else (dict.fromkeys(pair, 0.0), {n: [] for n in pair})
    for name, walked in h2h.items():
        say(_walk_line(name, h2h_rate[name], walked))
    if capped := _capped(h2h):
        say(f"  out of moves on a pass (capacity at least the figure): {', '.join(capped)}")
    return _Capacity(points, bisected, max_rate, confirm, best, h2h_rate, h2h)


def _load_series(ex: _Executor, factories: dict[str, Factory], X: np.ndarray, *, base: float, best: str,
                 step_names: Sequence[str], phase_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """The load step (10 % -> 90 % -> 10 % of ``base``) for ``step_names`` and the burst for adaptive and ``best``."""
    step_rates = [0.1 * base, 0.9 * base, 0.1 * base]
    step = {}
    for name in step_names:
        step[name] = _series(ex, factories[name], X, [(r, phase_s) for r in step_rates], seed=11)
        say(f"step {name:<20} violations {step[name]['violation_s']:4.1f} s "
            f"({step[name]['violation_s_outside_transient']:4.1f} s outside transients), "
            f"phases failed {step[name]['phase_failed']}")
    burst_sched = [(0.3 * base, 0.4 * phase_s), (1.5 * base, 0.5), (0.3 * base, 0.8 * phase_s)]
    burst = {}
    for name in ("adaptive", best):
        burst[name] = _series(ex, factories[name], X, burst_sched, seed=13)
        say(f"burst {name:<20} violations {burst[name]['violation_s']:4.1f} s, p99 {burst[name]['p99_ms']} ms")
    return {
        "step": {"rates": [round(r, 1) for r in step_rates], "phase_s": phase_s, "window_s": WINDOW_S,
                 "changes_s": [phase_s, 2 * phase_s], "policies": step},
        "burst": {"rates": [round(r, 1) for r, _ in burst_sched], "durations_s": [d for _, d in burst_sched],
                  "changes_s": [0.4 * phase_s, 0.4 * phase_s + 0.5], "window_s": WINDOW_S, "policies": burst},
    }


def _bench(*, steps: int, hold_s: float, phase_s: float, reps: int, all_static_step: bool, out_dir: Path,
           say: Callable[[str], None], quick: bool, grid: Sequence[tuple[int, float]] = STATIC_GRID,
           provider: str = "cpu", confirm_repeats: int = 3, confirm_moves: int = 4,
           h2h_repeats: int = 5) -> dict[str, Any]:
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    X = np.random.default_rng(1).standard_normal((MAX_ROWS, D_IN)).astype(np.float32)
    ex = _Executor(build_mlp(), provider)
    try:
        samples = _service_curve(ex, X, reps)
        curve = {b: {"mean_ms": round(float(np.mean(s)) * 1e3, 3), "p50_ms": round(float(np.median(s)) * 1e3, 3),
                     "p99_ms": round(float(np.percentile(s, 99)) * 1e3, 3),
                     "rows_per_s": round(b / float(np.mean(s)), 1)} for b, s in samples.items()}
        say(f"model: MLP {D_IN} -> {DEPTH} x {WIDTH} -> 1 on {ex.provider}, 1 intra-op thread; service time per batch:")
        for b, c in curve.items():
            say(f"  batch {b:>4}: mean {c['mean_ms']:7.2f} ms  p99 {c['p99_ms']:7.2f} ms  {c['rows_per_s']:>8,.0f} rows/s")

        factories: dict[str, Factory] = {"none": lambda: NoBatching(service=_seeded(samples, (1,)))}
        for rows, wait in grid:
            factories[StaticPolicy(rows, wait, buckets=BUCKETS).name] = _static_factory(rows, wait, samples)
        factories["adaptive"] = lambda: AdaptivePolicy(SLO_S, MAX_ROWS, BUCKETS, service=_seeded(samples, BUCKETS))
        capacity = _measure_capacity(ex, factories, X, curve, steps=steps, hold_s=hold_s,
                                     confirm_repeats=confirm_repeats, confirm_moves=confirm_moves,
                                     h2h_repeats=h2h_repeats, say=say)
        statics = [n for n in factories if n.startswith("static")]
        best = capacity.best
        base = capacity.h2h_rate["adaptive"] or capacity.max_rate["adaptive"]  # the load step's and the burst's 100 %
        load = _load_series(ex, factories, X, base=base, best=best, phase_s=phase_s, say=say,
                            step_names=["adaptive", *(statics if all_static_step else [best])])
    finally:
        ex.close()

    result = _summary(capacity, load, curve, statics=statics, all_static_step=all_static_step, quick=quick,
                      provider=ex.provider, steps=steps, hold_s=hold_s, confirm_repeats=confirm_repeats,
                      confirm_moves=confirm_moves, h2h_repeats=h2h_repeats)
    result["plots"] = _plot(result, out_dir)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    say(f"adaptive {capacity.h2h_rate['adaptive']:,.0f} rows/s at the SLO head to head: "
        f"{result['adaptive_over_best_static']}x best static ({best}; "
        f"confirmation: {result['adaptive_over_best_static_confirmation']}x), "
        f"{result['adaptive_over_none']}x none; targets {result['targets']}; plots in {out_dir} ({result['wall_s']} s)")
    return result


def _summary(capacity: _Capacity, load: dict[str, Any], curve: dict[int, dict[str, float]], *, statics: list[str],
             all_static_step: bool, quick: bool, provider: str, steps: int, hold_s: float, confirm_repeats: int,
             confirm_moves: int, h2h_repeats: int) -> dict[str, Any]:
    """The JSON result (without the plots and the wall time)."""
    max_rate, h2h_rate, best = capacity.max_rate, capacity.h2h_rate, capacity.best
    cap = h2h_rate["adaptive"]
    step = load["step"]["policies"]
    static_fail = [any(step[n]["phase_failed"]) for n in statics if n in step]
    return {
        "bench": "batching",
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "onnxruntime": ort.__version__, "provider": provider},
        "model": {"inputs": D_IN, "hidden": [WIDTH] * DEPTH, "weights": D_IN * WIDTH + (DEPTH - 1) * WIDTH ** 2 + WIDTH},
        "slo_ms": SLO_S * 1e3,
        "buckets": list(BUCKETS),
        "max_rows": MAX_ROWS,
        "service_curve": {str(b): c for b, c in curve.items()},
        "search": {"method": "bisection on [0, hi], policies interleaved step by step; hi = 1.05 x the best rows/s "
                             "of any bucket (none: of batch 1); then a confirmation from each result on the grid "
                             "hi * (1 + step)^k, up while the majority of fresh arrival sequences passes, down while "
                             "it fails; the capacity is the highest rate confirmed; then adaptive and the best static "
                             "head to head, one walk probing both at every rate on other sequences",
                   "steps": steps, "hold_s": hold_s, "pass": "p99 <= SLO and every row served",
                   "confirm_step": CONFIRM_STEP, "confirm_repeats": confirm_repeats, "confirm_moves": confirm_moves},
        "max_rate_at_slo": {k: round(v, 1) for k, v in max_rate.items()},
        "max_rate_at_slo_bisection": {k: round(v, 1) for k, v in capacity.bisected.items()},
        "capacity_points": capacity.points,
        "confirm_points": capacity.confirm,
        "confirm_capped": _capped(capacity.confirm),
        "best_static": best,
        "head_to_head": {"policies": [*h2h_rate], "max_rate_at_slo": {k: round(v, 1) for k, v in h2h_rate.items()},
                         "repeats": h2h_repeats, "points": capacity.h2h, "capped": _capped(capacity.h2h)},
        "adaptive_over_best_static": round(cap / h2h_rate[best], 3) if h2h_rate[best] else None,
        "adaptive_over_best_static_confirmation": (round(max_rate["adaptive"] / max_rate[best], 3)
                                                   if max_rate[best] else None),
        "adaptive_over_none": round(max_rate["adaptive"] / max_rate["none"], 3) if max_rate["none"] else None,
        "step": load["step"],
        "step_violation_seconds": {n: s["violation_s"] for n, s in step.items()},
        "step_violation_seconds_outside_transient": {n: s["violation_s_outside_transient"] for n, s in step.items()},
        "burst": load["burst"],
        "targets": {
            "adaptive_max_rate>=best_static": cap >= h2h_rate[best],
            "adaptive_max_rate>=3x_none": max_rate["adaptive"] >= 3 * max_rate["none"],
            "adaptive_step_p99<=slo_outside_2s_transients": step["adaptive"]["violation_s_outside_transient"] == 0,
            "every_static_fails_a_step_phase": all(static_fail) if all_static_step else None,
        },
    }
