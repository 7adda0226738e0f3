"""Kafka security settings: what each client library gets, and what is refused before any connection."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streaming.errors import ConfigError
from streaming.events import security
from streaming.events.security import KafkaSecurity, auth_error, client_config
from streaming.settings import Settings
from streaming.worker.app import app_keywords

pytestmark = pytest.mark.security

SECRET = "pw-not-in-any-repr-4242"


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    from streaming.infra.tls import make_run_certificates

    return make_run_certificates(tmp_path / "tls").ca


@pytest.fixture(autouse=True)
def _reset() -> object:
    yield
    security.configure(None)  # back to the environment's (PLAINTEXT in the tests)


def test_plaintext_adds_nothing() -> None:
    assert KafkaSecurity().librdkafka() == {}
    assert KafkaSecurity().faust_credentials() is None


def test_sasl_ssl_reaches_librdkafka_and_aiokafka(ca: Path) -> None:
    sec = KafkaSecurity(protocol="SASL_SSL", mechanism="SCRAM-SHA-512", username="svc", password=SECRET, ca=str(ca))
    conf = sec.librdkafka()
    assert conf == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
                    "sasl.password": SECRET, "ssl.ca.location": str(ca)}
    creds = sec.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)  # what Faust hands aiokafka
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "svc" and auth["sasl_plain_password"] == SECRET
    assert auth["ssl_context"].check_hostname is True  # the broker's certificate and name are checked


def test_ssl_only_gives_faust_an_ssl_context(ca: Path) -> None:
    creds = KafkaSecurity(protocol="SSL", ca=str(ca)).faust_credentials()
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"


def test_the_worker_app_gets_the_settings_credentials(ca: Path) -> None:
    s = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u",
                 kafka_sasl_password=SECRET)
    creds = app_keywords(s, "127.0.0.1:9092")["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "u" and creds.password == SECRET and creds.mechanism.value == "PLAIN"
    assert app_keywords(Settings(), "127.0.0.1:9092")["broker_credentials"] is None


def test_client_config_merges_the_process_security(ca: Path) -> None:
    security.configure(KafkaSecurity(protocol="SSL", ca=str(ca)))
    conf = client_config("b:9092", {"linger.ms": 5})
    assert conf == {"bootstrap.servers": "b:9092", "security.protocol": "SSL", "ssl.ca.location": str(ca),
                    "linger.ms": 5}


def test_password_from_a_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password_file=str(pw))
    assert KafkaSecurity.from_settings(s).password == SECRET


@pytest.mark.parametrize(("fields", "message"), [
    ({"protocol": "SASL_SSL"}, "needs a user name and a password"),
    ({"protocol": "SASL_SSL", "username": "u"}, "needs a user name and a password"),
    ({"protocol": "SASL_SSL", "username": "u", "password": "p", "mechanism": "GSSAPI"}, "mechanism 'GSSAPI'"),
    ({"protocol": "TLS"}, "protocol 'TLS'"),
    ({"protocol": "PLAINTEXT", "ca": "/etc/hostname"}, "the protocol is PLAINTEXT"),
    ({"protocol": "SSL", "ca": "/nonexistent/ca.pem"}, "does not exist"),
    ({"protocol": "SSL", "cert": "/etc/hostname"}, "needs its key"),
])
def test_bad_security_is_a_clear_error(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaSecurity(**fields)


def test_the_password_stays_out_of_reprs_and_errors(tmp_path: Path) -> None:
    sec = KafkaSecurity(protocol="SASL_PLAINTEXT", username="u", password=SECRET)
    assert SECRET not in repr(sec) and SECRET not in sec.describe()
    s = Settings(kafka_sasl_password=SECRET, redis_password=SECRET, checkpoint_key=SECRET, model_signing_key=SECRET)
    assert SECRET not in repr(s)
    security.configure(sec)
    err = auth_error("b:9092", 'KafkaError{code=_AUTHENTICATION,str="SASL authentication error: unknown-user"}')
    assert err is not None and "refused the credentials" in str(err) and SECRET not in str(err)


def test_auth_error_tells_tls_from_credentials_from_the_rest() -> None:
    tls = auth_error("b:9092", 'str="ssl://b:9092/bootstrap: SSL handshake failed: certificate verify failed"')
    assert tls is not None and "TLS handshake" in str(tls)
    assert auth_error("b:9092", 'str="Connection refused"') is None
