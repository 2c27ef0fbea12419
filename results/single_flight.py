"""Freshness and single flight: one upstream call per key, however many jobs ask.

A job asks Redis, in one round trip, for a stored result younger than the freshness
window and, failing that, for the key's lock. The lock is a short lease
(`SINGLE_FLIGHT_LOCK_SECONDS`) that this process renews while the fetch runs, as
Redisson's lock watchdog does: a holder that dies stops renewing, so the others are
delayed by one lease at most, not by the longest fetch it might have made. The holder
writes its result and gives the lease up in one more round trip. The claim also gives
the holder a fence, which its write carries: a holder whose lease lapsed (Redis paused,
the process stalled) may still finish its fetch, but its write is refused once a later
holder has written (results/store.py).

A job that finds the lease taken waits in its thread only briefly
(`SINGLE_FLIGHT_WAIT_SECONDS`) for a result stored after it began. If none arrives, it
is deferred until the lease would run out (`SingleFlightBusy`, a held-back call): the
thread goes back to jobs for other keys instead of sleeping on a key it cannot serve.

The holder's fetch is conditional when a copy is stored: the claim hands it the stored
validators, and a `304` (an `Unchanged`) brings the stored result forward instead of
writing it again. Waiters see that as a fresh result, exactly like a write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from apis.client import Payload
from apis.conditional import Validators
from apis.errors import HeldBack
from results.lease import LEASES
from results.outcome import note_revalidation
from results.runtime import Runtime
from results.store import GONE, Claim, Fetched, Freshness, ResultStore, Unchanged, now
from telemetry import tracing
from telemetry.metrics import FRESHNESS_HITS, SINGLE_FLIGHT_WAITS

POLL_SECONDS = 0.02


@dataclass
class JobStart:
    """When the current job first ran, in epoch seconds on the results Redis's clock:
    its deferrals' header, else (None until then) its first claim's `TIME`."""

    at: float | None = None


#: The running job's start (tasks/base.py sets one per execution): a deferred job that
#: comes back keeps it, so a result another job stored meanwhile still counts as fresh
#: for it. Outside a job there is none, and each `fetch_once` begins afresh.
job_began_at: ContextVar[JobStart | None] = ContextVar("job_began_at", default=None)


class SingleFlightBusy(HeldBack):
    """Another job holds the key's lease and is fetching it: come back when it is done.

    `retry_after` is what is left of the holder's lease: by then it has written its
    result, renewed the lease (it is alive: wait again) or lost it (it died: fetch).
    """

    jitter_fraction = 0.1
    jitter_floor = 0.1


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
    wait_seconds: float = 1.0,
    upstream_max_age: float | None = None,
) -> Any:
    """Return a fresh value for (kind, ident), calling `fetch` only when none exists.

    `fetch` gets the stored copy's validators (None: fetch in full) and returns a new
    result or `Unchanged`. With `max_age` 0 only a result stored after this job began
    counts as fresh; with `upstream_max_age`, a result the upstream gave a lifetime is
    fresh for that long instead, up to `upstream_max_age`. Raises `SingleFlightBusy` when
    another job's fetch outlasts `wait_seconds`.
    """
    freshness = Freshness(max_age, upstream_max_age)
    job = job_began_at.get()
    started = job.at if job is not None else None
    token = os.urandom(16).hex()  # as random as uuid4's, without building a UUID
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        sent_at = time.monotonic()
        claim = store.claim(
            kind, ident, started=started, freshness=freshness, token=token, ttl=lock_seconds
        )
        if started is None:
            # The job's start on Redis's clock: later claims, and its deferrals, keep it.
            started = claim.started
            if job is not None:
                job.at = started
        if claim.state == "fresh":
            if not waited:
                FRESHNESS_HITS.labels(kind).inc()
                tracing.add_event(tracing.FRESHNESS_HIT, {"apiworker.result.kind": kind})
            store.confirm_read(kind, ident)
            return claim.value
        if claim.state == "owner":
            break
        if not waited:
            SINGLE_FLIGHT_WAITS.labels(kind).inc()
            tracing.add_event(tracing.SINGLE_FLIGHT_WAIT, {"apiworker.result.kind": kind})
            waited = True
        if time.monotonic() > deadline:
            raise SingleFlightBusy(
                f"{kind}:{ident} is being fetched by another job",
                retry_after=max(claim.lease_left, POLL_SECONDS),
            )
        time.sleep(POLL_SECONDS)
    lock = (store.keys.lock(kind, ident), claim.lock_value)
    with LEASES.holding(store.leases, lock[0], claim.lock_value, lock_seconds, sent_at=sent_at):
        try:
            return _fetch_and_write(store, fetch, claim, task_id, lock)
        except BaseException:
            store.leases.release(*lock)
            raise


def _fetch_and_write(
    store: ResultStore, fetch: Fetch, claim: Claim, task_id: str, lock: tuple[str, str]
) -> Any:
    """Fetch (conditionally when the claim gave validators), then write or revalidate
    under the claim's fence, releasing `lock` in the same call.

    When a revalidation finds the value gone, the lock is still held (the script keeps
    it): the whole fetch runs under it, and its write releases it.
    """
    result = fetch(claim.validators)
    if claim.validators is not None:
        note_revalidation(modified=not isinstance(result, Unchanged))
    if isinstance(result, Unchanged):
        value = store.revalidate(result, task_id, release=lock, fence=claim.fence)
        if value is not GONE:
            return value
        result = _whole(fetch(None))  # the stored value vanished since the claim
    if store.write(result, task_id, release=lock, fence=claim.fence):
        return result.value
    # Refused: a later fetch (this lease lapsed meanwhile) stored a newer result, and
    # that one is the answer, as the store holds it.
    newer = store.read(result.kind, result.ident)
    return newer[0] if newer is not None else result.value


def _whole(result: Fetched | Unchanged) -> Fetched:
    """A fetch without validators never comes back unchanged; anything else is a bug."""
    if isinstance(result, Unchanged):
        raise TypeError("an unconditional fetch was answered 'unchanged'")
    return result


V = TypeVar("V")


@dataclass(frozen=True)
class FetchOnceJob(Generic[V]):
    """A fetch-once job, declared: the kind it stores, the client call that fetches one
    ident (conditionally), how the upstream body becomes the stored value and under which
    ident it is stored. `run` does the rest: freshness, the lease, the conditional fetch,
    the write or revalidation (`fetch_once`)."""

    kind: str
    #: The client method that fetches one ident: `(client, ident, validators=...)`.
    get: Callable[..., Payload]
    #: The stored value, a pure function of the upstream body (declared with its tasks).
    transform: Callable[[Any], V]
    #: The ident it is stored under, when the upstream's own differs from the one asked.
    ident_of: Callable[[V], str] | None = None
    #: Another ident that finds it (kept in the store's alias index).
    alias_of: Callable[[V], str] | None = None

    def stored(self, ident: str, payload: Payload) -> Fetched:
        """The result to store from a whole answer for `ident`."""
        value = self.transform(payload.data)
        return Fetched(
            kind=self.kind,
            ident=self.ident_of(value) if self.ident_of is not None else ident,
            value=value,
            fetched_at=now(),
            etag=payload.etag,
            last_modified=payload.last_modified,
            alias=self.alias_of(value) if self.alias_of is not None else None,
            max_age=payload.max_age,
        )

    def fetch(self, client: Any, ident: str, validators: Validators | None) -> Fetched | Unchanged:
        """Fetch `ident` (conditionally with `validators`): a new result, or `Unchanged`."""
        payload = self.get(client, ident, validators=validators)
        if payload.not_modified:
            return Unchanged(
                self.kind, ident, now(), payload.etag, payload.last_modified, payload.max_age
            )
        return self.stored(ident, payload)

    def run(self, client: Any, ident: str, task_id: str, *, runtime: Runtime) -> V:
        """A fresh value of `ident`: stored, or fetched once however many jobs ask."""
        settings = runtime.settings
        value: V = fetch_once(
            runtime.store,
            self.kind,
            ident,
            partial(self.fetch, client, ident),
            task_id=task_id,
            max_age=settings.freshness_max_age,
            lock_seconds=settings.lease_seconds,
            wait_seconds=settings.single_flight_wait_seconds,
            upstream_max_age=settings.upstream_max_age,
        )
        return value
