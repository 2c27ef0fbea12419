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
through the connection the consumer has just made to a node that answered, is enough.

What fails there is sorted as Celery's consumer sorts it:

- a connection error (the node went away, `CONNECTION_FORCED` in a rolling restart) is
  raised as itself, never inside an `ExceptionGroup` (Celery's `_bind_queues` groups
  them), so the consumer reconnects to the next node and runs its steps again;
- a channel error (403 ACCESS_REFUSED: a user without rights on the delayed-delivery
  exchanges; 406 PRECONDITION_FAILED: one of them declared otherwise) is logged with what
  it means, and the worker consumes on, as Celery's own step does: countdowns then cannot
  be routed, which `apiworker health`'s policy and permission checks show.

kombu's helpers open a channel per call and leave it open (1 + one per queue, for the
connection's life); here they all share one channel, closed when the step is done
(`_SharedChannel`), and a new one after a channel error. The declarations themselves are
kombu's (`kombu.transport.native_delayed_delivery`), unchanged, with Celery's exchange
names (`celery_delayed_0..27`, `celery_delayed_delivery`).

Written against Celery 5.7's step (its `_validate_configuration`);
`pyproject.toml` bounds Celery below 5.8 so a release that changes it is noticed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.common import Broadcast
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

log = logging.getLogger(__name__)

#: The step it replaces in Celery's consumer blueprint.
CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
STEP = "brokers.amqp_delivery:ClusterDelayedDelivery"


class _SharedChannel:
    """A stand-in for the connection that kombu's helpers take: every `channel()` they
    ask for is one channel, opened on first use and closed by `close()`. (kombu's helpers
    take a connection, not a channel, and never close the channels they open.)"""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._channel: Any = None

    def channel(self) -> Any:
        if self._channel is None:
            self._channel = self._connection.channel()
        return self._channel

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(*self._connection.connection_errors,
                                     *self._connection.channel_errors):  # fmt: skip
                channel.close()


class ClusterDelayedDelivery(DelayedDelivery):  # type: ignore[misc]  # Celery is untyped
    """Celery's delayed-delivery set-up, once per connection, on the node it reached."""

    def start(self, c: Any) -> None:
        app = c.app
        self._validate_configuration(app)
        connection = c.connection
        # Typed as kombu's Connection for kombu's helpers: they only call `channel()`.
        shared: Any = _SharedChannel(connection)
        queue_type = app.conf.broker_native_delayed_delivery_queue_type
        steps: list[tuple[str, Callable[[], None]]] = [
            (
                "declare the delayed-delivery exchanges and queues",
                partial(declare_native_delayed_delivery_exchanges_and_queues, shared, queue_type),
            ),
            *(
                (f"bind queue {queue.name}",
                 partial(bind_queue_to_native_delayed_delivery_exchange, shared, queue))
                for queue in app.amqp.queues.values()
                if not isinstance(queue, Broadcast)
            ),
        ]  # fmt: skip
        failed = 0
        try:
            for what, step in steps:
                try:
                    step()
                except connection.channel_errors as exc:
                    # The server closed the channel: the next step gets a new one.
                    failed += 1
                    shared.close()
                    log.error(
                        "native delayed delivery: cannot %s (%s); countdowns through it "
                        "cannot be routed until that is fixed; the worker consumes on",
                        what,
                        exc,
                    )
        finally:
            shared.close()
        if not failed:
            log.debug("native delayed delivery set up through %s", connection.as_uri())


def consumer_steps(steps: list[str]) -> list[str]:
    """Celery's consumer steps with its delayed-delivery step replaced by this one."""
    return [STEP if step == CELERY_STEP else step for step in steps]
