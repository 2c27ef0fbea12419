"""Logs, metrics and traces of the worker, wired through Celery's signals (what they
are is defined in `telemetry`; this module says when and with what).

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
import time
from typing import Any

from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from brokers.delivery import home_queue
from results.outcome import begin_job, result_keys, revalidation_text, revalidations
from settings import get_settings
from tasks.base import OUTCOMES, deferrals_of
from telemetry import logs, otel
from telemetry.metrics import JOB_SECONDS, JOBS
from telemetry.redact import redact
from worker import backlog, connection_loss

log = logging.getLogger("worker.jobs")

_started: dict[str, float] = {}


@setup_logging.connect
def configure_logging(**_: Any) -> None:
    """Replace Celery's logging set-up: our format, our level, secrets masked."""
    settings = get_settings().worker
    logs.configure(settings.log_level, settings.log_format)
    # A lost broker connection is one line per event, without tracebacks.
    connection_loss.install()


@task_prerun.connect
def _job_started(task_id: str, **_: Any) -> None:
    begin_job()
    _started[task_id] = time.monotonic()


@task_postrun.connect
def _job_finished(
    task_id: str, task: Any, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    """One line per job outcome; a retry is logged as RETRY and runs again later; a
    failure names its error (type and message, secrets masked)."""
    started = _started.pop(task_id, None)
    duration = time.monotonic() - started if started is not None else 0.0
    state = state or "UNKNOWN"
    JOBS.labels(task.name, state).inc()
    JOB_SECONDS.labels(task.name).observe(duration)
    delivery = getattr(task.request, "delivery_info", None) or {}
    keys = result_keys()
    revalidated = revalidations()
    error = (
        f"{type(retval).__name__}: {redact(' '.join(str(retval).split()))}"
        if state == "FAILURE" and isinstance(retval, BaseException)
        else None
    )
    log.info(
        "job %s task=%s id=%s queue=%s duration_ms=%.1f attempts=%d key=%s revalidation=%s%s",
        state,
        task.name,
        task_id,
        # The queue's own name, also after RabbitMQ's delayed delivery (`0.0.1.<queue>`).
        home_queue(task.request) or delivery.get("routing_key", "-"),
        duration * 1000,
        (task.request.retries or 0) + 1,
        ",".join(keys[:3]) + ("..." if len(keys) > 3 else "") if keys else "-",
        revalidation_text(revalidated),
        f" error={error}" if error else "",
        extra={
            "task": task.name,
            "task_id": task_id,
            "state": state,
            "duration_ms": round(duration * 1000, 1),
            "attempts": (task.request.retries or 0) + 1,
            "result_keys": keys[:10],
            "revalidation": revalidated,
            **({"error": error} if error else {}),
        },
    )


@worker_init.connect
def _start_tracing(sender: Any = None, **_: Any) -> None:
    if not otel.forks(sender):
        _trace_jobs()


@worker_process_init.connect
def _start_tracing_in_child(**_: Any) -> None:
    _trace_jobs()


def _trace_jobs() -> None:
    """Traces of jobs when OTEL_* variables ask for them; the tasks say which failures
    are outcomes and how a deferral is counted."""
    otel.start(OUTCOMES, deferrals_of)


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    port = get_settings().worker.metrics_port
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
