"""Bounded waits: a process that never comes up fails its caller instead of hanging it."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_INTERVAL = 0.05


class StartupFailed(RuntimeError):
    """A child process exited or stayed silent while it was expected to come up."""


class WaitTimedOut(StartupFailed, TimeoutError):
    """What `wait_until` waited for did not come within its deadline."""


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> object:
    """Poll `predicate` until it returns something truthy, and return that; raise
    `WaitTimedOut` once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
