"""Which routes were called and when, so tests can assert on retries and rate limits.

Arrival times come from `time.monotonic()`, which makes gaps between retries
measurable without trusting the wall clock.
"""

from __future__ import annotations

import threading


class RequestLog:
    """Arrival times per route, and what the normal answers cost; thread-safe.

    Besides arrivals it counts, per route, conditional requests (carrying
    `If-None-Match` or `If-Modified-Since`), `304` answers and body bytes sent (as on
    the wire: gzipped when the client asked for gzip), so a test or a benchmark can see
    what revalidation saved.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {}
        self._conditional: dict[str, int] = {}
        self._not_modified: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def record(self, route: str, arrived: float, *, conditional: bool = False) -> None:
        with self._lock:
            self._times.setdefault(route, []).append(arrived)
            if conditional:
                self._conditional[route] = self._conditional.get(route, 0) + 1

    def answered(self, route: str, status: int, body_bytes: int) -> None:
        """Note one answer sent for `route`: its status and body size."""
        with self._lock:
            if status == 304:
                self._not_modified[route] = self._not_modified.get(route, 0) + 1
            self._bytes[route] = self._bytes.get(route, 0) + body_bytes

    def conditional(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conditional)

    def not_modified(self) -> dict[str, int]:
        with self._lock:
            return dict(self._not_modified)

    def bytes_sent(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes)

    def calls(self, route: str | None = None) -> int:
        with self._lock:
            if route is None:
                return sum(len(times) for times in self._times.values())
            return len(self._times.get(route, ()))

    def call_times(self, route: str) -> list[float]:
        with self._lock:
            return list(self._times.get(route, ()))

    def counts(self) -> dict[str, int]:
        """Requests per route, only for routes that were called."""
        with self._lock:
            return {route: len(times) for route, times in self._times.items() if times}

    def clear(self) -> None:
        with self._lock:
            self._times.clear()
            self._conditional.clear()
            self._not_modified.clear()
            self._bytes.clear()
