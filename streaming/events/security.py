"""How every Kafka client reaches the brokers: TLS and SASL, from the settings.

One :class:`KafkaSecurity` describes the protocol (``PLAINTEXT``, ``SSL``,
``SASL_PLAINTEXT``, ``SASL_SSL``), the SASL mechanism and credentials, and the
TLS files. It is turned into each client library's settings here and nowhere
else: :meth:`KafkaSecurity.librdkafka` for confluent-kafka (the CLI's producers,
readers and admin, the retrain job, the load test, the demo) and
:meth:`KafkaSecurity.faust_credentials` for the worker's Faust/aiokafka.

Code that builds a librdkafka client calls :func:`client_config`, which adds the
process's security to the client's own settings. The process's security is
built once from the settings (:func:`configure`; the CLI does it at start-up, and
the first use does it from the environment otherwise).

>>> sec = KafkaSecurity(protocol="SASL_SSL", mechanism="SCRAM-SHA-512", username="svc", password="pw")
>>> sorted(sec.librdkafka())
['sasl.mechanism', 'sasl.password', 'sasl.username', 'security.protocol']
>>> sec  # the password is never shown
KafkaSecurity(protocol='SASL_SSL', mechanism='SCRAM-SHA-512', username='svc', ca='', cert='', key='')
>>> KafkaSecurity(protocol="SASL_PLAINTEXT", mechanism="PLAIN")
Traceback (most recent call last):
...
streaming.errors.ConfigError: Kafka SASL (SASL_PLAINTEXT) needs a user name and a password: ...
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError, UnreachableError
from streaming.infra.secrets import read_secret
from streaming.settings import Settings

__all__ = ["KafkaSecurity", "client_config", "configure", "current", "auth_error"]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security of the connections to the Kafka brokers (the password is left out of the repr)."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-256"
    username: str = ""
    password: str = field(default="", repr=False)
    ca: str = ""  # PEM CA bundle; empty: the system's
    cert: str = ""  # PEM client certificate (mutual TLS)
    key: str = ""  # its private key

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"Kafka security protocol {self.protocol!r} is not one of: {', '.join(PROTOCOLS)}")
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise ConfigError(f"Kafka SASL mechanism {self.mechanism!r} is not one of: {', '.join(MECHANISMS)}")
            if not self.username or not self.password:
                raise ConfigError(
                    f"Kafka SASL ({self.protocol}) needs a user name and a password: set STREAMING_KAFKA_SASL_USERNAME "
                    "and STREAMING_KAFKA_SASL_PASSWORD (or STREAMING_KAFKA_SASL_PASSWORD_FILE)"
                )
        if bool(self.cert) != bool(self.key):
            raise ConfigError("a Kafka client certificate needs its key and a key its certificate: set both "
                              "STREAMING_KAFKA_SSL_CERT and STREAMING_KAFKA_SSL_KEY")
        if (self.ca or self.cert) and not self.tls:
            raise ConfigError(f"Kafka TLS files are set but the protocol is {self.protocol}: use SSL or SASL_SSL")
        for what, path in (("CA", self.ca), ("client certificate", self.cert), ("client key", self.key)):
            if path and not Path(path).expanduser().is_file():
                raise ConfigError(f"the Kafka TLS {what} file {path} does not exist")

    @classmethod
    def from_settings(cls, s: Settings) -> KafkaSecurity:
        password = s.kafka_sasl_password
        if not password and s.kafka_sasl_password_file:
            password = read_secret(s.kafka_sasl_password_file, "STREAMING_KAFKA_SASL_PASSWORD_FILE")
        return cls(protocol=s.kafka_security_protocol, mechanism=s.kafka_sasl_mechanism,
                   username=s.kafka_sasl_username, password=password,
                   ca=s.kafka_ssl_ca, cert=s.kafka_ssl_cert, key=s.kafka_ssl_key)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs and ``status``: protocol, mechanism, user; never the password."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.mechanism} as {self.username!r}")
        if self.tls:
            parts.append(f"CA {self.ca or '(system)'}" + (", client certificate" if self.cert else ""))
        return ", ".join(parts)

    def librdkafka(self) -> dict[str, Any]:
        """The confluent-kafka (librdkafka) settings."""
        conf: dict[str, Any] = {"security.protocol": self.protocol}
        if self.protocol == "PLAINTEXT":
            return {}
        if self.sasl:
            conf.update({"sasl.mechanism": self.mechanism, "sasl.username": self.username,
                         "sasl.password": self.password})
        if self.tls:
            if self.ca:
                conf["ssl.ca.location"] = str(Path(self.ca).expanduser())
            if self.cert:
                conf["ssl.certificate.location"] = str(Path(self.cert).expanduser())
                conf["ssl.key.location"] = str(Path(self.key).expanduser())
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for aiokafka (None without TLS): the brokers' certificates and host names are checked."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(Path(self.ca).expanduser()) if self.ca else None)
        if self.cert:
            ctx.load_cert_chain(str(Path(self.cert).expanduser()), str(Path(self.key).expanduser()))
        return ctx

    def faust_credentials(self) -> Any:
        """The ``faust.App(broker_credentials=...)`` value (None for PLAINTEXT)."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         ssl_context=self.ssl_context(), mechanism=self.mechanism)
        context = self.ssl_context()
        return None if context is None else faust.SSLCredentials(context)


