"""The broker, chosen once from its URL: one module per broker, one interface.

`broker_module(url)` gives the module of the broker a URL names (`brokers.redis` or
`brokers.amqp`, each a `BrokerModule`): its Celery settings, consumer preparation and
countdown shaping, used by the worker. `open_broker(url)` gives the operator's view of it
(depths, parked messages, replay), used by the CLI and the queue-depth gauge. Adding a
broker is one module with the same names, and one line in `_SCHEMES`.

Every look at a URL's scheme is here, as kombu resolves a transport from the URL in one
place: the broker's (`broker_kind`, `redis_broker_scheme`, `reads_queue_depths`) and the
result backend's (`redis_result_backend`). The settings accept exactly these schemes.
`unix://` is refused for the broker and is not a Redis result backend: kombu and Celery
have no `unix` alias, so a worker given one could not start; REDIS_URL itself may still
be a `unix://` socket for the results store. RabbitMQ's failover lists are shuffled here
too (`failover_order`).
"""

from __future__ import annotations

import os
import random
from typing import Literal

from brokers import amqp, redis
from brokers.base import (
    ALL_QUEUES,
    DEFAULT_QUEUE,
    QUEUES,
    Broker,
    BrokerError,
    BrokerModule,
    NotSupported,
    ParkedMessage,
    QueueDepth,
    dead_letter_queue,
)
from redisconn import RedisTarget

__all__ = [
    "ALL_QUEUES",
    "DEFAULT_QUEUE",
    "QUEUES",
    "Broker",
    "BrokerError",
    "BrokerKind",
    "BrokerModule",
    "NotSupported",
    "ParkedMessage",
    "QueueDepth",
    "broker_kind",
    "broker_module",
    "broker_scheme_supported",
    "dead_letter_queue",
    "failover_order",
    "open_broker",
    "reads_queue_depths",
    "redis_broker_scheme",
    "redis_result_backend",
]

BrokerKind = Literal["redis", "amqp"]
MANAGEMENT_URL_ENV = "RABBITMQ_MANAGEMENT_URL"

_SCHEMES: dict[str, BrokerModule] = {
    "redis": redis,
    "rediss": redis,
    "sentinel": redis,
    "amqp": amqp,
    "amqps": amqp,
    "pyamqp": amqp,
}


#: Result backend URLs Celery stores in Redis, which the worker's one-round-trip backend
#: (worker/result_backend.py) and the CLI's reachability check (ops/cli/enqueue.py) serve.
_REDIS_RESULT_SCHEMES = frozenset({"redis", "rediss"})


def _scheme(url: str) -> str:
    """The scheme of `url`, or of the first URL of a failover list (`amqp://a;amqp://b`)."""
    return url.split("://", 1)[0].lower()


def broker_module(url: str) -> BrokerModule:
    """The module of the broker `url` names; any other scheme is a configuration error."""
    scheme = _scheme(url)
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"CELERY_BROKER_URL: unsupported scheme {scheme!r}; use redis://, rediss://, "
            "sentinel://, amqp:// or amqps://"
        ) from None


def broker_scheme_supported(url: str) -> bool:
    """Whether `url` names a broker this service runs on (`broker_module` would accept it)."""
    return _scheme(url) in _SCHEMES


def broker_kind(url: str) -> BrokerKind:
    kind = broker_module(url).KIND
    return "amqp" if kind == "amqp" else "redis"


def failover_order(url: str) -> str:
    """A RabbitMQ failover list (`amqp://n1/v;amqp://n2/v;...`) in random order, so each
    client tries a different node first; any other URL as it is.

    kombu always connects to the list's first URL first, and its `shuffle` strategy
    (`broker_failover_strategy`) only shuffles the URLs it falls back to: with every
    client on URL 1, node 1 held every connection and led every queue its clients
    declared. Shuffling the list spreads both."""
    urls = url.split(";")
    if len(urls) < 2 or broker_kind(urls[0]) != "amqp":
        return url
    return ";".join(random.sample(urls, len(urls)))


def redis_broker_scheme(url: str) -> str | None:
    """`redis` or `rediss` when the broker `url` names a Redis reached directly (no
    Sentinel): the broker's own Redis target can be built from it; None otherwise."""
    scheme = _scheme(url)
    return scheme if scheme in ("redis", "rediss") else None


def reads_queue_depths(url: str) -> bool:
    """Whether a scrape can read this broker's queue depths: not through Sentinel, whose
    master the worker's transport finds, not the gauge."""
    return _scheme(url) != "sentinel"


def redis_result_backend(url: str | None) -> bool:
    """Whether Celery keeps results for `url` (CELERY_RESULT_BACKEND) in Redis."""
    return bool(url) and _scheme(url or "") in _REDIS_RESULT_SCHEMES


def open_broker(
    url: str, *, redis_key_prefix: str = "", redis_target: RedisTarget | None = None
) -> Broker:
    """The operator's view of the broker; `redis_target` says how to reach a Redis broker
    (Sentinel, TLS), by default `url`."""
    if broker_kind(url) == "amqp":
        return amqp.AmqpBroker(url, management_url=os.environ.get(MANAGEMENT_URL_ENV) or None)
    return redis.RedisBroker(redis_target or RedisTarget.from_url(url), key_prefix=redis_key_prefix)
