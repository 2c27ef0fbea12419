"""Which routes were called and when, so tests can assert on retries and rate limits.

Arrival times come from `time.monotonic()`, which makes gaps between retries
measurable without trusting the wall clock.
"""

from __future__ import annotations

import threading


class RequestLog:
    """Arrival times per route; safe to use from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {}

    def record(self, route: str, arrived: float) -> None:
        with self._lock:
            self._times.setdefault(route, []).append(arrived)

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
