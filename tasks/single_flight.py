"""Freshness and single flight: one upstream call per key, however many jobs ask.

A job asks Redis, in one round trip, for a stored result younger than the freshness
window and, failing that, for a short lock on the key (it expires on its own if its
holder dies). Jobs that find the lock taken poll until a result stored after they
started appears (as fresh as one they would fetch) or the lock frees up. Twenty
concurrent jobs for one name make one upstream call. The holder writes its result and
releases the lock in one more round trip.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from apis import tracing
from tasks.store import Fetched, ResultStore, now

POLL_SECONDS = 0.02

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
    *,
    task_id: str,
    max_age: float,
    lock_seconds: float,
) -> Any:
    """Return a fresh value for (kind, ident), calling `fetch` only when none exists.

    With `max_age` 0 only a result stored after this job began counts as fresh.
    """
    fresh_since = now() - max_age
    token = uuid.uuid4().hex
    deadline = time.monotonic() + lock_seconds
    waited = False
    while True:
        claim = store.claim(kind, ident, fresh_since=fresh_since, token=token, ttl=lock_seconds)
        if claim.state == "fresh":
            if not waited:
                FRESHNESS_HITS.labels(kind).inc()
                tracing.add_event(tracing.FRESHNESS_HIT, {"apiworker.result.kind": kind})
            return claim.value
        if claim.state == "owner":
            break
        if not waited:
            SINGLE_FLIGHT_WAITS.labels(kind).inc()
            tracing.add_event(tracing.SINGLE_FLIGHT_WAIT, {"apiworker.result.kind": kind})
            waited = True
        if time.monotonic() > deadline:
            return _fetch_and_write(store, fetch, task_id, None)  # the holder is stuck
        time.sleep(POLL_SECONDS)
    lock = (store.keys.lock(kind, ident), token)
    try:
        return _fetch_and_write(store, fetch, task_id, lock)
    except BaseException:
        store.release(*lock)
        raise


def _fetch_and_write(
    store: ResultStore,
    fetch: Callable[[], Fetched],
    task_id: str,
    lock: tuple[str, str] | None,
) -> Any:
    result = fetch()
    store.write(result, task_id, release=lock)
    return result.value
