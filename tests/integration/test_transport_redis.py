"""kombu's Redis transport as the worker installs it, against a real Redis.

One command client per channel; a detached channel fails with a connection error (which
kombu's closing code ignores) rather than an AttributeError that ends the worker; and a
message taken from its queue but not recorded as unacknowledged goes back to the queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from worker import transport, unrecorded

QUEUE = "transport-test"


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    transport.install()
    with Connection(redis_url) as made:
        yield made


def test_a_channel_reuses_one_command_client(redis_url: str, connection: Connection) -> None:
    """kombu would build a `redis.Redis` per command; the installed method builds one per
    channel and pool, and a new one once the channel's pool is replaced."""
    channel = connection.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
        assert first.ping()
    given = redis.Redis.from_url(redis_url)
    with channel.conn_or_acquire(given) as passed:
        assert passed is given
    given.close()
    channel._pool = None  # what kombu does when the channel closes
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool


def test_messages_round_trip_through_the_reused_client(connection: Connection) -> None:
    """Publish, consume and acknowledge (the calls that go through it) still work."""
    queue = connection.SimpleQueue(QUEUE)
    for number in range(3):
        queue.put({"n": number})
    received = [queue.get(timeout=5) for _ in range(3)]
    for message in received:
        message.ack()
    assert sorted(message.payload["n"] for message in received) == [0, 1, 2]
    queue.close()


def test_a_detached_channel_raises_a_connection_error_that_closing_ignores(
    connection: Connection,
) -> None:
    """After a lost connection kombu detaches the transport, then closes the channel
    again to restore its messages: that is a connection error, not an AttributeError."""
    channel = connection.default_channel
    channel._pool = None
    channel.connection.client = None  # what kombu's collect() leaves behind
    with pytest.raises(redis.ConnectionError), channel.conn_or_acquire():
        pass
    assert issubclass(redis.ConnectionError, connection.connection_errors)


def test_a_message_whose_unacked_record_failed_goes_back_to_its_queue(
    connection: Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis drops between BRPOP and the unacked record: the message is put back, not lost."""
    queue = connection.SimpleQueue(QUEUE)
    queue.put({"n": 1})

    def lost(*_: object) -> None:
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(unrecorded, "_kombu_append", lost)
    with pytest.raises(redis.ConnectionError):
        queue.get(timeout=5)
    assert redis_client.llen(QUEUE) == 0  # taken off the list, recorded nowhere
    assert redis_client.hlen("unacked") == 0
    monkeypatch.undo()
    transport.install()

    assert unrecorded.requeue(connection.default_channel) == 1
    assert redis_client.llen(QUEUE) == 1
    again = queue.get(timeout=5)
    assert again.payload == {"n": 1}
    assert again.delivery_info.get("redelivered") is True
    again.ack()
    queue.close()
