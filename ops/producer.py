"""The client another service writes to send jobs by name: it does not import the project.

One app, shared by the demo, the benchmark driver and the tests. It is a stock Celery
producer: no queue list, no routes. A job sent by task name lands in the default
`celery` queue, which every worker consumes. On RabbitMQ it is configured only as
Celery's documentation says for quorum queues (`task_default_queue_type = "quorum"`,
publisher confirms), and it declares that queue as Celery does by default, exactly as the
worker declares it; the queue's delivery limit and dead-lettering come from RabbitMQ
policies (`apiworker rabbitmq apply-policy`), not from its declaration. It publishes
through the worker's topic exchange (`apiworker.jobs`), so its countdowns take
RabbitMQ's delayed-delivery path, and it retries a publish through a leader election.
"""

from __future__ import annotations

from celery import Celery

from brokers import broker_kind


def producer_app(broker_url: str, backend_url: str, name: str = "producer") -> Celery:
    """A Celery client knowing only the broker and result backend URLs."""
    app = Celery(name, broker=broker_url, backend=backend_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    if broker_kind(broker_url) == "amqp":
        # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html#using-quorum-queues
        app.conf.task_default_queue_type = "quorum"
        # A job sent before any worker or policy exists is still kept: the queue is
        # declared on the way, and the confirm says RabbitMQ has it.
        app.conf.broker_transport_options = {"confirm_publish": True}
        # Through the worker's topic exchange, under the queue's name: Celery routes a
        # countdown through RabbitMQ's delayed-delivery exchanges only from a topic or
        # fanout exchange. From Celery's default (a direct exchange named after the
        # queue) it is delivered at once and held by a worker until due, past the
        # server's consumer_timeout for a long countdown.
        app.conf.task_default_exchange = "apiworker.jobs"
        app.conf.task_default_exchange_type = "topic"
        app.conf.task_default_routing_key = "celery"
        # A publish retried through a leader election (about 13.5 s), and each producer
        # starting on a node of its own (a failover list of several nodes).
        app.conf.task_publish_retry_policy = {
            "max_retries": 15, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0,
        }  # fmt: skip
        app.conf.broker_failover_strategy = "shuffle"
    return app
