"""A stock Celery producer on RabbitMQ, configured only as Celery's docs say for quorum
queues, publishes before any worker exists; the worker then declares the same queue
without a conflict and serves the job, and a countdown goes through RabbitMQ's delayed
delivery. A queue declared the old way (limits as arguments) is refused, which is why
upgrading takes a new vhost (docs/reliability.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery.signals import before_task_publish
from kombu import Connection, Exchange, Queue

from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for

FETCH = "tasks.pokemon.fetch_pokemon"
#: Where Celery sends a countdown on quorum queues (kombu.transport.native_delayed_delivery).
DELAYED_EXCHANGE = "celery_delayed_27"


@pytest.mark.broker("amqp")
def test_a_stock_producer_publishes_first_and_the_worker_serves_it(
    redis_url: str,
    sandbox: Any,
    new_broker: Callable[[int], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sent before any worker declared anything: kept (confirmed), then stored by a
    worker; a job with a 2 s countdown goes out through RabbitMQ's delayed-delivery
    exchange (the producer logs no direct-exchange warning: the producer, not the
    worker, is the one that would) and is stored after it, not before."""
    env = worker_environment(
        redis_url, sandbox, CELERY_BROKER_URL=new_broker(3),
        CELERY_RESULT_BACKEND=with_db(redis_url, 4),
    )  # fmt: skip
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    results = redis.Redis.from_url(redis_url, decode_responses=True)
    worker = WorkerProcess(env, concurrency=2)
    try:
        producer.send_task(FETCH, args=["pikachu"])  # declares `celery` as Celery does
        worker.start(producer)
        wait_for(lambda: results.exists("pokemon:pikachu"), timeout=20, what="pikachu stored")
        published: list[dict[str, Any]] = []

        def record(**fields: Any) -> None:
            published.append(fields)

        before_task_publish.connect(record, weak=False)
        try:
            with caplog.at_level(logging.WARNING, logger="celery"):
                later = producer.send_task(FETCH, args=["mew"], countdown=2)
        finally:
            before_task_publish.disconnect(record)
        assert "Direct exchanges are not supported" not in caplog.text
        (sent,) = published
        assert sent["exchange"].name == DELAYED_EXCHANGE
        assert sent["routing_key"].endswith(".celery"), sent["routing_key"]
        assert later.get(timeout=30)["name"] == "mew"
        assert "Direct exchanges are not supported" not in worker.log()
    finally:
        worker.stop()
        producer.close()
        results.close()


@pytest.mark.broker("amqp")
def test_a_queue_declared_with_the_old_arguments_is_refused(
    new_broker: Callable[[int], str],
) -> None:
    """RabbitMQ refuses to redeclare a queue whose arguments differ: an old deployment's
    queues (delivery limit and dead-lettering as arguments) cannot be reused in place."""
    url = new_broker(3)
    old = Queue("celery", Exchange("celery", type="topic"), routing_key="celery",
                queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 5})  # fmt: skip
    with Connection(url) as connection:
        old(connection.channel()).declare()
        producer = producer_app(url, "redis://127.0.0.1:1/0")
        stock = producer.amqp.queues["celery"]
        with pytest.raises(connection.channel_errors, match="inequivalent arg"):
            stock(connection.channel()).declare()
        producer.close()
