"""Private redis-server processes for the Redis security and cluster tests: each on its own free port, in a tmp dir.

Nothing here touches the shared Redis on 6379; every process started is stopped by its own pid.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streaming.infra.redis_cluster import (
    LocalCluster,
    cluster_port,
    create_cluster,
    have_redis_binaries,
    local_cluster,
    start_redis_server,
    stop_redis_server,
)

__all__ = ["Certs", "LocalCluster", "RedisProcs", "cluster_port", "create_cluster", "local_cluster", "make_certs",
           "needs_redis_server"]

needs_redis_server = pytest.mark.skipif(not have_redis_binaries(), reason="redis-server and redis-cli are not installed")


@dataclass
class RedisProcs:
    """The redis-server processes a test module started (stopped together by :meth:`stop`).

    A Redis Cluster comes from :func:`streaming.infra.redis_cluster.local_cluster` (re-exported here)."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, port: int, *args: str, tls: bool = False) -> int:
        """``redis-server`` on ``port`` (the TLS port when ``tls``: the plain port is then off) with ``args``."""
        self.procs.append(start_redis_server(self.root / name, port, *args, tls=tls))
        return port

    def stop(self) -> None:
        for proc in self.procs:
            stop_redis_server(proc)
        self.procs.clear()


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
