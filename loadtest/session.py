"""Running load tests against a real worker on fresh topics, and the capacity search."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loadtest.report import plot_capacity, write_report
from loadtest.runner import run_load
from loadtest.schedule import Phase, schedule
from streaming.demo import count_records
from streaming.events.topics import ensure_topics
from streaming.infra.processes import free_port
from streaming.infra.stack import Stack, check_broker, resolve_endpoints
from streaming.settings import Settings
from streaming.worker.process import WorkerProcess
from streaming.worker.runtime import load_components

__all__ = ["LoadSession"]


class LoadSession:
    """The embedded stack (started when no broker is configured), and one fresh worker per run.

    Each run gets fresh topics and a fresh consumer group: Tansu slows as stored batches pile up
    (docs/benchmarks.md), so runs must not inherit earlier runs' data.
    """

    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        _, self.codec, self.pipeline = load_components(settings)
        self._stack: Stack | None = None

    def __enter__(self) -> LoadSession:
        if not self.settings.broker_url:
            stack = Stack(self.settings, tie_to_parent=True)
            broker = stack.state.services.get("broker")
            if broker is None or not broker.running:
                stack.up()
                self._stack = stack
        self.bootstrap, self.redis_url = resolve_endpoints(self.settings)
        check_broker(self.bootstrap)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.down()

    @contextlib.contextmanager
    def worker(self) -> Iterator[dict[str, str]]:
        tag = uuid.uuid4().hex[:8]
        topics = {"STREAMING_TOPIC_EVENTS": f"events-lt-{tag}", "STREAMING_TOPIC_PREDICTIONS": f"predictions-lt-{tag}",
                  "STREAMING_TOPIC_LABELS": f"labels-lt-{tag}", "STREAMING_TOPIC_RETRAIN": f"retrain-lt-{tag}",
                  "STREAMING_TOPIC_DLQ": f"dlq-lt-{tag}"}
        ensure_topics(self.bootstrap, topics.values(), self.settings.topic_partitions)
        env = {**topics, "STREAMING_BROKER_URL": self.bootstrap, "STREAMING_REDIS_URL": self.redis_url,
               "STREAMING_APP_ID": f"loadtest-{tag}", "STREAMING_METRICS_PORT": str(free_port()),
               "STREAMING_RUN_DIR": str(self.settings.run_path)}
        w = WorkerProcess(env, self.settings.run_path / f"loadtest-worker-{tag}.log").start()
        try:
            yield env
        finally:
            w.stop()

    def run(self, *, profile: str, rate: float, duration_s: float, slo_p99_ms: float, linger_ms: float = 20.0,
            steps: list[Phase] | None = None, replay: list[float] | None = None, seed: int = 0,
            report_dir: Path | None = None, show_progress: bool = True) -> dict[str, Any]:
        offsets = list(schedule(profile, rate=rate, duration_s=duration_s, seed=seed, steps=steps, replay=replay))
        if profile == "step" and steps:
            duration_s = sum(p.duration_s for p in steps)
        target = len(offsets) / duration_s if duration_s else 0.0
        with self.worker() as env:
            bar = tqdm(total=len(offsets), unit="ev", desc=f"{profile} {target:,.0f}/s", disable=not show_progress,
                       dynamic_ncols=True, mininterval=0.5)

            def progress(sent: int, total: int, got: int) -> None:
                bar.n = sent
                bar.set_postfix_str(f"predictions {got}")

            started_ms = int(time.time() * 1000)
            result = run_load(bootstrap=self.bootstrap, events_topic=env["STREAMING_TOPIC_EVENTS"],
                              predictions_topic=env["STREAMING_TOPIC_PREDICTIONS"], pipeline=self.pipeline,
                              codec=self.codec, offsets=offsets, target_rate=target, linger_ms=linger_ms,
                              seed=seed, progress=progress)
            bar.close()
            result.dead_letters = count_records(self.bootstrap, env["STREAMING_TOPIC_DLQ"], started_ms)
        summary = result.summary(slo_p99_ms)
        summary.update({"profile": profile, "duration_s": duration_s, "generator_linger_ms": linger_ms,
                        "partitions": self.settings.topic_partitions})
        if report_dir is not None:
            path = write_report(report_dir, result, summary, f"Load test: {profile} at {target:,.0f} events/s")
            summary["report"] = str(path)
        return summary

    def capacity(self, *, slo_p99_ms: float, step_s: float, start_rate: float, max_rate: float,
                 report_dir: Path | None, refine: int = 2) -> dict[str, Any]:
        """Highest Poisson rate with p99 <= SLO, nothing missing, and the generator keeping up."""
        curve: list[dict[str, Any]] = []

        def probe(rate: float) -> bool:
            s = self.run(profile="poisson", rate=rate, duration_s=step_s, slo_p99_ms=slo_p99_ms, show_progress=False)
            curve.append(s)
            self.say(f"capacity: {rate:>8,.0f}/s  achieved {s['achieved_rate']:>8,.0f}/s  p99 {s['p99_ms']:>8.1f} ms  "
                     f"missing {s['missing']}  {'pass' if s['slo_pass'] else 'FAIL'}")
            return bool(s["slo_pass"])

        good, bad = 0.0, None
        rate = start_rate
        while rate <= max_rate:
            if probe(rate):
                good, rate = rate, rate * 1.5
            else:
                bad = rate
                break
        for _ in range(refine if bad is not None else 0):
            mid = (good + bad) / 2 if good else bad / 2  # type: ignore[operator]
            if probe(mid):
                good = mid
            else:
                bad = mid
        out: dict[str, Any] = {
            "slo_p99_ms": slo_p99_ms,
            "max_rate_at_slo": round(good, 1),
            "first_failing_rate": None if bad is None else round(bad, 1),
            "step_duration_s": step_s,
            "curve": [{k: c[k] for k in ("target_rate", "achieved_rate", "p50_ms", "p99_ms", "p999_ms", "missing",
                                         "slo_pass")} for c in curve],
        }
        if report_dir is not None:
            out["plot"] = str(plot_capacity(report_dir, out["curve"], slo_p99_ms))
        return out
