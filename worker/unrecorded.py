"""Put a message back on its queue when kombu could not record it as unacknowledged.

kombu's Redis transport takes a message off its queue with BRPOP and only then, over
another connection, records it as unacknowledged (`QoS.append`: the `unacked` hash the
visibility timeout restores from). If Redis goes away between the two (a crash, a
restart, a dropped connection), the message exists only in this worker's memory, and
the connection error that follows makes Celery drop it: the job is lost without a
record. tests/chaos/test_redis_restart.py lost one job in about six Redis crashes so.

Here a message whose record failed is kept in memory and pushed back to its queue (the
end BRPOP takes next) as soon as the channel starts its next BRPOP on a live connection.
If the record had in fact been written before the connection died, the visibility
timeout restores the message too: the job runs twice, which results tolerate (a newer
result is never overwritten), rather than not at all.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_lock = threading.Lock()
# (payload, exchange, routing key) of each message whose unacknowledged record failed.
_pending: list[tuple[dict[str, Any], str, str]] = []
# kombu is untyped: its originals are called through Any.
_kombu_append: Any = kombu_redis.QoS.append
_kombu_brpop_start: Any = kombu_redis.Channel._brpop_start


def append(qos: Any, message: Any, delivery_tag: str) -> None:
    """kombu's `QoS.append`; on a connection error, keep the message to put it back."""
    try:
        _kombu_append(qos, message, delivery_tag)
    except qos.channel.connection_errors:
        delivery = message.delivery_info
        with _lock:
            _pending.append((message._raw, delivery["exchange"], delivery["routing_key"]))
        log.warning(
            "broker connection lost before a message was recorded as taken: it goes back "
            "to queue %s once Redis answers",
            delivery["routing_key"],
        )
        raise


def brpop_start(channel: Any, timeout: float | None = None) -> None:
    """kombu's `Channel._brpop_start`, after putting back any pending message."""
    if _pending:
        requeue(channel)
    _kombu_brpop_start(channel, timeout)


def requeue(channel: Any) -> int:
    """Push every pending message back to its queue; on failure keep them for later."""
    with _lock:
        taken = list(_pending)
        _pending.clear()
    if not taken:
        return 0
    try:
        with channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            for payload, exchange, routing_key in taken:
                channel._do_restore_message(payload, exchange, routing_key, pipe)
            pipe.execute()
    except channel.connection_errors:
        with _lock:
            _pending[:0] = taken
        return 0
    log.warning("put %d message(s) back on their queue after a broker outage", len(taken))
    return len(taken)


def install() -> None:
    """Wrap the two kombu methods (on the class: every Redis URL kind uses them)."""
    kombu_redis.QoS.append = append  # type: ignore[method-assign]
    kombu_redis.Channel._brpop_start = brpop_start  # type: ignore[method-assign]
