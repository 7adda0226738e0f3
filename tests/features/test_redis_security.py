"""Redis AUTH (password, password file, ACL user) and TLS (server-verified and mutual) through the one client factory,
with the real feature store's script; wrong credentials and missing TLS files are one-line errors without the secret.

Each server is a private redis-server on a free port in a tmp dir (never the shared one on 6379).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming.errors import ConfigError, UnreachableError, UserError
from streaming.features.reference import ReferenceStore
from streaming.features.store import RedisFeatureStore, drop_namespace
from streaming.infra.processes import free_port
from streaming.infra.redis_client import check_redis, connect_redis, ping_redis, redacted, redis_config
from streaming.pipeline.spec import Pipeline
from streaming.settings import Settings
from tests.conftest import unique
from tests.features.redis_servers import Certs, RedisProcs, make_certs, needs_redis_server

pytestmark = [pytest.mark.security, pytest.mark.integration, needs_redis_server]

S = 1_000_000
SECRET = "s3cret-Pa55-" + "x" * 12
WRONG = "not-the-Pa55word"


def tx(eid: str, card: str, t_us: int, amount: float, merchant: str) -> dict:
    return {"event_id": eid, "card_id": card, "merchant_id": merchant, "amount": amount, "country": "US",
            "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": t_us}


def batch(n: int = 40, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    t = 1_800_000_000 * S
    out = []
    for i in range(n):
        t += rng.randrange(1, 9) * S
        out.append(tx(f"e{i}", f"c{rng.randrange(6)}", t, round(rng.uniform(1, 300), 2), f"m{rng.randrange(4)}"))
    return out


@pytest.fixture(scope="module")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcs, Certs]]:
    root = tmp_path_factory.mktemp("redis-sec")
    procs = RedisProcs(root)
    try:
        yield procs, make_certs(root / "certs")
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def auth_url(servers_dir: tuple[RedisProcs, Certs]) -> str:
    procs, _ = servers_dir
    port = procs.start("auth", free_port(), "--requirepass", SECRET)
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def tls_url(servers_dir: tuple[RedisProcs, Certs]) -> str:
    procs, c = servers_dir
    port = procs.start("tls", free_port(), "--tls-cert-file", str(c.server_cert), "--tls-key-file", str(c.server_key),
                       "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "no", tls=True)
    return f"rediss://127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def mtls_url(servers_dir: tuple[RedisProcs, Certs]) -> str:
    """Client certificates required, and a password."""
    procs, c = servers_dir
    port = procs.start("mtls", free_port(), "--tls-cert-file", str(c.server_cert), "--tls-key-file",
                       str(c.server_key), "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "yes",
                       "--requirepass", SECRET, tls=True)
    return f"rediss://127.0.0.1:{port}/0"


async def run_store(settings: Settings, url: str, pipeline: Pipeline) -> None:
    """The real store (its script, the feature log) through the factory; values equal the reference's."""
    store = RedisFeatureStore.connect(settings, url, pipeline, prefix=unique("sec") + ":")
    try:
        await ping_redis(store.client, settings, url)
        events = batch()
        got = await store.update_and_read(events)
        want = ReferenceStore(pipeline).results(events)
        assert [(g.values, g.applied, g.late) for g in got] == [(w.values, w.applied, w.late) for w in want]
        assert any(g.values[0] > 1 for g in got)  # windows that hold more than the event itself
        assert not any(r.applied for r in await store.update_and_read(events[:5]))  # redeliveries
    finally:
        await store.close()


