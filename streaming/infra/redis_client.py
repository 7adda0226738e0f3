"""Every Redis client the project creates: one factory from the URL and the settings.

:func:`connect_redis` builds a redis-py client (``redis.asyncio`` or sync; ``Redis``, or ``RedisCluster`` when
``STREAMING_REDIS_CLUSTER`` is set) with the credentials and TLS the settings give:

- password: ``STREAMING_REDIS_PASSWORD``, else the first line of ``STREAMING_REDIS_PASSWORD_FILE``, else the
  URL's (``redis://:password@host``); user name: ``STREAMING_REDIS_USERNAME``, else the URL's;
- TLS when the URL is ``rediss://`` or any of ``STREAMING_REDIS_TLS_CA`` / ``_TLS_CERT`` / ``_TLS_KEY`` is set
  (the CA verifies the server's certificate, and its host name; cert and key are the client's certificate for a
  Redis that asks for one).

The credentials are taken out of the URL and handed to redis-py as arguments, so a password never sits in a
URL that a connection error or a log line could print. :func:`check_redis` (sync) and :func:`ping_redis`
(async) turn what goes wrong at connect time into one line (:class:`~streaming.errors.ConfigError` for
credentials and TLS, :class:`~streaming.errors.UnreachableError` for a Redis that does not answer) that names
the URL with its password redacted and never holds the secret.

>>> from streaming.settings import Settings
>>> cfg = redis_config(Settings(redis_password="s3cret", redis_username="app"), "redis://:old@cache:6380/1")
>>> cfg.url, cfg.username, cfg.password, cfg.tls, cfg
('redis://cache:6380/1', 'app', 's3cret', False, RedisConfig(url='redis://cache:6380/1', username='app', tls=False, cluster=False))
>>> redacted(Settings(redis_password="s3cret"), "redis://cache:6380/1")
'redis://:***@cache:6380/1'
>>> redis_config(Settings(), "rediss://cache:6380").tls
True
>>> redis_config(Settings(redis_tls_ca="/nonexistent/ca.pem"), "redis://cache:6380")
Traceback (most recent call last):
...
streaming.errors.ConfigError: STREAMING_REDIS_TLS_CA='/nonexistent/ca.pem': no such file
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException

from streaming.errors import ConfigError, UnreachableError, UserError
from streaming.infra.redact import redact_url
from streaming.infra.secrets import read_secret
from streaming.settings import Settings

__all__ = ["DEFAULT_URL", "RedisConfig", "check_redis", "connect_redis", "ping_redis", "redacted", "redis_config",
           "redis_error"]

#: the URL when neither the argument nor STREAMING_REDIS_URL names one
DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisConfig:
    """Where and how to connect, resolved from a URL and the settings (the password is left out of the repr)."""

    url: str  # without credentials; rediss:// when TLS is on
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = field(default=None, repr=False)
    tls_cert: str | None = field(default=None, repr=False)
    tls_key: str | None = field(default=None, repr=False)
    cluster: bool = False

    @property
    def display(self) -> str:
        """The URL for a log line or an error: the user name, ``***`` for a password."""
        if self.password is None and self.username is None:
            return self.url
        parts = urlsplit(self.url)
        if not parts.hostname:  # unix:// and the like: no userinfo to show
            return self.url + (" (with a password)" if self.password is not None else "")
        user = self.username or ""
        netloc = (f"{user}:***@" if self.password is not None else f"{user}@") + parts.netloc
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def client_kwargs(self) -> dict[str, Any]:
        """The redis-py keyword arguments (besides the URL) that carry the credentials and TLS."""
        kw: dict[str, Any] = {}
        if self.username is not None:
            kw["username"] = self.username
        if self.password is not None:
            kw["password"] = self.password
        if self.tls:
            if self.tls_ca:
                kw["ssl_ca_certs"] = self.tls_ca
            if self.tls_cert:
                kw["ssl_certfile"] = self.tls_cert
            if self.tls_key:
                kw["ssl_keyfile"] = self.tls_key
        return kw


def _tls_file(var: str, value: str) -> str | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        raise ConfigError(f"{var}={value!r}: no such file")
    return str(p)


def redis_config(settings: Settings, url: str | None = None) -> RedisConfig:
    """Resolve ``url`` (default: ``STREAMING_REDIS_URL``, else :data:`DEFAULT_URL`) with the settings' credentials
    and TLS files; a ConfigError names what is wrong (a password file that cannot be read, a missing TLS file)."""
    raw = url or settings.redis_url or DEFAULT_URL
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ConfigError(f"bad Redis URL {redact_url(raw)!r}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"bad Redis URL {redact_url(raw)!r}: expected redis://, rediss:// or unix://")
    # credentials out of the URL (userinfo, or username= / password= in the query): they go as arguments
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    url_user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password else None
    for k, v in query:
        if k == "username" and v:
            url_user = v
        elif k == "password" and v:
            url_password = v
    query = [(k, v) for k, v in query if k not in ("username", "password")]
    if settings.redis_password:
        password: str | None = settings.redis_password
    elif settings.redis_password_file:
        password = read_secret(settings.redis_password_file, "STREAMING_REDIS_PASSWORD_FILE")
    else:
        password = url_password
    username = settings.redis_username or url_user
    ca = _tls_file("STREAMING_REDIS_TLS_CA", settings.redis_tls_ca)
    cert = _tls_file("STREAMING_REDIS_TLS_CERT", settings.redis_tls_cert)
    key = _tls_file("STREAMING_REDIS_TLS_KEY", settings.redis_tls_key)
    if bool(cert) != bool(key):
        raise ConfigError("STREAMING_REDIS_TLS_CERT and STREAMING_REDIS_TLS_KEY go together: set both or neither")
    tls = parts.scheme == "rediss" or bool(ca or cert or key)
    scheme = parts.scheme
    if tls:
        if scheme == "unix":
            raise ConfigError(f"TLS settings given for a unix:// Redis URL ({redact_url(raw)}): TLS needs rediss://")
        scheme = "rediss"
    if settings.redis_cluster and scheme == "unix":
        raise ConfigError("STREAMING_REDIS_CLUSTER needs a redis:// or rediss:// URL of a cluster node, not unix://")
    netloc = parts.netloc.rpartition("@")[2]  # host[:port], without the userinfo
    clean = urlunsplit((scheme, netloc, parts.path, urlencode(query), parts.fragment))
    return RedisConfig(clean, username or None, password or None, tls, ca, cert, key, settings.redis_cluster)


def redacted(settings: Settings, url: str | None = None) -> str:
    """The Redis URL as a log line may show it: user name kept, any password (URL or settings) as ``***``.

    Never raises: a setting that is wrong shows the URL with its own password redacted."""
    try:
        return redis_config(settings, url).display
    except UserError:
        return redact_url(url or settings.redis_url or DEFAULT_URL)


def connect_redis(settings: Settings, url: str | None = None, *, asyncio: bool = True, **client_kwargs: Any) -> Any:
    """A redis-py client for ``url`` (default: ``STREAMING_REDIS_URL``) with the settings' credentials and TLS.

    ``asyncio``: a ``redis.asyncio`` client (else a sync one). ``Redis``, or ``RedisCluster`` when
    ``STREAMING_REDIS_CLUSTER`` is set. ``client_kwargs`` go to redis-py (``socket_timeout=...``) and win over
    the settings'. Nothing is sent yet: :func:`check_redis` / :func:`ping_redis` turn a wrong password, a TLS
    failure or an unreachable Redis into a one-line error."""
    cfg = redis_config(settings, url)
    kwargs = {**cfg.client_kwargs(), **client_kwargs}
    if cfg.cluster:
        cluster_cls: Any = aioredis.RedisCluster if asyncio else redis.RedisCluster
        kwargs.pop("db", None)
        return cluster_cls.from_url(cfg.url, **kwargs)
    plain_cls: Any = aioredis.Redis if asyncio else redis.Redis
    return plain_cls.from_url(cfg.url, **kwargs)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _scrub(text: str, cfg: RedisConfig, settings: Settings) -> str:
    for secret in {cfg.password, settings.redis_password}:
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())  # one line


def redis_error(exc: BaseException, settings: Settings, url: str | None = None) -> UserError:
    """The one-line error for a failure to connect to (or authenticate with) Redis; the secret is never in it."""
    try:
        cfg = redis_config(settings, url)
    except UserError as bad:
        return bad
    where = cfg.display
    chain = _causes(exc)
    said: list[str] = []
    for e in chain:  # redis-py wraps the socket's error and repeats its text: each text once
        t = str(e).strip().rstrip(".")
        if t and not any(t in earlier for earlier in said):
            said.append(t)
    text = _scrub("; ".join(said), cfg, settings)
    for e in chain:
        if isinstance(e, redis.AuthenticationError) or (
                isinstance(e, redis.ResponseError) and str(e).startswith(("WRONGPASS", "NOAUTH"))):
            msg = str(e)
            if cfg.password is None or "authentication required" in msg.lower():
                return ConfigError(f"Redis at {where} requires a password: set STREAMING_REDIS_PASSWORD or "
                                   "STREAMING_REDIS_PASSWORD_FILE (or put it in the URL)")
            if "without any password configured" in msg or "no password is set" in msg:
                return ConfigError(f"Redis at {where} has no password set, but one was given: remove "
                                   "STREAMING_REDIS_PASSWORD / STREAMING_REDIS_PASSWORD_FILE (or the URL's)")
            return ConfigError(f"Redis at {where} refused the credentials (wrong password or user name): check "
                               "STREAMING_REDIS_PASSWORD / STREAMING_REDIS_PASSWORD_FILE / STREAMING_REDIS_USERNAME "
                               "or the URL's")
        if isinstance(e, redis.exceptions.NoPermissionError):
            return ConfigError(f"Redis at {where}: the user may not run what the worker needs ({_scrub(str(e), cfg, settings)}); "
                               "grant it the feature store's commands and keys (docs/features.md)")
    low = text.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return ConfigError(f"TLS to Redis at {where} failed: the server's certificate is not trusted ({text}); set "
                           "STREAMING_REDIS_TLS_CA to the PEM file of the CA that signed it")
    if cfg.tls and ("ssl" in low or "tls" in low or "certificate" in low or "reset by peer" in low
                                        or "closed by server" in low or "eof" in low):
        return ConfigError(f"TLS to Redis at {where} failed ({text}); if it asks for a client certificate, set "
                           "STREAMING_REDIS_TLS_CERT and STREAMING_REDIS_TLS_KEY; a server without TLS needs redis://")
    if not cfg.tls and ("closed by server" in low or "reset by peer" in low):
        return UnreachableError(f"Redis at {where} closed the connection ({text}): does it speak TLS only? Then use "
                                "rediss:// or set STREAMING_REDIS_TLS_CA")
    if cfg.cluster and ("cluster support disabled" in low or "cluster mode is not enabled" in low):
        return ConfigError(f"Redis at {where} is not a cluster node: unset STREAMING_REDIS_CLUSTER")
    if isinstance(exc, redis.ResponseError) and "moved" in low:
        return ConfigError(f"Redis at {where} is a cluster node: set STREAMING_REDIS_CLUSTER=true")
    return UnreachableError(f"Redis at {where} does not answer ({text}): start it with `streaming up` or fix "
                            "STREAMING_REDIS_URL")


def check_redis(settings: Settings, url: str | None = None, *, timeout_s: float = 2.0) -> None:
    """Connect to Redis with the settings and PING it; a one-line error (see :func:`redis_error`) when that fails."""
    client = None
    try:
        client = connect_redis(settings, url, asyncio=False, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        client.ping()
        if settings.redis_cluster:
            _check_cluster_state(client.cluster_info(), settings, url)
    except UserError:
        raise
    except (redis.RedisError, RedisClusterException, OSError, ValueError) as exc:
        raise redis_error(exc, settings, url) from None
    finally:
        if client is not None:
            client.close()


async def ping_redis(client: Any, settings: Settings, url: str | None = None) -> None:
    """PING ``client`` (made by :func:`connect_redis`); a one-line error (see :func:`redis_error`) when it fails."""
    try:
        await client.ping()
    except (redis.RedisError, RedisClusterException, OSError, ValueError) as exc:
        raise redis_error(exc, settings, url) from None


def _check_cluster_state(info: Any, settings: Settings, url: str | None) -> None:
    state = info.get("cluster_state") if isinstance(info, dict) else None
    if state not in (None, "ok"):
        raise UnreachableError(f"Redis Cluster at {redacted(settings, url)} is in state {state!r}, not ok: "
                               "every slot must be served")
