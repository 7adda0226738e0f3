"""The processes a chaos run owns and breaks: its broker, its Redis and its worker (``streaming chaos``).

The run starts its own Tansu broker and its own ``redis-server`` (the argv of
:mod:`streaming.infra.stack`, not its :class:`~streaming.infra.stack.Stack`: a chaos run restarts each
alone, on the same port) and supervises its worker the way systemd or Kubernetes would: a worker
that exits is started again at once (with a short backoff when it keeps failing), and one that
stops making progress is restarted by force (a liveness probe). Every start, exit and kill is
recorded with the worker's own log lines as evidence.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streaming.errors import UserError
from streaming.infra.processes import free_port, spawn, terminate, wait_for_port
from streaming.infra.stack import broker_argv
from streaming.worker.process import READY

__all__ = ["OwnBroker", "OwnRedis", "Supervisor", "WorkerStart"]

#: a worker log line worth quoting as evidence (its level is ERROR or CRITICAL)
_LOUD = re.compile(r"\[(CRITICAL|ERROR)\]")


class OwnBroker:
    """A Tansu broker on memory storage, restartable on the same port (a restart forgets every topic)."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.log = run_dir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = spawn(broker_argv(self.url), self.log, tie_to_parent=True)
        if not wait_for_port("127.0.0.1", self.port, 15.0, self.proc):
            self.stop()
            raise UserError(f"the chaos run's broker did not start on port {self.port}; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class OwnRedis:
    """A ``redis-server`` with an append-only file fsynced on every write, in the run directory.

    Stopped with SIGTERM and started again on the same port and directory, it comes back with every
    window, dedupe mark and feature-log entry it had: the outage tests the worker's pause and resume,
    not a Redis that loses its data (that would change the features by design, not by fault).
    """

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.dir = run_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = run_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def up(self) -> bool:
        return self.proc is not None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError("redis-server is not installed (apt-get install redis-server): the chaos run needs its own")
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--dir", str(self.dir)]
        self.proc = spawn(argv, self.log, tie_to_parent=True)
        if not wait_for_port("127.0.0.1", self.port, 15.0, self.proc):
            self.stop()
            raise UserError(f"the chaos run's redis-server did not start on port {self.port}; see {self.log}")

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs its append-only file and exits."""
        if self.proc is not None:
            terminate(self.proc.pid, timeout=10.0)
            self.proc.wait(timeout=10)
            self.proc = None


@dataclass
class WorkerStart:
    """One start of the worker and how it ended."""

    cause: str  # "first start", "sigkill", "exit 70", "stall: ..."
    at_s: float  # seconds into the run
    ready_s: float | None = None  # how long until its log said it was ready
    exit_code: int | None = None  # how this incarnation ended (negative: a signal)
    evidence: list[str] = field(default_factory=list)  # its last ERROR and CRITICAL log lines (up to 8)


class Supervisor:
    """Runs ``streaming worker`` and starts it again whenever it ends; never blocks the caller.

    :meth:`poll` (call it often) notices an exit, records it and starts the next incarnation, and
    notices readiness in the log. :meth:`kill` is the chaos: SIGKILL, then a start. :meth:`restart`
    is the liveness probe's: the harness decided the worker is stuck.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, t0: float) -> None:
        self.env = {**os.environ, **env, "STREAMING_LOG_LEVEL": "info"}
        self.log_path = log_path
        self.t0 = t0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[WorkerStart] = []
        self.kills = 0
        self._pos = 0  # how far the log has been scanned
        self._start_pos = 0  # where the current incarnation's log begins
        self._pending_cause = ""  # why the next start happens (after an exit, once the backoff is over)
        self._partial = b""
        self._started_at = 0.0
        self._backoff = 0.0
        self._next_start = 0.0
        self.ready = False
        self.ready_at = 0.0

    # -- the log
    def _scan(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        self._pos += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        current = self.starts[-1] if self.starts else None
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not self.ready and READY in line:
                self.ready = True
                self.ready_at = time.monotonic()
                if current is not None:
                    current.ready_s = round(self.ready_at - self._started_at, 2)
            elif current is not None and _LOUD.search(line):
                current.evidence = [*current.evidence[-7:], line.strip()[:400]]

    def tail(self, n: int = 12) -> list[str]:
        """The last ``n`` lines of the current incarnation's log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self._start_pos))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line.strip()[:400] for line in text.strip().splitlines()[-n:]]

    # -- the process
    def start(self, cause: str) -> None:
        self._scan()
        self._start_pos = self._pos
        self._started_at = time.monotonic()
        self.ready = False
        self.proc = spawn([sys.executable, "-m", "streaming", "worker"], self.log_path, tie_to_parent=True,
                          env=self.env)
        self.starts.append(WorkerStart(cause, round(self._started_at - self.t0, 2)))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def restarts(self) -> int:
        return max(0, len(self.starts) - 1)

    def since_start(self) -> float:
        return time.monotonic() - self._started_at

    def poll(self) -> None:
        """Notice readiness and exits; start the worker again after an exit (backing off while it keeps failing)."""
        self._scan()
        if self.proc is None:
            if time.monotonic() >= self._next_start and self._pending_cause:
                self.start(self._pending_cause)
                self._pending_cause = ""
            return
        code = self.proc.poll()
        if code is None:
            if self.ready and self.since_start() > 60:
                self._backoff = 0.0  # it ran a while: the next failure restarts at once
            return
        self._ended(code)
        # a worker that failed before it was ready waits a little before the next try (systemd's RestartSec)
        self._backoff = 0.0 if self.starts[-1].ready_s is not None else min(10.0, max(1.0, self._backoff * 2))
        self._next_start = time.monotonic() + self._backoff
        self._pending_cause = f"exit {code}"
        self.proc = None

    def _ended(self, code: int) -> None:
        self._scan()
        if self.starts:
            self.starts[-1].exit_code = code
        self.ready = False

    def kill(self) -> None:
        """SIGKILL (no clean stop, no final commit), then start the next incarnation at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.kills += 1
        if self.proc is not None:
            self._ended(self.proc.returncode)
            self.proc = None
        self.start("sigkill")

    def restart(self, cause: str) -> None:
        """The liveness probe's restart: SIGTERM (SIGKILL after 5 s), then start again."""
        if self.proc is not None:
            terminate(self.proc.pid, timeout=5.0)
            self.proc.wait(timeout=10)
            self._ended(self.proc.returncode)
            self.proc = None
        self.start(cause)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if self.ready:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> int | None:
        """A clean stop (SIGTERM; SIGKILL after 20 s)."""
        self._pending_cause = ""
        if self.proc is None:
            return None
        terminate(self.proc.pid, timeout=20.0)
        code = self.proc.wait(timeout=10)
        self._ended(code)
        self.proc = None
        return code
