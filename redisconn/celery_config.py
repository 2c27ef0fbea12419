"""Celery's, kombu's and redbeat's settings for a Redis target.

Each library spells Sentinel and TLS its own way: kombu's broker wants
`sentinel://host:port;sentinel://...` with `master_name` in the transport options and
`broker_use_ssl`; Celery's result backend the same URL form with
`result_backend_transport_options` and `redis_backend_use_ssl`; redbeat a
`redis-sentinel://` URL with the sentinels in `redbeat_redis_options`. This module
translates one `RedisTarget` into all three, so the rest of the service never has to.
https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html
https://redbeat.readthedocs.io/en/latest/config.html
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from redisconn.factory import sentinel_connection_options
from redisconn.settings import RedisTarget, TlsFiles


def sentinel_url(target: RedisTarget) -> str:
    """kombu's and Celery's form: one `sentinel://` per sentinel, `;`-separated.

    Both read the data nodes' ACL user and the database from the first entry.
    """
    credentials = ""
    if target.password is not None:
        secret = quote(target.password.get_secret_value(), safe="")
        credentials = f"{quote(target.username or '', safe='')}:{secret}@"
    elif target.username:
        credentials = f"{quote(target.username, safe='')}@"
    entries = [
        f"sentinel://{credentials if index == 0 else ''}{host}:{port}/{target.db}"
        for index, (host, port) in enumerate(target.sentinels)
    ]
    return ";".join(entries)


def sentinel_transport_options(target: RedisTarget) -> dict[str, Any]:
    """The transport options kombu's and Celery's Sentinel support read."""
    return {
        "master_name": target.master,
        "sentinel_kwargs": sentinel_connection_options(target),
    }


@dataclass(frozen=True)
class CeleryConnection:
    """Celery settings, plus what to merge into the two transport-option settings."""

    settings: dict[str, Any]
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    backend_transport_options: dict[str, Any] = field(default_factory=dict)


def connection_config(
    target: RedisTarget,
    *,
    broker_url: str | None,
    result_backend: str | None,
    beat_retry_seconds: float,
) -> CeleryConnection:
    """The Celery settings that say where the broker, the backend and beat's Redis are.

    `broker_url` / `result_backend` are CELERY_BROKER_URL / CELERY_RESULT_BACKEND when
    set (they win; TLS options still apply to a `rediss://` one), else None: the target.
    """
    tls = target.tls
    config: dict[str, Any] = {}
    broker_options: dict[str, Any] = {}
    backend_options: dict[str, Any] = {}
    if target.uses_sentinel:
        broker = broker_url or sentinel_url(target)
        backend = result_backend or sentinel_url(target)
        if broker_url is None:
            broker_options = sentinel_transport_options(target)
        if result_backend is None:
            backend_options = sentinel_transport_options(target)
    else:
        assert target.url is not None  # a target is a URL or sentinels
        broker = broker_url or target.url
        backend = result_backend or target.url
    config["broker_url"] = broker
    config["result_backend"] = backend
    if _wants_tls(broker, target):
        config["broker_use_ssl"] = (tls or TlsFiles()).ssl_options()
    if _wants_tls(backend, target):
        config["redis_backend_use_ssl"] = (tls or TlsFiles()).ssl_options()
    config.update(redbeat_config(target, retry_seconds=beat_retry_seconds))
    return CeleryConnection(config, broker_options, backend_options)


def _wants_tls(url: str, target: RedisTarget) -> bool:
    scheme = urlsplit(url).scheme
    return scheme == "rediss" or (scheme == "sentinel" and target.tls is not None)


def redbeat_config(target: RedisTarget, *, retry_seconds: float) -> dict[str, Any]:
    """redbeat's settings: beat's schedule and lock live in the target too.

    `retry_period` makes redbeat retry a lost connection (a failover, a restart) for
    that long instead of ending beat at the first error.
    """
    options: dict[str, Any] = {"retry_period": retry_seconds}
    config: dict[str, Any] = {"redbeat_redis_options": options}
    if target.uses_sentinel:
        config["redbeat_redis_url"] = "redis-sentinel://"
        options.update(
            sentinels=list(target.sentinels),
            service_name=target.master,
            db=target.db,
            socket_timeout=10,
            sentinel_kwargs=sentinel_connection_options(target),
        )
        if target.username:
            options["username"] = target.username
        if target.password:
            options["password"] = target.password.get_secret_value()
    else:
        config["redbeat_redis_url"] = target.url
    if target.tls is not None:
        config["redbeat_redis_use_ssl"] = target.tls.ssl_options()
    return config
