"""The base of every task: Celery-level retry for transient failures, failure records.

Two layers, two budgets. The client retries a transient failure a few times within
seconds (apis.retry); a failure that survives that is retried here by Celery with
exponential backoff and full jitter, up to TASK_MAX_RETRIES, and only for idempotent
tasks. Anything permanent fails at once and leaves a record in the failure stream.

A call the API layer held back without sending it (an open circuit, no rate-limit token
soon enough) is not a failure: the job is deferred until the guard's wait is over, up to
TASK_MAX_DEFERRALS times, without using up its retries.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Reject

from apis.budget import BULK, ON_DEMAND, job_class
from apis.errors import HeldBack, NotConfigured, NotFound, RateLimited, UpstreamError
from brokers import broker_module
from brokers.delivery import home_queue, own_headers
from results.failure_record import failure_record
from results.runtime import get_runtime
from results.single_flight import JobStart, job_began_at
from settings import get_settings
from tasks.errors import InvalidInput, RetriesExhausted
from tasks.messages import CLASS_HEADER
from telemetry.metrics import FAILURES_RECORDED, TASK_RETRIES

log = logging.getLogger("tasks")

# A message header counting the job's deferrals, carried from one delivery to the next.
DEFERRALS_HEADER = "apiworker_deferrals"
# When the job first ran (epoch ms, Redis's clock), carried by its deferrals: a result
# stored since then is fresh enough for it, whatever FRESHNESS_MAX_AGE says.
BEGAN_HEADER = "apiworker_began_ms"


# Errors of our own Redis that pass: it is away (restarting, failing over), still loading
# its data, or a demoted master refuses the write (READONLY) until clients find the new
# one. redis-py's Sentinel client turns READONLY into a reconnect itself; a plain URL
# (a proxy, a DNS name that moved) shows it as it is.
REDIS_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


def retry_countdown(retries: int, exc: BaseException, *, base: float, cap: float) -> float:
    """Full jitter over an exponential window; never sooner than a 429's Retry-After."""
    window = min(cap, base * (2**retries))
    countdown = random.uniform(0, window)  # noqa: S311 (jitter, not cryptography)
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        countdown = max(countdown, min(exc.retry_after, cap))
    return countdown


def deferral_countdown(exc: HeldBack, *, cap: float) -> float:
    """The guard's own wait plus jitter, so deferred jobs do not all return at once.

    Capped (TASK_DEFERRAL_MAX_SECONDS), so the Redis broker's visibility timeout covers it.
    """
    wait = max(exc.retry_after, 0.1)
    spread = max(exc.jitter_floor, wait * exc.jitter_fraction)
    jitter = random.uniform(0, spread)  # noqa: S311 (jitter, not cryptography)
    return min(cap, wait + jitter)


def broker_countdown(seconds: float) -> float:
    """A countdown the broker can honour (RabbitMQ's delayed delivery: whole seconds)."""
    shaped: float = broker_module(get_settings().worker.broker_url).shape_countdown(seconds)
    return shaped