def one_line_without_secrets(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    for secret in (SECRET, WRONG):
        assert secret not in msg and secret not in repr(exc)
    assert exc.__cause__ is None and exc.__suppress_context__  # no redis-py traceback chained to the log line
    return msg


# -- AUTH


async def test_password_setting_runs_the_feature_store(auth_url: str, fraud_pipeline: Pipeline) -> None:
    settings = Settings(redis_password=SECRET)
    check_redis(settings, auth_url)
    await run_store(settings, auth_url, fraud_pipeline)


async def test_password_file_and_url_password(auth_url: str, fraud_pipeline: Pipeline, tmp_path: Path) -> None:
    pw = tmp_path / "redis.pw"
    pw.write_text(SECRET + "\nignored second line\n")
    await run_store(Settings(redis_password_file=str(pw)), auth_url, fraud_pipeline)
    in_url = auth_url.replace("redis://", f"redis://:{SECRET}@")
    check_redis(Settings(), in_url)
    assert SECRET not in redacted(Settings(), in_url)
    # precedence: the setting, then the file, then the URL
    with pytest.raises(ConfigError):
        check_redis(Settings(redis_password=WRONG), in_url)
    check_redis(Settings(redis_password=SECRET, redis_password_file=str(tmp_path / "absent")), auth_url)
    check_redis(Settings(redis_password_file=str(pw)), auth_url.replace("redis://", f"redis://:{WRONG}@"))
    with pytest.raises(ConfigError, match="cannot be read"):
        redis_config(Settings(redis_password_file=str(tmp_path / "absent")), auth_url)


def test_wrong_password_is_one_clear_line_without_the_secret(auth_url: str) -> None:
    for settings, url in ((Settings(redis_password=WRONG), auth_url),
                          (Settings(), auth_url.replace("redis://", f"redis://:{WRONG}@"))):
        with pytest.raises(ConfigError) as info:
            check_redis(settings, url)
        msg = one_line_without_secrets(info.value)
        assert "refused the credentials" in msg and "STREAMING_REDIS_PASSWORD" in msg
        assert f"redis://:***@127.0.0.1:{auth_url.split(':')[2]}" in msg  # the URL, password redacted
    with pytest.raises(ConfigError, match="requires a password") as info:
        check_redis(Settings(), auth_url)
    one_line_without_secrets(info.value)


async def test_wrong_password_at_ping_and_in_reprs(auth_url: str, fraud_pipeline: Pipeline) -> None:
    settings = Settings(redis_password=WRONG)
    store = RedisFeatureStore.connect(settings, auth_url, fraud_pipeline)
    try:
        for shown in (repr(store.client), repr(settings), repr(redis_config(settings, auth_url)),
                      redacted(settings, auth_url)):
            assert WRONG not in shown
        with pytest.raises(ConfigError, match="refused the credentials") as info:
            await ping_redis(store.client, settings, auth_url)
        one_line_without_secrets(info.value)
    finally:
        await store.close()


def test_acl_user(auth_url: str) -> None:
    admin = connect_redis(Settings(redis_password=SECRET), auth_url, asyncio=False)
    try:
        admin.acl_setuser("feature-app", enabled=True, passwords=[f"+{WRONG}"], keys=["*"], commands=["+@all"])
        check_redis(Settings(redis_username="feature-app", redis_password=WRONG), auth_url)
        with pytest.raises(ConfigError, match="refused the credentials") as info:
            check_redis(Settings(redis_username="feature-app", redis_password=SECRET), auth_url)
        one_line_without_secrets(info.value)
        assert redacted(Settings(redis_username="feature-app", redis_password=WRONG), auth_url).startswith(
            "redis://feature-app:***@")
    finally:
        admin.acl_deluser("feature-app")
        admin.close()


def test_drop_namespace_with_credentials(auth_url: str) -> None:
    settings = Settings(redis_password=SECRET)
    client = connect_redis(settings, auth_url, asyncio=False)
    ns = unique("drop") + ":"
    try:
        client.mset({f"{ns}k{i}": b"x" for i in range(30)})
        assert drop_namespace(auth_url, ns, settings=settings) == 30
    finally:
        client.close()


def test_an_unreachable_redis_is_an_unreachable_error() -> None:
    with pytest.raises(UnreachableError, match="does not answer") as info:
        check_redis(Settings(redis_password=SECRET), f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    one_line_without_secrets(info.value)


# -- TLS


async def test_tls_with_the_ca_runs_the_feature_store(tls_url: str, servers_dir: tuple[RedisProcs, Certs],
                                                      fraud_pipeline: Pipeline) -> None:
    _, certs = servers_dir
    settings = Settings(redis_tls_ca=str(certs.ca))
    check_redis(settings, tls_url)
    await run_store(settings, tls_url, fraud_pipeline)
    # a TLS setting alone turns TLS on for a redis:// URL
    check_redis(settings, tls_url.replace("rediss://", "redis://"))


def test_tls_without_the_ca_is_a_clear_error(tls_url: str, servers_dir: tuple[RedisProcs, Certs]) -> None:
    _, certs = servers_dir
    for settings in (Settings(), Settings(redis_tls_ca=str(certs.other_ca))):
        with pytest.raises(ConfigError, match="not trusted") as info:
            check_redis(settings, tls_url)
        assert "STREAMING_REDIS_TLS_CA" in one_line_without_secrets(info.value)
    with pytest.raises(ConfigError, match="no such file"):
        check_redis(Settings(redis_tls_ca=str(certs.ca) + ".missing"), tls_url)
    with pytest.raises(UserError):  # plain text to a TLS-only port
        check_redis(Settings(), tls_url.replace("rediss://", "redis://"), timeout_s=1.0)


async def test_mutual_tls_with_a_client_certificate(mtls_url: str, servers_dir: tuple[RedisProcs, Certs],
                                                    fraud_pipeline: Pipeline) -> None:
    _, c = servers_dir
    settings = Settings(redis_tls_ca=str(c.ca), redis_tls_cert=str(c.client_cert), redis_tls_key=str(c.client_key),
                        redis_password=SECRET)
    check_redis(settings, mtls_url)
    await run_store(settings, mtls_url, fraud_pipeline)


def test_mutual_tls_without_a_client_certificate(mtls_url: str, servers_dir: tuple[RedisProcs, Certs]) -> None:
    _, c = servers_dir
    with pytest.raises(ConfigError, match="STREAMING_REDIS_TLS_CERT") as info:
        check_redis(Settings(redis_tls_ca=str(c.ca), redis_password=SECRET), mtls_url)
    one_line_without_secrets(info.value)
    with pytest.raises(ConfigError, match="go together"):
        redis_config(Settings(redis_tls_ca=str(c.ca), redis_tls_cert=str(c.client_cert)), mtls_url)
    with pytest.raises(ConfigError, match="refused the credentials") as info:
        check_redis(Settings(redis_tls_ca=str(c.ca), redis_tls_cert=str(c.client_cert),
                             redis_tls_key=str(c.client_key), redis_password=WRONG), mtls_url)
    one_line_without_secrets(info.value)
