"""A run's own feature-store namespace: the worker keys everything under STREAMING_REDIS_PREFIX, and it is dropped whole."""

from __future__ import annotations

import pytest
import redis

from streaming.features.store import drop_namespace
from tests.conftest import Servers, unique


@pytest.mark.integration
def test_drop_namespace_deletes_its_keys_and_nothing_else(servers: Servers) -> None:
    client = redis.Redis.from_url(servers.redis_url)
    ns, other = f"{unique('ns')}:fraud:", f"{unique('keep')}:fraud:"
    for i in range(2500):  # more than one SCAN/UNLINK batch
        client.set(f"{ns}e2:{{card_id=c{i}}}", b"x")
    client.set(f"{other}e2:{{card_id=c1}}", b"y")
    assert drop_namespace(servers.redis_url, ns) == 2500
    assert not list(client.scan_iter(match=ns + "*"))
    assert client.get(f"{other}e2:{{card_id=c1}}") == b"y"
    for bad in ("", "*", "a*b:"):
        with pytest.raises(ValueError, match="refusing"):
            drop_namespace(servers.redis_url, bad)
    client.close()
