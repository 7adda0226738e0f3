"""Private redis-server processes for the Redis security and cluster tests: each on its own free port, in a tmp dir.

Nothing here touches the shared Redis on 6379; every process started is stopped by its own pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streaming.infra.processes import free_port, spawn, terminate, wait_for_port

__all__ = ["Certs", "RedisProcs", "cluster_port", "create_cluster", "make_certs", "needs_redis_server"]

needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                        reason="redis-server and redis-cli are not installed")


@dataclass
class RedisProcs:
    """The redis-server processes a test module started (stopped together by :meth:`stop`)."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, port: int, *args: str, tls: bool = False) -> int:
        """``redis-server`` on ``port`` (the TLS port when ``tls``: the plain port is then off) with ``args``."""
        work = self.root / name
        work.mkdir(parents=True, exist_ok=True)
        ports = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
        argv = ["redis-server", *ports, "--bind", "127.0.0.1", "--dir", str(work), "--save", "", "--appendonly",
                "no", "--logfile", "", *args]
        proc = spawn(argv, work / "redis.log", tie_to_parent=True)
        self.procs.append(proc)
        if not wait_for_port("127.0.0.1", port, 10.0, proc):
            raise RuntimeError(f"redis-server {name} did not start: {(work / 'redis.log').read_text()[-2000:]}")
        return port

    def stop(self) -> None:
        for proc in self.procs:
            terminate(proc.pid, timeout=3.0)
            proc.wait(timeout=5)
        self.procs.clear()


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
        if p + 10000 < 65536 and p not in taken and _bindable(p + 10000):
            return p
        p = 20000 + (p % 30000)
        if p not in taken and _bindable(p) and _bindable(p + 10000):
            return p
    raise RuntimeError("no free port pair for a cluster node")


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing of this server's


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(d: Path) -> Certs:
    """A test CA, a server certificate for 127.0.0.1 / localhost and a client certificate (EC P-256), by openssl."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj",
                 f"/CN=streaming test {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-new", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext", cwd=d)
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
                 d / "other-ca.crt")


def create_cluster(ports: Sequence[int], password: str | None = None, timeout_s: float = 15.0) -> None:
    """``redis-cli --cluster create`` over ``ports`` (no replicas), then wait until every node says cluster_state:ok."""
    auth = ["-a", password, "--no-auth-warning"] if password else []
    subprocess.run(["redis-cli", *auth, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    for p in ports:
        while True:
            out = subprocess.run(["redis-cli", *auth, "-p", str(p), "cluster", "info"], capture_output=True,
                                 text=True, timeout=5).stdout
            if "cluster_state:ok" in out:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {p} not ok: {out}")
            time.sleep(0.05)
