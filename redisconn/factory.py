"""The one place Redis clients are made, for every user of Redis in the service.

A plain target becomes `redis.Redis.from_url`; a cluster target `redis.RedisCluster`
(`cluster_client`); a Sentinel target becomes a client of the
master that the sentinels name, which finds the new master by itself after a failover
(redis-py's `SentinelConnectionPool` asks the sentinels again on every reconnect, and
turns a write refused by a demoted master, READONLY, into a reconnect). TLS options
always verify the server's certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
from pydantic import SecretStr
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from redisconn.settings import RedisTarget


def _credentials_and_tls(
    username: str | None, password: SecretStr | None, target: RedisTarget
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if username:
        options["username"] = username
    if password:
        options["password"] = password.get_secret_value()
    if target.tls:
        options["ssl"] = True
        options.update(target.tls.ssl_options())
    return options


def sentinel_connection_options(target: RedisTarget) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their ACL user, TLS, short timeouts."""
    return {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        **_credentials_and_tls(target.sentinel_username, target.sentinel_password, target),
    }


def node_connection_options(target: RedisTarget) -> dict[str, Any]:
    """How to talk to the master and replicas behind Sentinel: their ACL user and TLS."""
    return _credentials_and_tls(target.username, target.password, target)


def sentinel_for(target: RedisTarget, **options: Any) -> Sentinel:
    """A Sentinel client of `target`, whose masters get `options` (timeouts, retries)."""
    # redis.sentinel shipped without annotations before redis-py 8 (hence unused-ignore).
    return Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(target.sentinels),
        sentinel_kwargs=sentinel_connection_options(target),
        **node_connection_options(target),
        **options,
    )


def client(target: RedisTarget, **options: Any) -> redis.Redis:
    """A client of `target`'s master (through Sentinel) or of its URL.

    `options` are redis-py's (timeouts, retries, decode_responses) and apply to the data
    connections either way. A cluster target gives a `cluster_client`.
    """
    if target.uses_cluster:
        return cluster_client(target, **options)
    if target.uses_sentinel:
        assert target.master is not None  # the settings require it with sentinels
        sentinel = sentinel_for(target, **options)
        master: redis.Redis = sentinel.master_for(target.master, db=target.db)  # type: ignore[no-untyped-call,unused-ignore]
        return master
    assert target.url is not None  # a target is a URL or sentinels
    tls = target.tls.ssl_options() if target.tls else {}
    return redis.Redis.from_url(target.url, **tls, **options)


def cluster_client(target: RedisTarget, **options: Any) -> redis.Redis:
    """A `redis.RedisCluster` of `target`'s nodes, with its credentials and TLS.

    It answers the commands the service sends a single Redis (a key's command goes to
    the master of its slot, found again after a failover or a MOVED), so it is typed as
    one here. redis-py's `retry` is the cluster's own: on a connection error or a
    timeout it reinitialises the slot map and sends the command again (to the new
    master after a failover); each node's connections get the rest of `options`.
    """
    retry = options.pop("retry", None)
    options.pop("retry_on_timeout", None)  # the cluster's retry covers timeouts
    options.pop("health_check_interval", None)
    cluster = RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in target.cluster_nodes
        ],
        retry=retry,
        **node_connection_options(target),
        **options,
    )
    return cast(redis.Redis, cluster)


@dataclass(frozen=True)
class Topology:
    """What the sentinels say about a master: where it is and which replicas follow it."""

    master: tuple[str, int]
    replicas: tuple[tuple[str, int], ...]
    sentinels_answering: int


def topology(target: RedisTarget) -> Topology:
    """Ask the sentinels for the current master and its replicas that are up.

    Raises `redis.sentinel.MasterNotFoundError` when no sentinel knows a master.
    """
    assert target.master is not None  # only called for Sentinel targets
    sentinel = sentinel_for(target)
    try:
        master = sentinel.discover_master(target.master)  # type: ignore[no-untyped-call,unused-ignore]
        replicas = sentinel.discover_slaves(target.master)  # type: ignore[no-untyped-call,unused-ignore]
        answering = 0
        for node in sentinel.sentinels:
            try:
                node.ping()
                answering += 1
            except (redis.RedisError, OSError):
                continue
        return Topology(
            master=master,
            replicas=tuple((str(host), int(port)) for host, port in replicas),
            sentinels_answering=answering,
        )
    finally:
        for node in sentinel.sentinels:
            node.close()
