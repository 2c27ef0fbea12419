"""The single-flight lease: a short Redis lock on one result key, renewed by its holder.

As Redisson's lock watchdog: the job that fetches a key holds a lease of
SINGLE_FLIGHT_LOCK_SECONDS, renewed by one thread of the process while the fetch runs, so
a dead holder frees the key within one lease. The holder's token guards every renewal
and release. It is taken by the results store's claim script (tasks/store.py: "fresh
value, or may I fetch?" in one round trip) and given up by its write script (the result
and the release in one call); renewing it, and releasing it after a failed fetch, is here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import redis

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
        """Extend every lease (lock key -> token) still held, in one round trip; returns
        the keys that were lost (expired and taken over) and must not be renewed again."""
        pipe = self.redis.pipeline(transaction=False)
        keys = list(leases)
        for key in keys:
            self._renew(keys=[key], args=[leases[key], int(ttl * 1000)], client=pipe)
        return [key for key, kept in zip(keys, pipe.execute(), strict=True) if not kept]

    def release(self, lock_key: str, token: str) -> None:
        """Give up a fetch lock (after a failed fetch) so waiters stop waiting."""
        self._release(keys=[lock_key], args=[token])


@dataclass
class _Lease:
    leases: Leases
    token: str
    ttl: float
    due: float  # monotonic time of its next renewal: a third of the lease after the last


class LeaseKeeper:
    """Renews this process's single-flight leases while their fetches run.

    One daemon thread for the whole process. A lease is renewed once a third of it has
    passed since it was taken or last renewed, so a fetch shorter than that (nearly
    all of them) costs no renewal at all; the leases due together go in one round trip.
    A lease that was lost (Redis lost it, or it ran out while this process stalled) is
    dropped, never taken back: another job may hold it by then.
    """

    def __init__(self) -> None:
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_wake = float("inf")
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, leases: Leases, key: str, token: str, ttl: float) -> Iterator[None]:
        due = time.monotonic() + ttl / 3
        with self._lock:
            self._held[key] = _Lease(leases, token, ttl, due)
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
                due = {key: lease for key, lease in self._held.items() if lease.due <= now}
            if due:
                self._renew(due)
            with self._lock:
                self._next_wake = min(
                    (lease.due for lease in self._held.values()), default=now + 1.0
                )
                self._wake.clear()
                interval = max(0.0, self._next_wake - time.monotonic())
            self._wake.wait(interval)

    def _renew(self, due: dict[str, _Lease]) -> None:
        by_redis: dict[int, tuple[Leases, float, dict[str, str]]] = {}
        for key, lease in due.items():
            entry = by_redis.setdefault(id(lease.leases), (lease.leases, lease.ttl, {}))
            entry[2][key] = lease.token
        for redis_leases, ttl, leases in by_redis.values():
            renewed_at = time.monotonic()
            try:
                lost = set(redis_leases.renew(leases, ttl))
            except Exception as exc:  # Redis away: the fetches go on, leases may lapse
                log.warning("single-flight leases not renewed: %s", type(exc).__name__)
                lost = set()
            with self._lock:
                for key, token in leases.items():
                    current = self._held.get(key)
                    if current is None or current.token != token:
                        continue  # released meanwhile, or a new holder's lease
                    if key in lost:
                        self._held.pop(key)
                    else:
                        # Retried after a third of a lease whether renewed or not: an
                        # unrenewed lease still has two thirds left to get through.
                        current.due = renewed_at + ttl / 3


LEASES = LeaseKeeper()
