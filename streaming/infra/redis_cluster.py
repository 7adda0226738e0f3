"""Private local Redis servers: one ``redis-server``, or an n-node Redis Cluster, on free ports in a tmp dir.

For ``streaming bench features --cluster`` and the Redis Cluster tests. Nothing here touches a Redis that this
process did not start: every ``redis-server`` is started here (tied to this process: it dies with it) and
stopped by its own pid when the context ends.

Used as ``with local_cluster(3) as cluster:``, which gives ``cluster.url`` (a node's URL, for
``Settings(redis_cluster=True)``) and ``cluster.ports``; ``tests/features/test_redis_cluster.py`` runs it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streaming.errors import UserError
from streaming.infra.processes import free_port, spawn, terminate, wait_for_port

__all__ = ["LocalCluster", "LocalRedis", "cluster_port", "create_cluster", "have_redis_binaries", "local_cluster",
           "local_redis", "start_redis_server", "stop_redis_server"]

#: the cluster bus of a node listens on its port + this (Redis's fixed offset)
BUS_OFFSET = 10000


def have_redis_binaries() -> bool:
    """Whether ``redis-server`` and ``redis-cli`` are on the PATH."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def _need_binaries() -> None:
    if not have_redis_binaries():
        raise UserError("redis-server and redis-cli are needed for a private local Redis (Cluster): "
                        "apt-get install redis-server")


def start_redis_server(work: Path, port: int, *args: str, tls: bool = False,
                       tie_to_parent: bool = True) -> subprocess.Popen[bytes]:
    """``redis-server`` on 127.0.0.1:``port`` (the TLS port when ``tls``: the plain port is then off), working
    directory and log (``redis.log``) in ``work``, no persistence, extra ``args``; returns once it listens."""
    work.mkdir(parents=True, exist_ok=True)
    ports = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    argv = ["redis-server", *ports, "--bind", "127.0.0.1", "--dir", str(work), "--save", "", "--appendonly", "no",
            "--logfile", "", *args]
    log = work / "redis.log"
    proc = spawn(argv, log, tie_to_parent=tie_to_parent)
    if not (wait_for_port("127.0.0.1", port, 10.0, proc) and _ready(proc, log, 10.0)):
        stop_redis_server(proc)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise UserError(f"redis-server on port {port} did not start (log {log}): {tail}")
    return proc


def _ready(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> bool:
    """The server's log says it accepts connections (an open port alone could be another process's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if log.exists() and "Ready to accept connections" in log.read_text(errors="replace"):
            return True
        time.sleep(0.02)
    return False


def stop_redis_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (SIGKILL after 3 s) to this one process, by its pid, and reap it."""
    terminate(proc.pid, timeout=3.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: Sequence[int] = ()) -> int:
    """A free port whose cluster bus port (+10000) is free as well."""
    for _ in range(200):
        p = free_port()
        if p + BUS_OFFSET < 65536 and p not in taken and _bindable(p + BUS_OFFSET):
            return p
        p = 20000 + (p % 30000)
        if p not in taken and _bindable(p) and _bindable(p + BUS_OFFSET):
            return p
    raise UserError("no free port pair (port and port + 10000) for a Redis Cluster node")


def _cli(password: str | None) -> list[str]:
    return ["redis-cli", *(["-a", password, "--no-auth-warning"] if password else [])]


def create_cluster(ports: Sequence[int], password: str | None = None, timeout_s: float = 15.0) -> None:
    """``redis-cli --cluster create`` over ``ports`` (no replicas), then wait until every node says
    ``cluster_state:ok``."""
    cli = _cli(password)
    done = subprocess.run([*cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas",
                           "0", "--cluster-yes"], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise UserError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-2000:]}")
    deadline = time.monotonic() + timeout_s
    for p in ports:
        while True:
            out = subprocess.run([*cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True,
                                 timeout=5).stdout
            if "cluster_state:ok" in out:
                break
            if time.monotonic() > deadline:
                raise UserError(f"Redis Cluster node 127.0.0.1:{p} is not ok after {timeout_s:.0f} s: {out[:500]}")
            time.sleep(0.05)


@dataclass
class LocalRedis:
    """One private ``redis-server``."""

    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class LocalCluster:
    """A private local Redis Cluster: ``len(ports)`` primaries, no replicas, slots spread evenly."""

    ports: tuple[int, ...]
    root: Path
    password: str | None = field(default=None, repr=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        """A URL for a cluster client (with ``STREAMING_REDIS_CLUSTER``): the first node; the others are found."""
        return self.node_urls[0]

    @property
    def node_urls(self) -> list[str]:
        """Every node's URL (for a plain client on one node: ``INFO``, ``DBSIZE``)."""
        return [f"redis://127.0.0.1:{p}/0" for p in self.ports]


@contextlib.contextmanager
def _root_dir(root: Path | None, prefix: str) -> Iterator[Path]:
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def local_redis(root: Path | None = None, *, password: str | None = None,
                extra_args: Sequence[str] = ()) -> Iterator[LocalRedis]:
    """One private ``redis-server`` on a free port, its files under ``root`` (default: a tmp dir, removed at the
    end), stopped when the context ends."""
    _need_binaries()
    with _root_dir(root, "redis-") as base:
        auth = ["--requirepass", password] if password else []
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            port = free_port()
            try:
                proc = start_redis_server(base / "single", port, *auth, *extra_args)
                break
            except UserError:
                if attempt == 2:
                    raise
        try:
            yield LocalRedis(port, base, proc)
        finally:
            stop_redis_server(proc)


@contextlib.contextmanager
def local_cluster(n: int = 3, root: Path | None = None, *, password: str | None = None, node_timeout_ms: int = 5000,
                  extra_args: Sequence[str] = (), timeout_s: float = 15.0) -> Iterator[LocalCluster]:
    """A private ``n``-node Redis Cluster (``redis-server --cluster-enabled yes``, n times, then ``redis-cli --cluster
    create … --cluster-replicas 0 --cluster-yes``; waits for ``cluster_state:ok`` on every node), on free ports
    (and free bus ports), its files under ``root`` (default: a tmp dir, removed at the end). With ``password``
    every node wants it (``--requirepass`` and ``--masterauth``). Every node is stopped when the context ends,
    also when the cluster could not be formed."""
    if n < 3:
        raise ValueError("a Redis Cluster needs at least 3 primaries")
    _need_binaries()
    with _root_dir(root, "redis-cluster-") as base:
        cluster = LocalCluster((), base, password)
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        try:
            ports: list[int] = []
            for i in range(n):
                for attempt in range(3):  # a free port can be taken between the probe and the bind
                    p = cluster_port(ports)
                    work = base / f"node{i}"
                    try:
                        proc = start_redis_server(work, p, "--cluster-enabled", "yes", "--cluster-config-file",
                                                  str(work / "nodes.conf"), "--cluster-node-timeout",
                                                  str(node_timeout_ms), *auth, *extra_args)
                        break
                    except UserError:
                        if attempt == 2:
                            raise
                cluster.procs.append(proc)
                ports.append(p)
            cluster.ports = tuple(ports)
            create_cluster(ports, password, timeout_s)
            yield cluster
        finally:
            for proc in cluster.procs:
                stop_redis_server(proc)
            cluster.procs.clear()
