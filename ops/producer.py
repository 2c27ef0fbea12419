"""The client another service writes to send jobs by name: it does not import the project.

One app, shared by the demo, the benchmark driver and the tests. On RabbitMQ it
publishes to the worker's queues without declaring them, as the README's producer recipe
does: a queue's arguments (quorum, delivery limit, dead-letter exchange) are the
worker's to declare, and RabbitMQ refuses a declaration that differs. (The recipe also
turns on publisher confirms; here every worker is up before a job is sent.)
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]  # kombu exports them untyped

from brokers import DEFAULT_QUEUE, QUEUES

# The worker's queues by name (the default queue, one per upstream of the registry), as a
# producer outside the project knows them.
QUEUE_NAMES = (DEFAULT_QUEUE, *QUEUES)


def producer_app(broker_url: str, backend_url: str, name: str = "producer") -> Celery:
    """A Celery client knowing only the broker and result backend URLs."""
    app = Celery(name, broker=broker_url, backend=backend_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    if broker_url.startswith("amqp"):
        app.conf.task_queues = [
            Queue(  # type: ignore[no-untyped-call]
                queue,
                Exchange(queue, type="topic"),  # type: ignore[no-untyped-call]
                routing_key=queue,
                no_declare=True,
            )
            for queue in QUEUE_NAMES
        ]
    return app
