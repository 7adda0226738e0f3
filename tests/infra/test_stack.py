"""The embedded stack: up, status, down, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from streaming.errors import UnreachableError
from streaming.infra.processes import pid_alive, port_open
from streaming.infra.stack import Stack, StackState, check_broker, resolve_endpoints
from streaming.settings import Settings

pytestmark = pytest.mark.integration


def test_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    settings = Settings.from_env({}, run_dir=str(tmp_path))
    stack = Stack(settings, private_redis=True, tie_to_parent=True)
    state = stack.up()
    broker, rds = state.services["broker"], state.services["redis"]
    assert broker.running and rds.running and broker.pid and rds.pid
    assert StackState.load(tmp_path).services["broker"].port == broker.port
    assert resolve_endpoints(settings) == (broker.url, rds.url)
    check_broker(broker.url)
    assert redis.Redis.from_url(rds.url).ping()
    assert stack.up().services["broker"].pid == broker.pid  # idempotent
    stopped = stack.down()
    assert len(stopped) == 2
    assert not pid_alive(broker.pid) and not pid_alive(rds.pid)
    assert not port_open("127.0.0.1", broker.port) and not port_open("127.0.0.1", rds.port)
    assert not (tmp_path / "stack.json").exists()


def test_an_answering_redis_is_adopted_not_started(tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env({}, run_dir=str(tmp_path), redis_url=servers.redis_url)
    stack = Stack(settings, tie_to_parent=True)
    state = stack.up()
    try:
        assert state.services["redis"].pid is None and state.services["redis"].url == servers.redis_url
    finally:
        stack.down()
    assert redis.Redis.from_url(servers.redis_url).ping()  # not ours: still running


def test_no_broker_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="streaming up"):
        resolve_endpoints(Settings.from_env({}, run_dir=str(tmp_path)))
    with pytest.raises(UnreachableError, match="does not answer"):
        check_broker("127.0.0.1:1")
