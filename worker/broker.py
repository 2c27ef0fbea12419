"""What the Celery app needs to know about its broker, chosen once from the broker URL.

Two brokers are supported, each with the settings that make its guarantees hold
(https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/index.html):

- **Redis** (`redis://`, `rediss://`, `sentinel://`): one dependency, one box. A job a
  dead worker had taken comes back after `BROKER_VISIBILITY_TIMEOUT` plus a sweep.
- **RabbitMQ** (`amqp://`, `amqps://`): several hosts. Every queue is a quorum queue
  (replicated on a cluster), every publish is confirmed, a dead worker's jobs are
  redelivered as soon as its connection drops, and a message delivered
  `BROKER_DELIVERY_LIMIT` times without an acknowledgement (one that keeps killing its
  workers) is dead-lettered to `{queue}.dead` instead of looping forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from kombu import Exchange, Queue  # type: ignore[attr-defined]  # kombu exports them untyped

from worker.settings import WorkerSettings, broker_kind_of

BrokerKind = Literal["redis", "amqp"]

QUEUES = ("pokeapi", "cms", "semaphore")
DEFAULT_QUEUE = "celery"
ALL_QUEUES = (*QUEUES, DEFAULT_QUEUE)

#: Where RabbitMQ parks messages it will not deliver again, and the suffix of their queues.
DEAD_LETTER_EXCHANGE = "apiworker.dead"
#: How long the Redis broker's sweep mutex outlives a worker killed mid-sweep.
REDIS_SWEEP_MUTEX_SECONDS = 3
DEAD_LETTER_SUFFIX = ".dead"


def broker_kind(url: str) -> BrokerKind:
    """Which broker a URL names; anything else is a configuration error."""
    return "amqp" if broker_kind_of(url) == "amqp" else "redis"


def dead_letter_queue(name: str) -> str:
    return f"{name}{DEAD_LETTER_SUFFIX}"


@dataclass(frozen=True)
class BrokerConfig:
    """The Celery settings of one broker kind, and how its countdowns must be shaped."""

    kind: BrokerKind
    conf: dict[str, Any]

    @staticmethod
    def shape_countdown(kind: BrokerKind, seconds: float) -> float:
        """RabbitMQ's native delayed delivery counts in whole seconds (and Celery refuses
        a countdown below one there), so countdowns are rounded up on that broker."""
        if kind == "amqp" and seconds > 0:
            return float(math.ceil(seconds))
        return seconds


def broker_config(settings: WorkerSettings) -> BrokerConfig:
    kind = broker_kind(settings.broker_url)
    if kind == "amqp":
        return BrokerConfig(kind, _amqp_conf(settings))
    return BrokerConfig(kind, _redis_conf(settings))


def _redis_conf(settings: WorkerSettings) -> dict[str, Any]:
    return {
        # An unacknowledged message is redelivered after the visibility timeout; it must
        # exceed the longest a delivered job can legitimately stay unacknowledged (see
        # WorkerSettings.safe_visibility_timeout), or such a job runs twice. CFG#broker-
        # transport-options and the Redis caveats page:
        # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#caveats
        # A dead worker's unacknowledged jobs are swept back to their queue every
        # BROKER_RESTORE_INTERVAL seconds once older than the visibility timeout. A socket
        # timeout lets a worker notice a Redis that vanished without closing the connection.
        "broker_transport_options": {
            # brokers/redis_transport.py: a dead holder's jobs go back to their queues
            # once its heartbeat is older than BROKER_HEARTBEAT_TIMEOUT; a job whose
            # deliveries ended with a dead holder BROKER_DELIVERY_LIMIT times is parked.
            "heartbeat_timeout": settings.broker_heartbeat_timeout,
            "heartbeat_interval": settings.broker_heartbeat_timeout / 5,
            "delivery_limit": settings.broker_delivery_limit,
            # The backstop for a worker alive but stuck: a message held longer than this
            # goes back to its queue. It must exceed the longest a delivered job can stay
            # unacknowledged (WorkerSettings.safe_visibility_timeout), or such a job runs
            # twice. Checked every BROKER_RESTORE_INTERVAL seconds.
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.broker_restore_interval,
            # A socket timeout lets a worker notice a Redis that vanished without closing
            # the connection.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # Each queue has its own direct exchange and key: Celery would otherwise bind them
        # all to the default exchange with the same key, and a message could reach every
        # queue. CFG#task-queues
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
            for name in ALL_QUEUES
        ],
    }


def amqp_queue(name: str, settings: WorkerSettings) -> Queue:
    """A durable quorum queue that dead-letters what it will not deliver again.

    Topic exchanges, because Celery's native delayed delivery (countdowns and retries
    on quorum queues) cannot route through direct ones.
    """
    return Queue(  # type: ignore[no-untyped-call]
        name,
        Exchange(name, type="topic", durable=True),  # type: ignore[no-untyped-call]
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": settings.broker_delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
            # Dead-lettered copies are confirmed by the dead-letter queue before they
            # leave this one: a parked message is never lost on the way.
            # (RabbitMQ requires reject-publish overflow for that strategy.)
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def amqp_dead_letter_queues() -> list[Queue]:
    """The queues that keep parked messages: never consumed by workers, only by
    `apiworker dead-letters`."""
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)  # type: ignore[no-untyped-call]
    return [
        Queue(  # type: ignore[no-untyped-call]
            dead_letter_queue(name),
            exchange,
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in ALL_QUEUES
    ]


def _amqp_conf(settings: WorkerSettings) -> dict[str, Any]:
    return {
        # Publisher confirms: a publish returns only once RabbitMQ has taken the message
        # (on a quorum queue: once a majority of its replicas has it), so a job is never
        # dropped silently between producer and queue. CFG#broker-transport-options,
        # https://www.rabbitmq.com/docs/confirms
        "broker_transport_options": {"confirm_publish": True},
        # A dead peer is noticed within two heartbeats, not at the next TCP timeout.
        # CFG#broker-heartbeat
        "broker_heartbeat": 30,
        "task_queues": [amqp_queue(name, settings) for name in ALL_QUEUES],
        # Quorum queues have no global QoS; Celery detects them and uses per-consumer
        # prefetch, and routes countdowns through RabbitMQ's delayed-delivery exchanges
        # instead of holding them in the worker. CFG#worker-detect-quorum-queues,
        # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html#using-quorum-queues
        "task_default_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }
