"""REDIS_CLUSTER_NODES and EVENTS_PARTITIONS: checked at start, one line each."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from redisconn.settings import RedisTarget
from settings import ConfigurationError, checked_settings


def lines_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        checked_settings()
    return caught.value.lines


def test_a_node_without_a_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster node is host:port: the port has no default to guess."""
    (line,) = lines_for(monkeypatch, REDIS_CLUSTER_NODES="redis-1:6379,redis-2")
    assert line.startswith("REDIS_CLUSTER_NODES=")
    assert "a cluster node must be host:port, got 'redis-2'" in line


def test_a_cluster_needs_more_than_one_event_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one partition every event would go to one master: refused, saying what to set."""
    monkeypatch.delenv("EVENTS_PARTITIONS", raising=False)
    (line,) = lines_for(monkeypatch, REDIS_CLUSTER_NODES="redis-1:6379")
    assert "EVENTS_PARTITIONS of 2 or more" in line


def test_too_many_partitions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    (line,) = lines_for(monkeypatch, EVENTS_PARTITIONS="65")
    assert line == "EVENTS_PARTITIONS='65': must be at most 64"


def test_a_cluster_target_never_shows_its_password() -> None:
    """The cluster's description and repr name its nodes and user, never the password."""
    target = RedisTarget(
        cluster_nodes=(("redis-1", 6379), ("redis-2", 6379)),
        username="svc",
        password=SecretStr("s3cret-pw"),
    )
    assert target.describe() == "cluster via redis-1:6379,redis-2:6379 (redis://svc@<node>)"
    assert "s3cret-pw" not in repr(target)
    assert target.secrets() == ["s3cret-pw"]
