"""Beat's scheduler: redbeat, kept alive through a Redis restart or a Sentinel failover.

redbeat retries the schedule's reads (`redbeat_redis_options.retry_period`), but not its
lock: the lock is extended at every tick, and one refused connection there ends beat
(redbeat 2.3 lets the error escape `tick`). Here a tick that cannot reach Redis is
skipped and tried again a second later, for as long as the lock would still be ours; a
lock that vanished with the old master (never replicated) is taken again when nobody
else holds it. Another beat holding it still stops this one, as redbeat intends.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redbeat import RedBeatScheduler
from redis.exceptions import LockNotOwnedError

log = logging.getLogger("worker.beat")

RETRY_TICK_SECONDS = 1.0


class FailoverTolerantScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeatScheduler whose tick survives a Redis that is away for a while."""

    _unreachable_since: float | None = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            interval: float = super().tick(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return self._wait_for_redis(exc)
        except LockNotOwnedError:
            self._take_lock_again()
            return RETRY_TICK_SECONDS
        if self._unreachable_since is not None:
            log.warning(
                "beat: Redis reachable again after %.1fs",
                time.monotonic() - self._unreachable_since,
            )
            self._unreachable_since = None
        return interval

    def _wait_for_redis(self, exc: Exception) -> float:
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
            log.warning("beat: Redis unreachable (%s), retrying every tick", type(exc).__name__)
        if now - self._unreachable_since > float(self.lock_timeout):
            # The lock has expired by now: another beat may be scheduling. Stop, and let
            # the restart policy start a beat that waits for the lock.
            raise exc
        return RETRY_TICK_SECONDS

    def _take_lock_again(self) -> None:
        """The lock key is gone (lost in a failover): take it back unless another has it."""
        if self.lock is None or not self.lock.acquire(blocking=False):
            raise LockNotOwnedError("beat: another beat holds the lock")
        log.warning("beat: lock lost with the old master, taken again")