_current: KafkaSecurity | None = None


def configure(security: KafkaSecurity | Settings | None) -> KafkaSecurity:
    """Set the process's Kafka security (from settings, or None: from the environment again)."""
    global _current
    if security is None:
        _current = None
        return current()
    _current = security if isinstance(security, KafkaSecurity) else KafkaSecurity.from_settings(security)
    return _current


def current() -> KafkaSecurity:
    """The process's Kafka security: as configured, else from the environment's settings."""
    global _current
    if _current is None:
        _current = KafkaSecurity.from_settings(Settings.from_env())
    return _current


def client_config(bootstrap: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A librdkafka client's settings: the brokers, the process's security, then ``conf``."""
    return {"bootstrap.servers": bootstrap, **current().librdkafka(), **(conf or {})}


#: what in librdkafka's messages means a failed TLS handshake, and what means refused credentials
_TLS = re.compile(r"ssl handshake|certificate|tls")
_AUTH = re.compile(r"sasl|authenticat|unknown-user|credential")
#: broker addresses in those messages (``ssl://host:port/bootstrap``) say nothing about the failure
_ADDRESS = re.compile(r"\b\w+://\S+")


def auth_error(bootstrap: str, detail: str) -> UnreachableError | None:
    """A one-line error for a refused connection (credentials or TLS), or None when ``detail`` is something else.

    >>> auth_error("b:9093", 'str="ssl://b:9093/bootstrap: Connect to ipv4#10.0.0.1:9093 failed: Connection refused"')
    """
    low = _ADDRESS.sub(" ", detail.lower())
    if _TLS.search(low):
        return UnreachableError(
            f"the TLS handshake with the Kafka broker at {bootstrap} failed ({_first_line(detail)}): check "
            "STREAMING_KAFKA_SSL_CA (the CA that signed the broker's certificate) and the broker's host name"
        )
    if _AUTH.search(low):
        return UnreachableError(
            f"the Kafka broker at {bootstrap} refused the credentials ({current().describe()}): "
            f"{_first_line(detail)}; check STREAMING_KAFKA_SASL_USERNAME, the password and "
            "STREAMING_KAFKA_SASL_MECHANISM"
        )
    return None


def _first_line(text: str) -> str:
    """The first reason in ``text``: a KafkaError's message without its wrapping, at most 300 characters."""
    found = re.search(r'str="([^"]*)"', text)
    line = found.group(1) if found else (text.strip().splitlines()[0] if text.strip() else text)
    return line[:300]
