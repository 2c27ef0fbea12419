"""The outside producer knows the worker's queues without importing the worker."""

from __future__ import annotations

from brokers import DEFAULT_QUEUE, QUEUES
from ops.producer import QUEUE_NAMES, producer_app


def test_the_producer_names_every_queue_the_worker_consumes() -> None:
    assert set(QUEUE_NAMES) == {DEFAULT_QUEUE, *QUEUES}


def test_on_rabbitmq_the_producer_declares_no_queue() -> None:
    app = producer_app("amqp://guest:guest@127.0.0.1:5672/x", "redis://127.0.0.1:6379/15")
    queues = app.conf.task_queues
    assert {queue.name for queue in queues} == set(QUEUE_NAMES)
    assert all(queue.no_declare for queue in queues)
    assert all(queue.exchange.type == "topic" for queue in queues)
