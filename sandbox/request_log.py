"""Which routes were called, on which paths, when, and with which headers.

Tests and benchmarks count what the server received, not what a client says it sent:
attempts per route, calls per path (one job's calls, when paths name the job), and the
headers of the latest requests. Arrival times come from `time.monotonic()`, which makes
gaps between retries measurable without trusting the wall clock.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

# Requests whose headers are kept (newest first out of the window); counts are kept whole.
RECENT_REQUESTS = 1000


@dataclass(frozen=True)
class Received:
    """One request as the server read it (header names lower-case)."""

    route: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


class RequestLog:
    """Arrival times per route, counts per path, recent headers, and what the normal
    answers cost; safe from many threads.

    Besides arrivals it counts, per route, conditional requests (carrying
    `If-None-Match` or `If-Modified-Since`), `304` answers and body bytes sent (as on
    the wire: gzipped when the client asked for gzip), so a test or a benchmark can see
    what revalidation saved.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {}
        self._paths: dict[str, Counter[str]] = {}
        self._recent: deque[Received] = deque(maxlen=RECENT_REQUESTS)
        self._conditional: dict[str, int] = {}
        self._not_modified: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def record(
        self,
        route: str,
        arrived: float,
        path: str = "",
        headers: Mapping[str, str] | None = None,
        *,
        conditional: bool = False,
    ) -> None:
        seen = Received(route, path, dict(headers or {}))
        with self._lock:
            self._times.setdefault(route, []).append(arrived)
            self._paths.setdefault(route, Counter())[path] += 1
            self._recent.append(seen)
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

    def path_counts(self, route: str) -> dict[str, int]:
        """Requests per path (trailing slash removed) to one route."""
        with self._lock:
            counted: Counter[str] = Counter()
            for path, count in self._paths.get(route, Counter()).items():
                counted[path.rstrip("/")] += count
            return dict(counted)

    def received(self, route: str | None = None) -> list[Received]:
        """The latest requests (at most RECENT_REQUESTS), oldest first."""
        with self._lock:
            return [seen for seen in self._recent if route is None or seen.route == route]

    def clear(self) -> None:
        with self._lock:
            self._times.clear()
            self._paths.clear()
            self._recent.clear()
            self._conditional.clear()
            self._not_modified.clear()
            self._bytes.clear()
