"""Running ``streaming worker`` as a child process (the demo and the integration tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from streaming.errors import UserError
from streaming.infra.processes import spawn, terminate

__all__ = ["WorkerProcess"]

READY = "[^Worker]: Ready"


class WorkerProcess:
    """A worker child with its own environment; dies with its parent."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env, "STREAMING_LOG_LEVEL": "info"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, ready_timeout: float = 90.0) -> WorkerProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = spawn([sys.executable, "-m", "streaming", "worker"], self.log_path, tie_to_parent=True, env=self.env)
        self.log_path.with_suffix(".pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the worker exited with {self.proc.returncode}: {self.tail(3)}")
            if READY in self._log():
                return self
            time.sleep(0.1)
        self.stop()
        raise UserError(f"the worker was not ready after {ready_timeout:.0f}s; see {self.log_path}")

    def _log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 20) -> str:
        return " | ".join(self._log().strip().splitlines()[-n:])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (Faust stops cleanly and commits acked offsets), SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        terminate(self.proc.pid, timeout=timeout)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing committed since the last commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
