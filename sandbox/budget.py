"""An upstream's own rate limit, as the sandbox enforces it: requests per second per
upstream, and `429` with `Retry-After` above that.

Real APIs ration requests by client (GitHub's secondary limits, Discord's buckets,
PokeAPI's fair-use policy): a token bucket of one second's worth of requests, refilled
continuously, answering 429 when empty. The rate may change while serving (an upstream
that halves its budget without notice), and every 429 is counted, so a benchmark can
report the share of refused requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sandbox.messages import Response, json_response


class UpstreamBudget:
    """One upstream's limit: `rate` requests per second (0: none), burst one second."""

    def __init__(
        self,
        rate: float = 0.0,
        *,
        retry_after: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.retry_after = retry_after
        self.rate = rate
        self._tokens = max(1.0, rate)
        self._at = clock()
        self.allowed = 0
        self.refused = 0

    def set_rate(self, rate: float) -> None:
        """Change the limit now: a new limit starts full, a changed one keeps what its
        bucket holds, up to the new size."""
        with self._lock:
            if self.rate <= 0:
                self._tokens = max(1.0, rate)
                self._at = self._clock()
            self.rate = rate
            self._tokens = min(self._tokens, max(1.0, rate))

    def admit(self) -> Response | None:
        """None when the request may be served, else the 429 to answer with."""
        with self._lock:
            if self.rate <= 0:
                return None
            now = self._clock()
            capacity = max(1.0, self.rate)
            self._tokens = min(capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                self.allowed += 1
                return None
            self.refused += 1
        return json_response(
            429, {"error": "rate limit exceeded"}, (("Retry-After", str(self.retry_after)),)
        )

    def counts(self) -> dict[str, float]:
        return {"rate": self.rate, "allowed": self.allowed, "refused": self.refused}
