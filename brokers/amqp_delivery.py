"""Native delayed delivery on a RabbitMQ cluster, set up once through the live connection.

Celery 5.7's `DelayedDelivery` consumer step (celery/worker/consumer/delayed_delivery.py)
declares RabbitMQ's delayed-delivery exchanges and queues and binds the worker's queues
to them once for every URL of the broker URL, each through a new connection retried 3
times. With a failover list (`amqp://n1//;amqp://n2//;amqp://n3//`, one URL per node of
one cluster) every reconnection after a node dies walks the whole list, and the dead
node's URL holds the consumer back for its retries (3, seconds apart) before it consumes
again, although the consumer is already connected to a live node. No setting turns that
walk off (Celery has `broker_native_delayed_delivery_queue_type` and nothing else for
this step), so this step replaces it in the worker's consumer (worker/consumer.py).

Exchanges, queues and bindings belong to the cluster, not to a node: declaring them once,
through the connection the consumer has just made to a node that answered, is enough. A
failure there is a connection error like any other: the consumer reconnects (to the next
node of the list) and runs its steps again. The declarations themselves are kombu's
(`kombu.transport.native_delayed_delivery`), unchanged.

Written against Celery 5.7's step (its `_validate_configuration` and `_bind_queues`);
`pyproject.toml` bounds Celery below 5.8 so a release that changes them is noticed.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.transport.native_delayed_delivery import (
    declare_native_delayed_delivery_exchanges_and_queues,
)

log = logging.getLogger(__name__)

#: The step it replaces in Celery's consumer blueprint.
CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
STEP = "brokers.amqp_delivery:ClusterDelayedDelivery"


class ClusterDelayedDelivery(DelayedDelivery):  # type: ignore[misc]  # Celery is untyped
    """Celery's delayed-delivery set-up, once per connection, on the node it reached."""

    def start(self, c: Any) -> None:
        app = c.app
        self._validate_configuration(app)
        connection = c.connection
        declare_native_delayed_delivery_exchanges_and_queues(
            connection, app.conf.broker_native_delayed_delivery_queue_type
        )
        self._bind_queues(app, connection)
        log.debug("native delayed delivery set up through %s", connection.as_uri())


def consumer_steps(steps: list[str]) -> list[str]:
    """Celery's consumer steps with its delayed-delivery step replaced by this one."""
    return [STEP if step == CELERY_STEP else step for step in steps]
