"""Freshness and single flight: one upstream call per key, however many jobs ask.

A job first looks for a stored result younger than the freshness window. Otherwise it
takes a short Redis lock on the key (redis-py's `Lock`, which expires on its own if the
holder dies). Jobs that find the lock taken wait for it, then look again: a result stored
after they started is as fresh as one they would fetch, so they return it instead of
calling the upstream. Twenty concurrent jobs for one name make one upstream call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from redis.exceptions import LockError
from redis.lock import Lock

from tasks.store import Fetched, ResultStore, now

log = logging.getLogger("tasks.single_flight")

FRESHNESS_HITS = Counter(
    "apiworker_freshness_hits",
    "Jobs answered from a stored result younger than the freshness window.",
    ["kind"],
)
SINGLE_FLIGHT_WAITS = Counter(
    "apiworker_single_flight_waits",
    "Jobs that waited for another job fetching the same key.",
    ["kind"],
)


def fetch_once(
    store: ResultStore,
    kind: str,
    ident: str,
    fetch: Callable[[], Fetched],
    write: Callable[[Fetched], object],
    *,
    max_age: float,
    lock_seconds: float,
) -> Any:
    """Return a fresh value for (kind, ident), calling `fetch` only when none exists."""
    started = now()
    fresh_since = started - max_age if max_age > 0 else started
    if max_age > 0:
        value = store.read_fresh(kind, ident, newer_than=fresh_since)
        if value is not None:
            FRESHNESS_HITS.labels(kind).inc()
            return value
    lock = store.redis.lock(
        store.keys.lock(kind, ident),
        timeout=lock_seconds,
        blocking=True,
        blocking_timeout=lock_seconds,
        sleep=0.02,
    )
    acquired = lock.acquire(blocking=False)
    if not acquired:
        SINGLE_FLIGHT_WAITS.labels(kind).inc()
        acquired = lock.acquire()
    try:
        value = store.read_fresh(kind, ident, newer_than=fresh_since)
        if value is not None:
            return value
        result = fetch()
        write(result)
        return result.value
    finally:
        if acquired:
            _release(lock)


def _release(lock: Lock) -> None:
    try:
        lock.release()
    except LockError:
        log.warning("single-flight lock expired before release: %s", lock.name)
