"""What a delivery says about its way back: its home queue and its own headers.

A job that is retried or deferred is published again from the delivery it came in. Two
things of that delivery are the broker's, not the job's: RabbitMQ's delayed delivery
rewrites its routing key and adds `x-` headers on the way through its delay queues.
These functions read past both, for the tasks' retries and the worker's outcome log.
"""

from __future__ import annotations

from typing import Any

from brokers.base import ALL_QUEUES


def own_headers(request: Any) -> dict[str, Any]:
    """The delivery's headers without the broker's own (`x-death`, `x-delivery-count`...).

    RabbitMQ adds those on the way through its delayed-delivery queues; a message that
    carries an `x-death` of a queue back into that queue is a dead-letter cycle, which
    RabbitMQ drops without a word.
    """
    return {
        name: value
        for name, value in (getattr(request, "headers", None) or {}).items()
        if not name.startswith("x-")
    }


def home_queue(request: Any) -> str | None:
    """The queue this delivery came from, to send its retry back to.

    Celery routes a retry by the delivery's exchange and routing key; after RabbitMQ's
    delayed delivery those are the delay exchanges' (a routing key like
    `0.0.1.1.pokeapi`), and Celery would invent a queue of that name nobody consumes. The
    queue's own name is the routing key's last part (queue names here have no dots).
    """
    routing_key = ((getattr(request, "delivery_info", None) or {}).get("routing_key")) or ""
    name = routing_key.rsplit(".", 1)[-1]
    return name if name in ALL_QUEUES else None
