"""Freshness and single flight: one upstream call per key, however many jobs ask.

A job asks Redis, in one round trip, for a stored result younger than the freshness
window and, failing that, for a short lock on the key (it expires on its own if its
holder dies). Jobs that find the lock taken poll until a result stored after they
started appears (as fresh as one they would fetch) or the lock frees up. Twenty
concurrent jobs for one name make one upstream call. The holder writes its result and
releases the lock in one more round trip.

The holder's fetch is conditional when a copy is stored: the claim hands it the stored
validators, and a `304` (an `Unchanged`) brings the stored result forward instead of
writing it again. Waiters see that as a fresh result, exactly like a write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from apis.conditional import Validators
from tasks.outcome import note_revalidation
from tasks.store import GONE, Fetched, Freshness, ResultStore, Unchanged, now

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


Fetch = Callable[[Validators | None], Fetched | Unchanged]


def fetch_once(
    store: ResultStore,
    kind: str,
    ident: str,
    fetch: Fetch,
    *,
    task_id: str,
    max_age: float,
    lock_seconds: float,
    upstream_max_age: float | None = None,
) -> Any:
    """Return a fresh value for (kind, ident), calling `fetch` only when none exists.

    `fetch` gets the stored copy's validators (None: fetch in full) and returns a new
    result or `Unchanged`. With `max_age` 0 only a result stored after this job began
    counts as fresh; with `upstream_max_age`, a result the upstream gave a lifetime is
    fresh for that long instead, up to `upstream_max_age`.
    """
    freshness = Freshness(max_age, upstream_max_age)
    started = now()
    token = uuid.uuid4().hex
    deadline = time.monotonic() + lock_seconds
    waited = False
    while True:
        claim = store.claim(
            kind, ident, started=started, freshness=freshness, token=token, ttl=lock_seconds
        )
        if claim.state == "fresh":
            if not waited:
                FRESHNESS_HITS.labels(kind).inc()
            return claim.value
        if claim.state == "owner":
            break
        if not waited:
            SINGLE_FLIGHT_WAITS.labels(kind).inc()
            waited = True
        if time.monotonic() > deadline:
            return _fetch_and_write(store, fetch, None, task_id, None)  # the holder is stuck
        time.sleep(POLL_SECONDS)
    lock = (store.keys.lock(kind, ident), token)
    try:
        return _fetch_and_write(store, fetch, claim.validators, task_id, lock)
    except BaseException:
        store.release(*lock)
        raise


def _fetch_and_write(
    store: ResultStore,
    fetch: Fetch,
    validators: Validators | None,
    task_id: str,
    lock: tuple[str, str] | None,
) -> Any:
    """Fetch (conditionally when `validators`), then write or revalidate, releasing `lock`."""
    result = fetch(validators)
    if validators is not None:
        note_revalidation(modified=not isinstance(result, Unchanged))
    if isinstance(result, Unchanged):
        value = store.revalidate(result, task_id, release=lock)
        if value is not GONE:
            return value
        result = _whole(fetch(None))  # the stored value vanished since the claim
    store.write(result, task_id, release=lock)
    return result.value


def _whole(result: Fetched | Unchanged) -> Fetched:
    """A fetch without validators never comes back unchanged; anything else is a bug."""
    if isinstance(result, Unchanged):
        raise TypeError("an unconditional fetch was answered 'unchanged'")
    return result
