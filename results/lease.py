"""The single-flight lease: a short Redis lock on one result key, renewed by its holder.

As Redisson's lock watchdog: the job that fetches a key holds a lease of
SINGLE_FLIGHT_LOCK_SECONDS (by default the broker's liveness timeout plus
SINGLE_FLIGHT_TOLERATED_PAUSE_SECONDS, settings/worker.py), renewed by one thread of the
process while the fetch runs, so a dead holder frees the key within one lease. The
holder's lock value (`token|fence`) guards every renewal and release. It is taken by the
results store's claim script (results/store.py: "fresh value, or may I fetch?" in one
round trip) and given up by its write script (the result and the release in one call);
renewing it, and releasing it after a failed fetch, is here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from telemetry.metrics import LEASES_LOST

log = logging.getLogger("tasks.single_flight")

# Extend a lease only while we still hold it; 0 when it expired and was taken over.
# KEYS: lock. ARGV: token, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Delete a lock only if we still hold it (it may have expired and been taken over).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    """Renew and release leases (lock key -> token) in one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def renew(self, leases: Mapping[str, str], ttl: float) -> list[str]:
        """Extend every lease (lock key -> lock value) still held, in one round trip;
        returns the keys that were lost (expired, maybe taken over) and must not be
        renewed again. Through the client this was made with: for renewals, one with a
        short timeout and no retries."""
        keys = list(leases)
        try:
            answers = self._renew_all(keys, leases, ttl)
        except redis.exceptions.NoScriptError:
            # Redis lost the script (a restart, a failover to a replica that never ran
            # it; a cluster pipeline does not load it as redis-py's plain one does).
            self.redis.script_load(_RENEW)
            answers = self._renew_all(keys, leases, ttl)
        return [key for key, kept in zip(keys, answers, strict=True) if not kept]

    def _renew_all(self, keys: list[str], leases: Mapping[str, str], ttl: float) -> list[object]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.evalsha(self._renew.sha, 1, key, leases[key], int(ttl * 1000))
        return list(pipe.execute())

    def release(self, lock_key: str, token: str) -> None:
        """Give up a fetch lock (after a failed fetch) so waiters stop waiting."""
        self._release(keys=[lock_key], args=[token])


@dataclass
class _Lease:
    leases: Leases
    token: str
    ttl: float
    due: float  # monotonic time of its next renewal
    valid_until: float  # monotonic: when the last renewal (or the claim) was sent + ttl


class LeaseKeeper:
    """Renews this process's single-flight leases while their fetches run.

    One daemon thread for the whole process. A lease is renewed once a third of it has
    passed since it was taken or last renewed, so a fetch shorter than that (nearly
    all of them) costs no renewal at all; the leases due together go in one round trip,
    through a client with a short timeout and no retries (results/runtime.py): a renewal
    that waits behind a paused Redis is worth nothing once the lease is over.

    Validity is counted from when the claim or the last successful renewal was *sent*
    (Redis started its ttl no earlier), never from when an answer came. A renewal that
    fails (a timeout, Redis away) is tried again soon, and the lease is not believed
    held past its validity: it is then lost. A lease is lost, too, when a renewal
    answers that the token is no longer there. A lost lease is logged and counted
    (`apiworker_single_flight_leases_lost_total`) and dropped, never taken back:
    another job may hold it by then. The holder's fetch goes on; its write carries the
    claim's fence, so it cannot overwrite a later holder's result (results/store.py).
    """

    def __init__(self) -> None:
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_wake = float("inf")
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(
        self, leases: Leases, key: str, token: str, ttl: float, *, sent_at: float | None = None
    ) -> Iterator[None]:
        """Renew the lease `key` (held with `token`) while the block runs; `sent_at` is the
        monotonic time the claim that took it was sent (default: now)."""
        taken = time.monotonic() if sent_at is None else sent_at
        due = taken + ttl / 3
        with self._lock:
            self._held[key] = _Lease(leases, token, ttl, due, taken + ttl)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="single-flight-leases", daemon=True
                )
                self._thread.start()
            wake = due < self._next_wake  # only a lease due before the thread wakes
        if wake:
            self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                expired = [key for key, lease in self._held.items() if lease.valid_until <= now]
                for key in expired:
                    self._lose(key, "expired")
                due = {key: lease for key, lease in self._held.items() if lease.due <= now}
            if due:
                self._renew(due)
            with self._lock:
                self._next_wake = min(
                    (min(lease.due, lease.valid_until) for lease in self._held.values()),
                    default=now + 1.0,
                )
                self._wake.clear()
                interval = max(0.0, self._next_wake - time.monotonic())
            self._wake.wait(interval)

    def _lose(self, key: str, reason: str) -> None:
        """Drop a lost lease, say so and count it (called with `_lock` held)."""
        self._held.pop(key, None)
        LEASES_LOST.labels(reason).inc()
        log.warning("single-flight lease lost key=%s reason=%s", key, reason)

    def _renew(self, due: dict[str, _Lease]) -> None:
        by_redis: dict[int, tuple[Leases, float, dict[str, str]]] = {}
        for key, lease in due.items():
            entry = by_redis.setdefault(id(lease.leases), (lease.leases, lease.ttl, {}))
            entry[2][key] = lease.token
        for redis_leases, ttl, leases in by_redis.values():
            sent_at = time.monotonic()
            failed = False
            try:
                lost = set(redis_leases.renew(leases, ttl))
            except Exception as exc:  # Redis slow or away: the fetches go on
                log.warning("single-flight leases not renewed: %s", type(exc).__name__)
                lost, failed = set(), True
            with self._lock:
                for key, token in leases.items():
                    current = self._held.get(key)
                    if current is None or current.token != token:
                        continue  # released meanwhile, or a new holder's lease
                    if key in lost:
                        self._lose(key, "taken")
                    elif failed:
                        # Still valid until its last renewal's ttl runs out, no longer:
                        # try again soon, within what is left.
                        left = current.valid_until - time.monotonic()
                        current.due = time.monotonic() + max(0.05, min(ttl / 6, left / 2))
                    else:
                        current.valid_until = sent_at + ttl
                        current.due = sent_at + ttl / 3


LEASES = LeaseKeeper()
