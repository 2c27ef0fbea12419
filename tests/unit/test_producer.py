"""The outside producer is a stock Celery producer: no queue list, no routes."""

from __future__ import annotations

from brokers import DEFAULT_QUEUE
from brokers.amqp import PUBLISH_RETRY_POLICY, amqp_queue
from ops.producer import producer_app


def test_on_rabbitmq_the_producer_is_configured_as_celerys_docs_say() -> None:
    """Quorum queues and publisher confirms, the worker's topic exchange (countdowns take
    the delayed-delivery path), a publish retry through a leader election, and no queue
    list or routes."""
    app = producer_app("amqp://guest:guest@127.0.0.1:5672/x", "redis://127.0.0.1:6379/15")
    assert app.conf.task_default_queue_type == "quorum"
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.task_queues is None
    assert app.conf.task_routes is None
    assert (app.conf.task_default_exchange, app.conf.task_default_exchange_type) == (
        "apiworker.jobs",
        "topic",
    )
    assert app.conf.task_publish_retry_policy == PUBLISH_RETRY_POLICY


def test_the_producer_declares_the_default_queue_as_the_worker_does() -> None:
    """Same name, durability, arguments, exchange and binding: RabbitMQ accepts either
    declaration after the other."""
    app = producer_app("amqp://guest:guest@127.0.0.1:5672/x", "redis://127.0.0.1:6379/15")
    stock = app.amqp.queues[DEFAULT_QUEUE]
    ours = amqp_queue(DEFAULT_QUEUE)
    assert stock.queue_arguments == ours.queue_arguments == {"x-queue-type": "quorum"}
    assert (stock.durable, stock.auto_delete, stock.exclusive) == (
        ours.durable,
        ours.auto_delete,
        ours.exclusive,
    )
    assert (stock.exchange.name, stock.exchange.type, stock.routing_key) == (
        ours.exchange.name,
        ours.exchange.type,
        ours.routing_key,
    )
