"""Admission before a worker slot: a job whose upstream has no budget now waits in the
broker, not in a worker thread.

The Redis broker's fetch asks `held()` before each take (brokers/redis_transport.py's
`admission` hook): the queues of upstreams whose budget is held are left out, and their
jobs met in the default queue (a stock producer's `send_task` by name) are moved into
their upstream's queue, at its head, in the same script. Other upstreams' jobs are taken
as before, so they keep their latency while one upstream's backlog waits.

An upstream is held while this process knows its fleet-wide budget to bind: paused, or
on-demand calls queued for their tokens (`Budget.held`). The jobs it holds in hand keep
the budget spent meanwhile; a job taken then would only queue behind them in a thread.
"""

from __future__ import annotations

import threading

from apis.budget import Budget
from apis.registry import client_class, get_client
from brokers import redis_transport
from upstreams import all_upstreams

_lock = threading.Lock()
_budgets: list[tuple[str, str, Budget]] = []


def held() -> list[tuple[str, str]]:
    """(task-name prefix, queue) of every upstream whose budget is held now."""
    if not _budgets:
        with _lock:
            if not _budgets:
                for upstream in all_upstreams():
                    budget = get_client(client_class(upstream)).budget
                    _budgets.append((upstream.tasks + ".", upstream.queue, budget))
    return [(prefix, queue) for prefix, queue, budget in _budgets if budget.held()]


def install() -> None:
    """Admit the Redis broker's fetches by the upstreams' budgets."""
    redis_transport.admission = held
