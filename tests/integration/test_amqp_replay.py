"""Replaying a parked job on RabbitMQ never loses it: the replay is published
`mandatory`, so a queue that is not there returns it, and the parked original stays."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kombu import Connection, Producer

from brokers import BrokerError, dead_letter_queue
from brokers.amqp import AmqpBroker, prepare_consumer


@pytest.mark.broker("amqp")
def test_a_replay_with_nowhere_to_go_leaves_the_job_parked(
    new_broker: Callable[[int], str],
) -> None:
    """No `celery` queue to return to (never declared, or deleted): the replay fails
    loudly and the job is still in `celery.dead`. Before, the unroutable publish was
    confirmed, the original acknowledged, and the job gone."""
    url = new_broker(3)
    with Connection(url, connect_timeout=5) as connection:
        prepare_consumer(connection)  # the .dead queues, as a worker declares them
        Producer(connection.channel()).publish(
            [["mew"], {}, {}], exchange="", routing_key=dead_letter_queue("celery"),
            serializer="json", headers={"task": "tasks.pokemon.fetch_pokemon", "id": "j-1"},
        )  # fmt: skip
    broker = AmqpBroker(url)
    with pytest.raises(BrokerError, match=r"NO_ROUTE"):
        broker.replay_parked(["celery"], None)
    assert [parked.task_id for parked in broker.parked(["celery"], 10)] == ["j-1"]
