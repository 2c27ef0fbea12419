"""How the driver enqueues a fetch job for each kind of system, as its users' code would.

Celery systems get `send_task` by name over one producer connection, the Dramatiq
baseline a `RedisBroker.enqueue` of a Dramatiq message, the asyncio probe an `RPUSH` of
the bare name onto its list. Each sender returns the job's id (the probe's jobs have
none: the name stands in), so the scenarios stay the same for every system.

A Celery job nobody waits on is sent with `ignore_result=True` (stock Celery: the worker
then stores no result-backend copy and the producer subscribes to no result channel),
as the README's producer recipe says; the scenarios that read `date_done` from the
result backend (hot, faulty) send with `waits=True`, and the `project-waited` system
(`System.waits`) has every job sent so, to measure what that copy costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import redis
from celery import Celery
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from bench.systems import CELERY, DRAMATIQ_PROTOCOL, FETCH_TASK, LIST_PROTOCOL, System

Send = Callable[[str], str]


@contextlib.contextmanager
def sender(
    system: System, producer: Celery, broker_url: str, *, waits: bool = False
) -> Iterator[Send]:
    """A function enqueueing one fetch job for a name on `system`'s queue; `waits`: the
    caller will read the job's state from the result backend."""
    if system.protocol == CELERY:
        with producer.producer_or_acquire() as connection:

            def send_celery(name: str) -> str:
                result = producer.send_task(
                    FETCH_TASK,
                    args=[name],
                    queue=system.queue,
                    producer=connection,
                    ignore_result=not (waits or system.waits),
                )
                return str(result.id)

            yield send_celery
    elif system.protocol == DRAMATIQ_PROTOCOL:
        broker = RedisBroker(url=broker_url)  # type: ignore[no-untyped-call]
        try:

            def send_dramatiq(name: str) -> str:
                message: Message[None] = Message(
                    queue_name=system.queue,
                    actor_name=system.actor,
                    args=(name,),
                    kwargs={},
                    options={},
                )
                return broker.enqueue(message).message_id

            yield send_dramatiq
        finally:
            broker.close()
    elif system.protocol == LIST_PROTOCOL:
        client = redis.Redis.from_url(broker_url)
        try:

            def send_list(name: str) -> str:
                client.rpush(system.queue, name)
                return name

            yield send_list
        finally:
            client.close()
    else:
        raise ValueError(f"unknown protocol {system.protocol!r}")
