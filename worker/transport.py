"""Three adjustments to kombu's Redis transport, installed when the Celery app is built.

1. Keep one malformed broker message from stopping the worker.

kombu's Redis transport decodes each raw queue item in the consumer loop. An item that
is not JSON, a JSON value that is not a message envelope, or an envelope whose body is
not valid base64 raises there, and Celery ends the worker with "Unrecoverable error".
Worse, the last kind goes back on the queue as the worker dies, so every worker that
takes it dies too. Anyone who can write to the broker could stop the service.

This wraps the transport's `loads` so that such an item becomes a message of a content
type the worker refuses (`accept_content` is JSON only): Celery logs it and drops it, as
it does a pickle message, and the next job is served. Well-formed envelopes pass
through untouched. Proven by tests/chaos/test_poison_messages.py.

2. Build the channel's command client once. kombu's `Channel.conn_or_acquire` wraps its
connection pool in a new `redis.Redis` for every command it sends outside the consumer
loop: marking a delivered message unacknowledged, acknowledging it, publishing. With
redis-py 8 a `Redis()` costs ~0.1 ms of CPU (it builds its response-callback table), and
a job with late acks needs two of them, about 6% of a job's CPU here. The object holds no
connection of its own (the pool does) and redis-py clients are safe to share between
threads, so one per channel and pool does the same work. See docs/performance.md.

3. Survive a lost broker connection. Celery closes the dead connection's channel, which
tries to restore its unacknowledged messages through a connection kombu has already
detached; the AttributeError that raised ended the worker (about one Redis restart in
ten). It is now a connection error, which the closing code ignores (`conn_or_acquire`).
And a message taken from its queue but not yet recorded as unacknowledged when the
connection dropped is put back (`worker/unrecorded.py`).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from worker import unrecorded

REFUSED_CONTENT_TYPE = "application/x-malformed-queue-item"
_KEPT_BYTES = 4096


def envelope_or_refused(raw: str | bytes) -> Any:
    """The envelope of a well-formed item, or one the worker will refuse and log.

    The transport also decodes its own unacknowledged-message records with this
    function: `[envelope, exchange, routing_key]`, passed through as they are.
    """
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = None
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], dict):
        return value
    if isinstance(value, dict) and isinstance(value.get("properties"), dict):
        if value["properties"].get("body_encoding") != "base64":
            return value
        try:
            base64.b64decode(value.get("body", ""), validate=True)
            return value
        except (TypeError, ValueError, binascii.Error):
            pass
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
    return {
        "body": base64.b64encode(data[:_KEPT_BYTES]).decode(),
        "content-type": REFUSED_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": {},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": ""},
            "priority": 0,
        },
    }


@contextmanager
def conn_or_acquire(channel: Any, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
    """kombu's `Channel.conn_or_acquire`, with the client built once per channel and pool.

    A closed channel drops its pool; the next call then builds a client for the new one.
    A channel whose connection was already detached (kombu closes it again after a lost
    broker connection, to restore its unacknowledged messages) cannot build one: that is
    a connection error, which the closing code ignores, not an AttributeError that ends
    the worker. The messages stay recorded in Redis and return after the visibility
    timeout.
    """
    if client:
        yield client
        return
    connection = getattr(channel, "connection", None)
    if channel._pool is None and getattr(connection, "client", None) is None:
        raise redis.ConnectionError("broker connection already closed")
    pool = channel.pool
    cached: redis.Redis | None = channel.__dict__.get("_apiworker_client")
    if cached is None or cached.connection_pool is not pool:
        cached = channel._create_client()
        channel.__dict__["_apiworker_client"] = cached
    yield cached


def install() -> None:
    """Route the Redis transport's message decoding through `envelope_or_refused`, and
    let its channels reuse one command client."""
    # kombu declares `loads` with a wider signature; the transport calls it with one item.
    kombu_redis.loads = envelope_or_refused  # type: ignore[attr-defined,assignment]
    # Replacing the method on kombu's class covers every Redis URL kind (redis, rediss,
    # sentinel); a transport subclass would not survive kombu's URL-scheme lookup.
    kombu_redis.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign,assignment]
    unrecorded.install()
