"""Admission before a worker slot: a job whose upstream has no budget now waits in the
broker, not in a worker thread.

The Redis broker's fetch asks `admit()` before each take (brokers/redis_transport.py's
`admission` hook): the queues of held upstreams are left out, and their jobs met in the
default queue (a stock producer's `send_task` by name) are moved into their upstream's
queue, at its head, in the same script; other upstreams' jobs are taken as before, so
they keep their latency while one upstream's backlog waits.

An upstream is held while this process knows its fleet-wide budget to bind (paused, or
on-demand calls queued for their tokens: `Budget.held`), or while this process holds as
many of its jobs as its share of the budget serves within RATE_LIMIT_MAX_WAIT
(`Budget.room`): a job taken beyond that could not get its token within the wait bound,
and would be put off (re-published) instead. While an upstream with a known rate has
room left, a fetch takes at most that many messages.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from celery.worker import state as worker_state

from apis.budget import Budget
from apis.registry import client_class, get_client
from brokers import redis_transport
from tasks.base import class_of
from upstreams import all_upstreams

log = logging.getLogger("worker.admission")

_lock = threading.Lock()
_budgets: list[tuple[str, str, Budget]] = []
_failed = False


def in_hand(klass: str | None = None) -> Counter[str]:
    """This process's jobs taken and not finished, by task name; `klass`: only the jobs
    of that budget class (`apis.budget.ON_DEMAND` or `BULK`)."""
    for _ in range(3):
        try:  # the pool's threads add and remove requests meanwhile
            requests = list(worker_state.reserved_requests)
        except RuntimeError:
            continue
        return Counter(
            request.name for request in requests if klass is None or request_class(request) == klass
        )
    return Counter()


def request_class(request: Any) -> str:
    """A taken job's budget class, as the task will run it (`tasks.base.class_of`)."""
    return class_of(request.task, request.message)


def admit() -> tuple[Sequence[tuple[str, str]], int | None]:
    """(task-name prefix, queue) of every held upstream, and the most a fetch may take.

    It runs inside the consumer's fetch: a fault here must not stop the worker taking
    jobs, so it is logged (once) and every queue admitted, as without a budget.
    """
    global _failed
    try:
        return _admit()
    except Exception:
        if not _failed:
            _failed = True
            log.exception("admission by the upstream budgets failed: every queue admitted")
        return (), None


def budgets() -> Sequence[tuple[str, str, Budget]]:
    """(task-name prefix, queue, budget) of every upstream, built on first use (the
    clients read their settings then, not at import)."""
    if not _budgets:
        with _lock:
            if not _budgets:
                for upstream in all_upstreams():
                    budget = get_client(client_class(upstream)).budget
                    _budgets.append((upstream.tasks + ".", upstream.queue, budget))
    return _budgets


def _admit() -> tuple[Sequence[tuple[str, str]], int | None]:
    held: list[tuple[str, str]] = []
    most: int | None = None
    taken: Counter[str] | None = None
    for prefix, queue, budget in budgets():
        if budget.held():
            held.append((prefix, queue))
            continue
        room = budget.room()
        if room is None:
            continue
        if taken is None:
            taken = in_hand()
        left = room - sum(count for name, count in taken.items() if name.startswith(prefix))
        if left <= 0:
            held.append((prefix, queue))
        else:
            most = left if most is None else min(most, left)
    return held, most


def install() -> None:
    """Admit the Redis broker's fetches by the upstreams' budgets."""
    redis_transport.admission = admit
