"""The broker behind the operator commands, chosen once from the broker URL."""

from __future__ import annotations

import os

from ops.brokers.amqp import AmqpBroker
from ops.brokers.base import Broker, BrokerError, NotSupported, ParkedMessage, QueueDepth
from ops.brokers.redis import RedisBroker
from redisconn import RedisTarget
from worker.broker import broker_kind

__all__ = [
    "Broker",
    "BrokerError",
    "NotSupported",
    "ParkedMessage",
    "QueueDepth",
    "open_broker",
]

MANAGEMENT_URL_ENV = "RABBITMQ_MANAGEMENT_URL"


def open_broker(
    url: str, *, redis_key_prefix: str = "", redis_target: RedisTarget | None = None
) -> Broker:
    """`redis_target` says how to reach a Redis broker (Sentinel, TLS); default: `url`."""
    if broker_kind(url) == "amqp":
        return AmqpBroker(url, management_url=os.environ.get(MANAGEMENT_URL_ENV) or None)
    return RedisBroker(redis_target or RedisTarget.from_url(url), key_prefix=redis_key_prefix)
