"""Malformed broker items become refused messages; everything kombu stores passes through;
one command client per channel."""

from __future__ import annotations

import json

import pytest
import redis
from kombu import Connection

from worker import transport
from worker.transport import REFUSED_CONTENT_TYPE, envelope_or_refused

ENVELOPE = {"body": "W10=", "headers": {}, "properties": {"body_encoding": "base64"}}


def test_a_well_formed_envelope_passes_unchanged() -> None:
    """Ordinary jobs are untouched."""
    assert envelope_or_refused(json.dumps(ENVELOPE)) == ENVELOPE


def test_an_unacked_record_passes_unchanged() -> None:
    """kombu's own [message, exchange, routing_key] records restore as before."""
    record = [ENVELOPE, "celery", "celery"]
    assert envelope_or_refused(json.dumps(record)) == record


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2, 3]",
        '{"hello": "world"}',
        json.dumps({"body": "%%%", "properties": {"body_encoding": "base64"}}),
        b"\xff\xfe",
    ],
)
def test_malformed_items_become_a_refused_content_type(raw: str | bytes) -> None:
    """The worker refuses and logs them like a pickle message, instead of dying."""
    message = envelope_or_refused(raw)
    assert message["content-type"] == REFUSED_CONTENT_TYPE
    assert message["properties"]["body_encoding"] == "base64"


def test_a_channel_reuses_one_command_client(redis_url: str) -> None:
    """kombu would build a `redis.Redis` per command; the installed method builds one per
    channel and pool, and a new one once the channel's pool is replaced."""
    transport.install()
    with Connection(redis_url) as connection:
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


def test_messages_round_trip_through_the_reused_client(redis_url: str) -> None:
    """Publish, consume and acknowledge (the calls that go through it) still work."""
    transport.install()
    with Connection(redis_url) as connection:
        queue = connection.SimpleQueue("transport-test")
        for number in range(3):
            queue.put({"n": number})
        received = [queue.get(timeout=5) for _ in range(3)]
        for message in received:
            message.ack()
        assert sorted(message.payload["n"] for message in received) == [0, 1, 2]
        queue.close()
