"""A throw-away certificate authority for one run of the embedded stack (``streaming up --secure``).

:func:`make_run_certificates` writes a CA and a server certificate for
127.0.0.1/localhost signed by it, with the ``openssl`` command line tool. The CA's
key stays in the run directory; nothing here is meant to outlive the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streaming.errors import UserError

__all__ = ["RunCertificates", "make_run_certificates"]

DAYS = 30


@dataclass(frozen=True)
class RunCertificates:
    ca: Path  # the CA certificate: what clients trust (STREAMING_KAFKA_SSL_CA, STREAMING_REDIS_TLS_CA)
    cert: Path  # the server certificate (CN 127.0.0.1, SAN IP:127.0.0.1, DNS:localhost)
    key: Path  # its private key (mode 0600)

    @property
    def bundle(self) -> Path:
        """The server's certificate and key in one file (what stunnel reads)."""
        return self.cert.with_name("server-bundle.pem")


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise UserError("openssl is not installed (apt-get install openssl): it makes the run's TLS certificates")
    proc = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")


def make_run_certificates(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> RunCertificates:
    """Create (or reuse) the run's CA and a server certificate for ``hosts`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    out = RunCertificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if out.ca.exists() and out.cert.exists() and out.key.exists() and out.bundle.exists():
        return out
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    (directory / "server.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    old = os.umask(0o077)
    try:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                 "-days", str(DAYS), "-subj", "/CN=streaming run CA", cwd=directory)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                 "-subj", f"/CN={hosts[0]}", cwd=directory)
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "server.pem", "-days", str(DAYS), "-extfile", "server.ext", cwd=directory)
        out.bundle.write_bytes(out.cert.read_bytes() + out.key.read_bytes())
    finally:
        os.umask(old)
    return out
