"""Warm shutdown hands back, at once, every job this process holds but has not started.

On SIGTERM Celery stops consuming and lets the running jobs finish; the jobs it had
prefetched for later wait in the pool meanwhile, and reach the broker again only when
the connection closes, after the last running job (up to TASK_TIME_LIMIT). Another
worker could have run them all that time. So as the shutdown begins on the Redis broker,
the channel stops taking, the thread pool's queued jobs are cancelled and their messages
handed back: they go back to the head of their queue, no delivery counted
(brokers/redis_transport.py), and a live worker takes them within its pick-up delay. (On
RabbitMQ the channel is not safe to use from another thread; its prefetched messages
return as the connection closes. Celery's thread pool cancels its queued jobs when it
stops, but leaves their messages to the closing connection.)

Running jobs finish and are acknowledged as usual. On Redis the process's heartbeat, on
a thread of its own (brokers/redis_threads.py), goes on until the channel closes after
the last of them, whatever the pool: no other worker takes them for a dead holder's.

It runs on a thread of its own: the shutdown signal arrives in a signal handler, which
must not wait on the locks the interrupted code may hold.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from celery.worker import state

from brokers import redis_transport
from brokers.redis_transport import ReliableChannel

log = logging.getLogger("worker.shutdown")

_consumer: dict[str, Any] = {}


@worker_ready.connect
def remember_consumer(sender: Any = None, **_: Any) -> None:
    _consumer["current"] = sender


@worker_shutting_down.connect
def hand_back_unstarted_jobs(how: str = "", **_: Any) -> None:
    if how != "Warm" or "current" not in _consumer:
        return
    threading.Thread(target=hand_back, args=(_consumer["current"],), name="hand-back").start()


def hand_back(consumer: Any) -> int:
    """Stop taking, cancel the pool's queued jobs and requeue their messages; how many
    went back."""
    executor = getattr(consumer.pool, "executor", None)
    channel = getattr(consumer.task_consumer, "channel", None)
    if executor is None or not isinstance(channel, ReliableChannel):
        return 0  # another pool or broker: the closing connection returns them
    channel.stop_taking()
    executor.shutdown(wait=False, cancel_futures=True)
    # Finished meanwhile, or waiting for a countdown (held by the consumer, not the pool).
    unstarted = [
        request
        for request in state.reserved_requests - state.active_requests
        if not request.acknowledged and request.eta is None
    ]
    try:
        back = channel.hand_back([request.message.delivery_tag for request in unstarted])
    except channel.connection_errors:  # the closing channel hands them back instead
        log.warning("Redis unreachable at shutdown: jobs go back as the channel closes")
        return 0
    for request in unstarted:
        request.acknowledged = True
    if back:
        log.info("warm shutdown: handed %d job(s) not yet started back to the broker", back)
    return back


def drop_lost_jobs(channel: ReliableChannel) -> int:
    """This worker was declared dead (brokers/redis_transport.py): the messages it held
    went back to their queues for others, so the jobs its threads pool has not started
    must not run here. They are cancelled and their messages handed back: those the
    rescue took are skipped, those taken since go back to their queue. How many were
    dropped. (The prefork and solo pools have no queue of unstarted jobs to reach here:
    prefork runs what it gave its children, solo stops at the batch it was delivering.)
    """
    consumer = _consumer.get("current")
    tracker = getattr(consumer, "pending_jobs", None)
    if tracker is None:
        return 0
    tracker.cancel_unstarted()
    # Cancelled, or waiting for a countdown (held by the consumer, not the pool).
    unstarted = [
        request
        for request in state.reserved_requests - state.active_requests
        if not request.acknowledged and request.eta is None
    ]
    back = channel.hand_back([request.message.delivery_tag for request in unstarted])
    for request in unstarted:
        request.acknowledged = True
        state.task_ready(request)
    if unstarted:
        log.error("declared dead: %d job(s) not started are not run here (%d taken since "
                  "the rescue went back to their queue)", len(unstarted), back)  # fmt: skip
    return len(unstarted)


redis_transport.on_declared_dead.append(drop_lost_jobs)
