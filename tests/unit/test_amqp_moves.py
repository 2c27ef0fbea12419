"""RabbitMQ admission's move out of the default queue, where a lost connection falls
between the copy's confirm and the original's acknowledgement (worker/amqp_admission.py):
the original comes back, and must not be moved, nor run, a second time."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from brokers import DEFAULT_QUEUE
from worker import amqp_admission
from worker.amqp_admission import Gate

TAG = "ctag-default"


class Message:
    """What the gate reads of a kombu message, and whether it was acknowledged."""

    def __init__(self, job_id: str, *, redelivered: bool) -> None:
        self.headers = {"task": "tasks.pokemon.fetch_pokemon", "id": job_id}
        self.delivery_info = {"consumer_tag": TAG, "redelivered": redelivered}
        self.acks = 0

    def ack(self) -> None:
        self.acks += 1


class Producers:
    """The app's producer pool: one producer, whatever is asked."""

    def acquire(self, **_: Any) -> Any:
        return self

    def __enter__(self) -> object:
        return object()

    def __exit__(self, *_: object) -> None:
        return None


class Consumer:
    """The worker's consumer as the move reads it: the default queue's tag, the pool."""

    def __init__(self) -> None:
        self.task_consumer = type("TaskConsumer", (), {"_active_tags": {DEFAULT_QUEUE: TAG}})()
        self.app = type("App", (), {"producer_pool": Producers()})()
        self.connection_errors = ()


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> tuple[Gate, list[str], fakeredis.FakeRedis]:
    """A gate whose upstream has no room, the queue of each copy published, and the
    Redis the marks go to."""
    client = fakeredis.FakeRedis()
    published: list[str] = []
    monkeypatch.setattr(amqp_admission, "_moved_mark",
                        lambda job_id: (client, f"admission:moved:{job_id}"))  # fmt: skip
    monkeypatch.setattr(amqp_admission.amqp, "move_message",
                        lambda _producer, queue, _message: published.append(queue))  # fmt: skip
    monkeypatch.setattr(Gate, "_no_room", lambda *_: "pokeapi")
    return Gate(Consumer()), published, client


def test_a_confirmed_move_marks_the_job_before_the_original_is_acknowledged(
    moves: tuple[Gate, list[str], fakeredis.FakeRedis],
) -> None:
    """The copy is published, the job marked, then the original acknowledged."""
    gate, published, client = moves
    message = Message("job-1", redelivered=False)
    assert gate.moved(message)
    assert published == ["pokeapi"]
    assert message.acks == 1
    assert client.exists("admission:moved:job-1")
    assert 0 < client.ttl("admission:moved:job-1") <= amqp_admission.MOVED_MARK_SECONDS


def test_an_original_delivered_again_after_its_move_is_dropped_not_moved_again(
    moves: tuple[Gate, list[str], fakeredis.FakeRedis],
) -> None:
    """The acknowledgement was lost with the connection: the original comes back,
    redelivered. It is acknowledged and dropped; only the copy runs."""
    gate, published, _ = moves
    assert gate.moved(Message("job-1", redelivered=False))
    again = Message("job-1", redelivered=True)
    assert gate.moved(again)
    assert published == ["pokeapi"]
    assert again.acks == 1


def test_a_redelivered_job_never_moved_is_handled_as_any_other(
    moves: tuple[Gate, list[str], fakeredis.FakeRedis],
) -> None:
    """No mark: a message delivered again for another reason is moved (or taken) as
    usual, never dropped."""
    gate, published, _ = moves
    message = Message("job-2", redelivered=True)
    assert gate.moved(message)
    assert published == ["pokeapi"]
    assert message.acks == 1


def test_a_mark_that_cannot_be_read_drops_nothing(
    moves: tuple[Gate, list[str], fakeredis.FakeRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis unreachable: the redelivered original is moved as usual; a job may run
    twice, none is lost."""
    gate, published, _ = moves

    def unreachable(_: str) -> Any:
        raise ConnectionError("Redis unreachable")

    monkeypatch.setattr(amqp_admission, "_moved_mark", unreachable)
    message = Message("job-1", redelivered=True)
    assert gate.moved(message)
    assert published == ["pokeapi"]
