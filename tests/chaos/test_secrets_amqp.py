"""On RabbitMQ, a real-looking API token is in no message body either: not in a job, not
in a retry waiting in the delayed-delivery queues, not in a parked message.

RabbitMQ's firehose (`rabbitmqctl trace_on`) copies every message published into the
vhost, and every delivery, to `amq.rabbitmq.trace`; a queue of the test's own bound
there sees every body the broker carried (jobs, retries on their way through the
`celery_delayed_*` exchanges, remote-control replies) without taking or returning any
message, so nothing the workers do is disturbed.
https://www.rabbitmq.com/docs/firehose
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection

from tests.chaos.conftest import Deployment
from tests.chaos.test_secrets import TOKEN, run_jobs
from tests.support.celery_worker import wait_for
from tests.support.rabbitmq import RabbitServer, vhost_of

TRACE_EXCHANGE = "amq.rabbitmq.trace"


def drained(server: RabbitServer, deployment: Deployment, besides: str) -> bool:
    """No message ready or unacknowledged in the vhost, but in the trace queue."""
    counts = server.queue_counts(deployment.env["CELERY_BROKER_URL"])
    return not any(sum(pair) for name, pair in counts.items() if name != besides)


@pytest.mark.broker("amqp")
def test_the_token_is_in_no_message_rabbitmq_carried(
    deploy: Callable[..., Deployment], sandbox: Any, rabbit_server: RabbitServer
) -> None:
    """401s, 5xx, a redirect echoing the token, task retries waiting in the broker: of
    every body published or delivered in the vhost, none holds the token."""
    if rabbit_server.node is None:
        pytest.skip("the firehose is switched on with rabbitmqctl, on a node the suite runs")
    accepted = sandbox.semaphore_token
    sandbox.semaphore_token = TOKEN
    deployment = deploy(
        SEMAPHORE_API_TOKEN=TOKEN,
        TASK_RETRY_BACKOFF="2",  # retries wait in the delayed-delivery queues
    )
    vhost = vhost_of(deployment.env["CELERY_BROKER_URL"])
    admin_url = f"{rabbit_server.url}/{vhost}"  # the suite's user: the trace exchange
    rabbit_server.node.rabbitmqctl("trace_on", "-p", vhost)
    bodies: list[bytes] = []
    routes: set[str] = set()
    try:
        with Connection(admin_url, connect_timeout=5) as connection:
            channel = connection.channel()
            queue, _, _ = channel.queue_declare("", exclusive=True, auto_delete=True)
            channel.queue_bind(queue, TRACE_EXCHANGE, "#")
            try:
                deployment.start_worker(concurrency=4)
                run_jobs(deployment, sandbox)
            finally:
                sandbox.semaphore_token = accepted
            wait_for(lambda: drained(rabbit_server, deployment, besides=queue), timeout=30,
                     what="every job finished")  # fmt: skip
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                bodies.append(bytes(message.body))
                routes.add(str(message.delivery_info["routing_key"]).split(".", 1)[0] + "."
                           + str(message.headers.get("exchange_name", "")))  # fmt: skip
    finally:
        rabbit_server.node.rabbitmqctl("trace_off", "-p", vhost)
    # Not vacuous: the jobs, and the retries through the delayed-delivery exchanges.
    assert len(bodies) > 20, len(bodies)
    # On failure, every route and every failure record's task, error and attempts.
    outcomes = [(r.get("task"), r.get("error"), r.get("attempts")) for r in deployment.failures()]
    assert any(route.startswith("publish.celery_delayed_") for route in routes), (
        f"routes: {sorted(routes)}; failures: {outcomes}"
    )
    leaks = [body[:200] for body in bodies if TOKEN.encode() in body]
    assert leaks == []
    print(f"secrets (RabbitMQ): bodies traced={len(bodies)} routes={sorted(routes)}")
