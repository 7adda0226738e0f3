"""One chaos run: its processes, its traffic, its broker epochs, and the loop that drives them (``streaming chaos``)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

from loadtest.chaos_accounting import EpochReader, committed
from loadtest.chaos_faults import strike, watchdog
from loadtest.chaos_plan import ChaosAbort, ChaosPlan, fault_schedule
from loadtest.chaos_procs import OwnBroker, OwnRedis, Supervisor
from loadtest.chaos_summary import Epoch
from loadtest.chaos_traffic import HOSTILE_KINDS, HOSTILE_PREFIX, LabelQueue, Traffic, hostile_record
from streaming.inference.registry import ModelRegistry
from streaming.settings import Settings
from streaming.synthetic.registry import generator_for
from streaming.training.job import train_pipeline
from streaming.worker.runtime import load_components

__all__ = ["ChaosRun"]


class ChaosRun:
    """The state of one chaos run and its loop; the faults are in :mod:`loadtest.chaos_faults`."""

    def __init__(self, settings: Settings, plan: ChaosPlan, say: Callable[[str], None]) -> None:
        self.s = settings
        self.plan = plan
        self.say = say
        self.t0 = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = settings.run_path / f"chaos-{stamp}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _, self.codec, self.pipeline = load_components(settings)
        self.id_prefix = f"x{int(time.time())}-"
        self.prefix = f"chaos-{stamp}:{self.pipeline.name}:"
        self.broker = OwnBroker(self.run_dir)
        self.redis = OwnRedis(self.run_dir)
        self.sup: Supervisor | None = None
        self.reader: EpochReader | None = None
        self.traffic: Traffic | None = None
        self.epochs: list[Epoch] = []
        self.events: list[dict[str, Any]] = []
        self.labels = LabelQueue(plan.label_delay_s)
        self.rng = random.Random(plan.seed)
        self.seq = self.base = 0  # records sent (valid and hostile); those of the epochs before this one
        self.sent = self.hostile = 0
        self.shift_us = 0  # event times move on by the quiet moment's pause
        self.faults = fault_schedule(plan)
        self.stalls: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.redis_down_at = self.redis_down_until = 0.0
        self.redis_back_at = -1e9
        self.redis_target: int | None = None
        self.report: dict[str, Any] = {"redis_outages": 0, "redis_outage_s": 0.0, "redis_recovery_s": None,
                                       "broker_restarts": 0, "broker_recovery_s": None, "broker_topics_back_s": None,
                                       "broker_recovered_by": None, "kill_at_events": [],
                                       "redis_at_events": [], "broker_at_events": []}
        self.broker_restart_at: float | None = None
        self.phase = "starting"
        self.sending = True  # False at the quiet moment: no events, no labels
        self.progress = (0, time.monotonic())
        self._last_house = self._last_committed_check = self._bar_at = 0.0
        self.bar: Any = None

    @property
    def topics(self) -> tuple[str, str, str, str]:
        s = self.s
        return s.topic_events, s.topic_labels, s.topic_predictions, s.topic_dlq

    def now_s(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    # -- setup
    def start(self) -> None:
        self.broker.start()
        self.redis.start()
        s = self.s
        registry = ModelRegistry.from_settings(s, self.pipeline.name)
        if not registry.versions():
            self.say("no model yet: training the first one")
            train_pipeline(self.pipeline, registry, progress=self.say)
        env = {**{f"STREAMING_TOPIC_{k.upper()}": v for k, v in s.topics.items()},
               "STREAMING_BROKER_URL": self.broker.bootstrap, "STREAMING_REDIS_URL": self.redis.url,
               "STREAMING_METRICS_PORT": "0", "STREAMING_RUN_DIR": str(self.run_dir),
               "STREAMING_REDIS_PREFIX": self.prefix, "STREAMING_TOPIC_PARTITIONS": "1",
               "STREAMING_MODELS_DIR": str(s.path(s.models_dir).resolve()),
               "STREAMING_PIPELINE": str(s.path(s.pipeline).resolve()),
               "STREAMING_SCHEMAS_DIR": str(s.path(s.schemas_dir).resolve()), "STREAMING_APP_ID": s.app_id}
        self.sup = Supervisor(env, self.run_dir / "worker.log", self.t0)
        self.sup.start("first start")
        if not self.sup.wait_ready(120):
            raise ChaosAbort(f"the worker was not ready within 120 s: {' | '.join(self.sup.tail(5))}")
        self.say(f"broker {self.broker.bootstrap}, redis {self.redis.url}, worker ready after "
                 f"{self.sup.starts[0].ready_s}s; logs in {self.run_dir}")
        self.open_epoch()

    def open_epoch(self) -> None:
        self.epochs.append(Epoch())
        self.reader = EpochReader(self.broker.bootstrap, self.topics, self.codec, self.pipeline.event.schema,
                                  self.id_prefix)
        self.traffic = Traffic(self.broker.bootstrap, self.codec, self.pipeline, self.s.topic_events,
                               self.s.topic_labels)
        self.progress = (0, time.monotonic())

    def close_epoch(self) -> None:
        epoch = self.epochs[-1]
        if self.traffic is not None:
            self.traffic.flush()
            epoch.delivered = self.traffic.delivered
            ds = epoch.delivered.labels
            if ds:
                try:
                    done = committed(self.broker.bootstrap, self.s.app_id, self.s.topic_labels, sorted({p for p, _, _ in ds}))
                    epoch.labels_unprocessed = [eid for p, o, eid in ds if done.get(p, -1) <= o]
                except Exception as exc:
                    self.problems.append(f"the committed label offsets could not be read ({exc})")
            self.traffic.close()
            self.traffic = None
        if self.reader is not None:
            epoch.tally = self.reader.stop()
            self.reader = None
        self.base = self.seq

    # -- the loop's chores
    def accounted(self) -> int:
        return self.base + (self.reader.accounted if self.reader else 0)

    def outstanding(self) -> int:
        failed = len(self.traffic.delivered.events_failed) if self.traffic else 0
        return self.seq - failed - self.accounted()

    def labels_committed(self) -> bool:
        """Every label delivered in this epoch is below the worker group's committed offset (checked once a second)."""
        if self.traffic is None:
            return True
        if self.traffic.in_flight() or time.monotonic() - self._last_committed_check < 1.0:
            return False  # a label on its way may land past the offset checked
        if not self.traffic.delivered.labels:
            return True
        self._last_committed_check = time.monotonic()
        last: dict[int, int] = {}
        for p, o, _ in self.traffic.delivered.labels:
            last[p] = max(last.get(p, -1), o)
        try:
            done = committed(self.broker.bootstrap, self.s.app_id, self.s.topic_labels, list(last))
        except Exception:
            return False
        return all(done.get(p, -1) > o for p, o in last.items())

    def house(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_house < 0.02:
            return
        self._last_house = now
        assert self.sup is not None
        if self.traffic is not None:
            self.traffic.poll()
            for eid, y in self.labels.due(self.accounted()) if self.sending else ():
                self.traffic.send_label(eid, y)
        self.sup.poll()
        if not self.redis.up and now >= self.redis_down_until:
            self.redis.start()
            self.redis_back_at = now
            self.report["redis_outage_s"] = round(now - self.redis_down_at, 2)
            self.redis_target = self.seq
            self.say(f"redis back after {self.report['redis_outage_s']}s")
        if self.redis_target is not None and self.accounted() >= self.redis_target:
            self.report["redis_recovery_s"] = round(now - self.redis_back_at, 2)
            self.redis_target = None
        if self.broker_restart_at is not None and self.reader is not None and self.reader.accounted > 0:
            self.report["broker_recovery_s"] = round(now - self.broker_restart_at, 2)
            self.broker_restart_at = None
        watchdog(self, now)
        if self.bar is not None and now - self._bar_at >= 0.5:
            self._bar_at = now
            self.bar.n = self.sent
            self.bar.set_postfix_str(f"accounted {self.accounted()}/{self.seq}, kills {self.sup.kills}, "
                                     f"restarts {self.sup.restarts}, {self.phase}")

    # -- traffic
    def produce(self) -> None:
        plan, spec = self.plan, self.pipeline.event
        assert self.traffic is not None
        every = round(1 / plan.hostile_share) if plan.hostile_share > 0 else 0
        gen = generator_for(self.pipeline, rate=plan.rate, seed=plan.seed, start_us=time.time_ns() // 1000,
                            id_prefix=self.id_prefix)
        item = next(gen)
        self.phase = "events"
        while self.sent < plan.events:
            t_ev = int(item.event[spec.time_field]) + self.shift_us
            now_us = time.time_ns() // 1000
            if t_ev <= now_us:
                ev = {**item.event, spec.time_field: t_ev}
                self.traffic.send_event(ev)
                self.events.append(ev)
                self.epochs[-1].event_ids.append(str(ev[spec.id_field]))
                self.seq += 1
                self.sent += 1
                self.labels.add(self.seq, str(ev[spec.id_field]), item.label)
                item = next(gen)
                if every and self.sent % every == 0:
                    self.send_hostile(ev)
                self.house()
                strike(self)
                continue
            self.house()
            strike(self)
            time.sleep(min(0.01, (t_ev - now_us) / 1e6))

    def send_hostile(self, template: dict[str, Any]) -> None:
        assert self.traffic is not None
        kind = HOSTILE_KINDS[self.hostile % len(HOSTILE_KINDS)]
        marker = f"{HOSTILE_PREFIX}{self.hostile}-{kind}"
        self.traffic.send_hostile(hostile_record(kind, marker, template, self.codec, self.pipeline.event.schema,
                                                 self.rng), marker)
        self.epochs[-1].hostile[marker] = kind
        self.hostile += 1
        self.seq += 1

    def drain(self) -> None:
        """The faults not yet struck (one waits for a worker that is up), labels out, everything accounted for,
        every label committed (or ``drain_s`` gone since the last fault)."""
        assert self.traffic is not None and self.sup is not None
        self.phase = "draining"
        self.traffic.flush()
        deadline = time.monotonic() + self.plan.drain_s + self.plan.label_delay_s
        while self.faults or len(self.labels) or self.outstanding() > 0 or not self.labels_committed():
            if self.faults:
                strike(self)
                deadline = time.monotonic() + self.plan.drain_s + self.plan.label_delay_s
            if time.monotonic() > deadline:
                self.problems.append(f"the run did not drain within {self.plan.drain_s:g}s: {self.outstanding()} "
                                     f"records outstanding, {len(self.labels)} labels waiting")
                break
            self.house(force=True)
            time.sleep(0.05)
        code = self.sup.stop()
        if code not in (0, None):
            self.problems.append(f"the worker's clean stop ended with status {code}: {' | '.join(self.sup.tail(3))}")

    def stop_all(self) -> None:
        with contextlib.suppress(Exception):
            if self.reader is not None:
                self.reader.stop(timeout=15)
        with contextlib.suppress(Exception):
            if self.traffic is not None:
                self.traffic.close()
        with contextlib.suppress(Exception):
            if self.sup is not None:
                self.sup.stop()
        self.redis.stop()
        self.broker.stop()
