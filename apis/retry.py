"""The one retry policy for upstream calls, built on tenacity.

Only transient failures are retried (connection errors, timeouts, 502/503/504, 429), and
only for idempotent requests; the caller decides idempotency, this module decides the
rest. Backoff is exponential with full jitter, bounded both in attempts and in total
seconds, and a 429's `Retry-After` is honoured up to a cap: beyond the cap the error is
raised at once so that the task layer can defer the whole job instead of holding a
worker slot.

Layers multiply: this budget (attempts per call) times Celery's task retries is the most
upstream calls one job can make; `docs/reliability.md` writes that product down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from apis.config import RetryPolicy
from apis.errors import HeldBack, RateLimited, UpstreamError
from telemetry import metrics

log = logging.getLogger("apis.retry")

Sleep = Callable[[float], None]


def retry_in_place(exc: BaseException) -> bool:
    """Whether sending the same request again, now, may succeed.

    A call our own guard held back (open circuit, no rate-limit token) is transient but
    not retried here: the guard would only say no again; the task layer defers it.
    """
    return isinstance(exc, UpstreamError) and exc.is_transient and not isinstance(exc, HeldBack)


def _retry_after(exc: BaseException | None) -> float | None:
    return exc.retry_after if isinstance(exc, RateLimited) else None


class _WaitJitterOrRetryAfter:
    """Full-jitter exponential backoff, unless the upstream said how long to wait.

    With a shared budget (`budgeted`) a 429 is retried at once: the budget, paused by
    the 429 for the whole fleet, makes the next attempt wait for its token (at most a
    second) or holds it back, so no thread sleeps out a Retry-After here.
    """

    def __init__(self, policy: RetryPolicy, *, budgeted: bool = False) -> None:
        self._budgeted = budgeted
        self._jitter = wait_random_exponential(
            multiplier=policy.backoff_initial, max=policy.backoff_max
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if self._budgeted and isinstance(exc, RateLimited):
            return 0.0
        asked = _retry_after(exc)
        if asked:
            return asked
        # No pause asked for, or `Retry-After: 0`: "now" from every client at once is a
        # retry storm, so the jittered backoff still spreads them.
        return float(self._jitter(state))


class _StopWhenRetryAfterTooLong(stop_base):
    """Give up when the upstream asks for a pause longer than we hold a worker slot
    (with a budget, the budget's own wait bound decides instead)."""

    def __init__(self, cap: float, *, budgeted: bool = False) -> None:
        self._cap = cap
        self._budgeted = budgeted

    def __call__(self, state: RetryCallState) -> bool:
        asked = _retry_after(state.outcome.exception() if state.outcome else None)
        return not self._budgeted and asked is not None and asked > self._cap


def _log_retry(service: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        metrics.UPSTREAM_RETRIES.labels(service=service).inc()
        log.warning(
            "retrying upstream call service=%s attempt=%d wait=%.2fs error=%s",
            service,
            state.attempt_number,
            state.upcoming_sleep,
            type(exc).__name__ if exc else "unknown",
        )

    return before_sleep


def build_retrying(
    policy: RetryPolicy, *, service: str, sleep: Sleep = time.sleep, budgeted: bool = False
) -> Retrying:
    """A tenacity controller for one upstream call under `policy` (`budgeted`: the
    upstream's shared budget paces a 429's retry, see `_WaitJitterOrRetryAfter`)."""
    return Retrying(
        retry=retry_if_exception(retry_in_place),
        stop=(
            stop_after_attempt(policy.attempts)
            | stop_before_delay(policy.max_seconds)
            | _StopWhenRetryAfterTooLong(policy.retry_after_cap, budgeted=budgeted)
        ),
        wait=_WaitJitterOrRetryAfter(policy, budgeted=budgeted),
        before_sleep=_log_retry(service),
        sleep=sleep,
        reraise=True,
    )