def deferrals_of(request: Any) -> int:
    """How many times this job was deferred so far (a header its deferrals carry)."""
    value = (getattr(request, "headers", None) or {}).get(DEFERRALS_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def class_of(task: Any, request: Any) -> str:
    """The job's budget class: its header's, else bulk for a task that is bulk by nature
    (a beat schedule's job, a fan-out: `bulk = True` on the task), else on-demand."""
    value = (getattr(request, "headers", None) or {}).get(CLASS_HEADER)
    if value in (BULK, ON_DEMAND):
        return str(value)
    return BULK if getattr(task, "bulk", False) else ON_DEMAND


def began_at(request: Any) -> float | None:
    """When this job first ran, on the results Redis's clock (epoch seconds): its
    deferrals' header; None on its first run (its first claim reads Redis's `TIME`)."""
    value = (getattr(request, "headers", None) or {}).get(BEGAN_HEADER)
    return value / 1000 if isinstance(value, int) and value > 0 else None


#: Failures that are a job's answer, not a fault: their spans carry no stack trace.
OUTCOMES: tuple[type[Exception], ...] = (InvalidInput, NotFound)


class UpstreamTask(Task):  # type: ignore[misc]
    """An idempotent fetch-and-store job."""

    #: Whether running the job twice is harmless; only such jobs are retried by Celery.
    idempotent = True
    #: Whether the job's upstream calls are bulk for the budget (beat's and fan-outs'
    #: tasks); a message's CLASS_HEADER says otherwise for one job.
    bulk = False
    acks_late = True
    reject_on_worker_lost = True
    #: Expected ends of a job: Celery logs them without a traceback (Celery's `throws`;
    #: the job's outcome line names the error); any other exception keeps its traceback.
    throws = (*OUTCOMES, NotConfigured, RetriesExhausted)
    #: A producer that will not wait sends `ignore_result=True` (stock Celery): no
    #: result-backend copy of a success, whose value is in the results keys anyway. A
    #: failure or retry of such a job is still stored there, so its state stays readable.
    store_errors_even_if_ignored = True

    @property
    def max_retries(self) -> int:
        """TASK_MAX_RETRIES, read from the settings when a retry is decided, not when the
        module is imported."""
        return get_settings().worker.task_max_retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.request.started_at = time.monotonic()
        began = job_began_at.set(JobStart(began_at(self.request)))
        klass = job_class.set(class_of(self, self.request))
        try:
            return super().__call__(*args, **kwargs)
        except HeldBack as exc:
            self._defer(exc)  # raises Retry, or returns once the deferrals are used up
            raise RetriesExhausted.mark(exc) from None
        except UpstreamError as exc:
            if not (self.idempotent and exc.is_transient):
                raise
            self._retry_later(exc)
        except REDIS_TRANSIENT as exc:
            # Our own Redis blinked (a restart, a failover) mid-job: the job is idempotent
            # and may well succeed a moment later, so it is retried, not failed for good.
            if not self.idempotent:
                raise
            self._retry_later(exc)
        finally:
            job_class.reset(klass)
            job_began_at.reset(began)

    def _retry_later(self, exc: Exception) -> NoReturn:
        """A Celery retry with backoff, within TASK_MAX_RETRIES (deferrals not counted)."""
        settings = get_settings().worker
        deferrals = deferrals_of(self.request)
        countdown = retry_countdown(
            self.request.retries - deferrals,
            exc,
            base=settings.task_retry_backoff,
            cap=settings.task_retry_backoff_max,
        )
        countdown = broker_countdown(countdown)
        # Deferrals are counted in `retries` too; they must not use up this budget.
        try:
            raise self.retry(
                exc=exc,
                countdown=countdown,
                max_retries=self.max_retries + deferrals,
                queue=home_queue(self.request),
            )
        except Reject:
            # The retry could not be published (the broker is away too): Celery would drop
            # the message. Failing instead leaves a record to replay; nothing is lost.
            raise exc from None
        except Exception as raised:
            if raised is not exc:
                raise
            # Out of retries: Celery raised the job's last error again, an expected end.
            raise RetriesExhausted.mark(exc) from None

    def _defer(self, exc: HeldBack) -> None:
        """Put the job off until the guard lets calls through, without using its retries.

        Nothing was sent, so even a non-idempotent job may run again. An outage longer
        than the retry budget then costs deferrals, not failure records; but deferrals are
        bounded too (TASK_MAX_DEFERRALS), so a job never waits forever: past the bound it
        fails with a record like any other.
        """
        deferrals = deferrals_of(self.request)
        if deferrals >= get_settings().api.task_max_deferrals:
            return
        cap = get_settings().worker.task_deferral_max_seconds
        countdown = broker_countdown(deferral_countdown(exc, cap=cap))
        log.info(
            "job deferred task=%s id=%s for=%.1fs deferral=%d error=%s",
            self.name,
            self.request.id,
            countdown,
            deferrals + 1,
            type(exc).__name__,
        )
        headers = {**own_headers(self.request), DEFERRALS_HEADER: deferrals + 1}
        job = job_began_at.get()
        if job is not None and job.at is not None:  # set by its first claim, Redis's clock
            headers[BEGAN_HEADER] = int(job.at * 1000)
        raise self.retry(
            exc=exc,
            countdown=countdown,
            max_retries=self.max_retries + deferrals + 1,
            headers=headers,
            queue=home_queue(self.request),
        )

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        TASK_RETRIES.labels(self.name).inc()
        log.warning(
            "job retry task=%s id=%s attempt=%d error=%s",
            self.name,
            task_id,
            self.request.retries + 1,
            type(exc).__name__,
        )

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Leave a record of every permanent failure: no job vanishes silently. When
        Redis cannot take it, the process keeps it and writes it later (results/failures.py)."""
        record = failure_record(self.name, task_id, args, kwargs, exc, self.request.retries + 1)
        runtime = get_runtime()
        runtime.failures.record(runtime.store.record_failure, record)
        FAILURES_RECORDED.labels(self.name, type(exc).__name__).inc()
