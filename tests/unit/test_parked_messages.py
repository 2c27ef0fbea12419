"""A parked job reads the same on either broker: its task, id and arguments from
Celery's message protocol 2, and what cannot be read as `?` or empty, never an error."""

from __future__ import annotations

import base64
import json

import pytest
from kombu.message import Message

from brokers.amqp import _parked
from brokers.base import ParkedMessage
from brokers.redis import PARKED_REASON, parked_message

HEADERS = {"task": "tasks.pokemon.fetch_pokemon", "id": "job-1", "lang": "py"}
BODY = [["pikachu"], {"force": True}, {"callbacks": None}]


def test_a_celery_job_shows_its_task_id_and_arguments() -> None:
    """Headers and body as Celery's protocol 2 lays them out."""
    parked = ParkedMessage.of_job("pokeapi", HEADERS, BODY, deliveries=3, reason="r")
    assert parked == ParkedMessage(
        "pokeapi", "tasks.pokemon.fetch_pokemon", "job-1", ["pikachu"], {"force": True}, 3, "r"
    )


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        (None, None),
        (["task"], "not a job"),
        ({}, [5, 6]),
        ({}, [["pikachu"]]),
        ({}, {"args": ["pikachu"]}),
    ],
)
def test_what_cannot_be_read_shows_as_unknown(headers: object, payload: object) -> None:
    """No headers, headers that are no mapping, a body of another shape: `?`, empty."""
    parked = ParkedMessage.of_job("cms", headers, payload, deliveries=0, reason="?")
    assert (parked.task, parked.task_id, parked.args, parked.kwargs) == ("?", "", [], {})


def test_both_brokers_read_a_parked_job_alike() -> None:
    """The Redis list's JSON envelope (body in base64) and a RabbitMQ message with its
    `x-death` header give the same job; only the deliveries and reason are each's own."""
    envelope = json.dumps(
        {
            "body": base64.b64encode(json.dumps(BODY).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": HEADERS,
            "properties": {"body_encoding": "base64", "priority": 0},
        }
    )
    on_redis = parked_message("pokeapi", envelope, 4)
    message = Message(
        body=json.dumps(BODY).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={**HEADERS, "x-death": [{"count": 5, "reason": "delivery_limit"}]},
    )
    on_rabbitmq = _parked("pokeapi", message)
    assert on_redis == ParkedMessage.of_job(
        "pokeapi", HEADERS, BODY, deliveries=4, reason=PARKED_REASON
    )
    assert on_rabbitmq == ParkedMessage.of_job(
        "pokeapi", HEADERS, BODY, deliveries=5, reason="delivery_limit"
    )


def test_an_unreadable_body_keeps_the_headers() -> None:
    """Some messages are parked because their body cannot be read: the task and id still
    show, on either broker."""
    envelope = json.dumps({"body": "%%%", "headers": HEADERS, "properties": {}})
    on_redis = parked_message("pokeapi", envelope, 1)
    message = Message(body=b"\x80not json", content_type="application/json", headers=HEADERS)
    on_rabbitmq = _parked("pokeapi", message)
    for parked in (on_redis, on_rabbitmq):
        assert (parked.task, parked.task_id, parked.args) == (
            "tasks.pokemon.fetch_pokemon",
            "job-1",
            [],
        )
