"""Logs and metrics of the worker, wired through Celery's signals.

- One log line per job outcome: task, id, upstream queue, state, duration, attempts and
  the result key; JSON lines when LOG_FORMAT=json. Registered secrets are masked in
  every record, whatever logger produced it.
- Prometheus metrics on METRICS_PORT. With the threads pool (one process) the default
  registry is served; with prefork, set PROMETHEUS_MULTIPROC_DIR and the parent serves
  the children's aggregated samples (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
)
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
)
from pythonjsonlogger.json import JsonFormatter

from apis.redact import redact
from settings import get_worker_settings
from tasks.base import home_queue
from tasks.outcome import begin_job, result_keys, revalidation_text, revalidations
from worker import backlog, tracing

log = logging.getLogger("worker.jobs")

JOBS = Counter("apiworker_jobs", "Finished jobs by task and final state.", ["task", "state"])
JOB_SECONDS = Histogram(
    "apiworker_job_seconds",
    "Wall time of one job execution, by task.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

_started: dict[str, float] = {}


class RedactingFilter(logging.Filter):
    """Mask registered secrets in every record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        # A traceback is formatted after the filters run; format it here so it is masked
        # too (Formatter reuses exc_text when it is set).
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class PoolOverflowFilter(logging.Filter):
    """Drop urllib3's "Connection pool is full, discarding connection" warning.

    The API layer lets a burst above HTTP_POOL_SIZE (a catalog batch) open extra
    connections and close them after use, on purpose (apis/client.py: a thread waiting
    for a pooled connection would hold a job). Each of those is otherwise one warning:
    hundreds per catalog refresh, none of them actionable. Kept at LOG_LEVEL=DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Connection pool is full")


@setup_logging.connect
def configure_logging(**_: Any) -> None:
    """Replace Celery's logging set-up: our format, our level, secrets masked."""
    settings = get_worker_settings()
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        text = tracing.TraceContextFormatter if tracing.configured() else logging.Formatter
        handler.setFormatter(
            text("[%(asctime)s %(levelname)s/%(processName)s] %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter())
    if tracing.configured():
        handler.addFilter(tracing.TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    if settings.log_level != "DEBUG":
        # Celery logs "received" and "succeeded in ...: <result>" for every job; the job
        # outcome line below replaces both (one line per job), and its errors still show.
        logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        pool_logger = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(f, PoolOverflowFilter) for f in pool_logger.filters):
            pool_logger.addFilter(PoolOverflowFilter())


@task_prerun.connect
def _job_started(task_id: str, **_: Any) -> None:
    begin_job()
    _started[task_id] = time.monotonic()


@task_postrun.connect
def _job_finished(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    """One line per job outcome; a retry is logged as RETRY and runs again later."""
    started = _started.pop(task_id, None)
    duration = time.monotonic() - started if started is not None else 0.0
    state = state or "UNKNOWN"
    JOBS.labels(task.name, state).inc()
    JOB_SECONDS.labels(task.name).observe(duration)
    delivery = getattr(task.request, "delivery_info", None) or {}
    keys = result_keys()
    revalidated = revalidations()
    log.info(
        "job %s task=%s id=%s queue=%s duration_ms=%.1f attempts=%d key=%s revalidation=%s",
        state,
        task.name,
        task_id,
        # The queue's own name, also after RabbitMQ's delayed delivery (`0.0.1.cms`).
        home_queue(task.request) or delivery.get("routing_key", "-"),
        duration * 1000,
        (task.request.retries or 0) + 1,
        ",".join(keys[:3]) + ("..." if len(keys) > 3 else "") if keys else "-",
        revalidation_text(revalidated),
        extra={
            "task": task.name,
            "task_id": task_id,
            "state": state,
            "duration_ms": round(duration * 1000, 1),
            "attempts": (task.request.retries or 0) + 1,
            "result_keys": keys[:10],
            "revalidation": revalidated,
        },
    )


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    port = get_worker_settings().metrics_port
    if not port:
        return
    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    # Queue depths, the failure stream and open circuits, read from Redis on scrape.
    backlog.register(registry or REGISTRY, sender.app)
    try:
        if registry is None:
            start_http_server(port)
        else:
            start_http_server(port, registry=registry)
    except OSError as exc:
        logging.getLogger("worker").warning(
            "metrics not served: port %d unavailable (%s); set METRICS_PORT", port, exc
        )
        return
    logging.getLogger("worker").info("metrics on http://0.0.0.0:%d/metrics", port)


@worker_process_shutdown.connect
def _forget_dead_child(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
