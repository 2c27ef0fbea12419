"""The broker, chosen once from its URL: one module per broker, one interface.

`broker_module(url)` gives the module of the broker a URL names (`brokers.redis` or
`brokers.amqp`): its Celery settings, consumer preparation and countdown shaping, used by
the worker. `open_broker(url)` gives the operator's view of it (depths, parked messages,
replay), used by the CLI and the queue-depth gauge. Adding a broker is one module with
the same names, and one line in `_SCHEMES`.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Literal

from brokers import amqp, redis
from brokers.base import (
    ALL_QUEUES,
    DEFAULT_QUEUE,
    QUEUES,
    Broker,
    BrokerError,
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
    "NotSupported",
    "ParkedMessage",
    "QueueDepth",
    "broker_kind",
    "broker_module",
    "dead_letter_queue",
    "open_broker",
]

BrokerKind = Literal["redis", "amqp"]
MANAGEMENT_URL_ENV = "RABBITMQ_MANAGEMENT_URL"

_SCHEMES: dict[str, ModuleType] = {
    "redis": redis,
    "rediss": redis,
    "sentinel": redis,
    "amqp": amqp,
    "amqps": amqp,
    "pyamqp": amqp,
}


def broker_module(url: str) -> ModuleType:
    """The module of the broker `url` names; any other scheme is a configuration error."""
    scheme = url.split("://", 1)[0].lower()
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"CELERY_BROKER_URL: unsupported scheme {scheme!r}; use redis://, rediss://, "
            "sentinel://, amqp:// or amqps://"
        ) from None


def broker_kind(url: str) -> BrokerKind:
    kind: BrokerKind = broker_module(url).KIND
    return kind


def open_broker(
    url: str, *, redis_key_prefix: str = "", redis_target: RedisTarget | None = None
) -> Broker:
    """The operator's view of the broker; `redis_target` says how to reach a Redis broker
    (Sentinel, TLS), by default `url`."""
    if broker_kind(url) == "amqp":
        return amqp.AmqpBroker(url, management_url=os.environ.get(MANAGEMENT_URL_ENV) or None)
    return redis.RedisBroker(redis_target or RedisTarget.from_url(url), key_prefix=redis_key_prefix)
