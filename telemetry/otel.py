"""OpenTelemetry traces of the worker, configured only by the standard OTEL_* variables.

Off unless the environment asks for it: `OTEL_TRACES_EXPORTER` names an exporter
(`otlp`, `console`, ...; `none` is off), or, with it unset, an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the exporter
defaults to `otlp`, as in the SDK). `OTEL_SDK_DISABLED=true` wins over both. Off, no
tracer provider, exporter or instrumentation is loaded and the job path is what it is
without it.

On, the SDK's own configurator (opentelemetry-distro's, what `opentelemetry-instrument`
runs) builds the tracer provider from the environment: exporter, endpoint, protocol,
headers, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, batch
settings. Then:

- each job is a CONSUMER span (`run/<task>`), the child of the producer's span when the
  message headers carry a W3C `traceparent` (and `tracestate`), and each job the worker
  sends (a catalog's batches, a retry, a deferral, a fan-out) a PRODUCER span whose
  context travels on in that job's headers (telemetry/celery_spans.py);
- the API layer's spans and events are switched on (telemetry/tracing.py);
- log lines carry `trace_id` and `span_id` (`TraceContextFilter`).

The provider is set up once per process that runs jobs (worker/observability.py calls
`start`): at `worker_init` for the threads (or solo, gevent) pool, in each child at
`worker_process_init` for prefork (an exporter's
connections, gRPC's above all, must not cross a fork); it is flushed at shutdown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from celery.signals import (
    after_task_publish,
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_shutdown,
)

from telemetry import tracing as api_tracing

log = logging.getLogger("worker.tracing")

_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return any(environ.get(name, "").strip() for name in _OTLP_ENDPOINTS)


def check_installed() -> None:
    """Stop at start, with the fix, when traces are asked for but the extra is missing."""
    if not configured():
        return
    try:
        import opentelemetry.distro  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            "api-layer-worker: OTEL_* variables ask for traces, but the tracing packages are "
            f"missing ({exc.name}): pip install 'api-layer-worker[tracing]'"
        ) from None


def start(
    expected: tuple[type[BaseException], ...] = (),
    deferrals: Callable[[Any], int] = lambda request: 0,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Build the tracer provider from the environment and trace Celery's jobs (once).

    `expected` are the failures that are a job's outcome, not a fault (the tasks'
    `throws`), `deferrals` reads how often a job was deferred from its request: both are
    the tasks' to say (worker/observability.py passes them).
    """
    if api_tracing.enabled() or not configured(environ):
        return False
    from opentelemetry import trace
    from opentelemetry.distro import OpenTelemetryConfigurator

    # Only with the tracing extra installed: the spans module imports opentelemetry.
    from telemetry.celery_spans import CelerySpans

    # The distro ships no annotations.
    OpenTelemetryConfigurator().configure()  # type: ignore[no-untyped-call]
    provider = trace.get_tracer_provider()
    spans = CelerySpans(provider.get_tracer(api_tracing.TRACER_NAME), expected, deferrals)
    # After the job log's own handlers (worker/observability.py), so the outcome line is
    # still logged inside the job span.
    task_prerun.connect(spans.job_started, weak=False)
    task_failure.connect(spans.job_failed, weak=False)
    task_postrun.connect(spans.job_finished, weak=False)
    before_task_publish.connect(spans.publishing, weak=False)
    after_task_publish.connect(spans.published, weak=False)
    api_tracing.enable(provider)
    log.info("tracing on: exporter=%s", os.environ.get("OTEL_TRACES_EXPORTER", "otlp"))
    return True


class TraceContextFilter(logging.Filter):
    """Put the current span's `trace_id` and `span_id` (hex, as tracing UIs show them)
    on every log record made inside a span; JSON lines carry them as fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


class TraceContextFormatter(logging.Formatter):
    """The text format, with ` trace_id=… span_id=…` after the message inside a span."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return text
        head, newline, rest = text.partition("\n")  # before a traceback, if any
        return f"{head} trace_id={trace_id} span_id={record.__dict__['span_id']}{newline}{rest}"


def forks(worker: Any) -> bool:
    """Whether this worker runs its jobs in forked children (the prefork pool)."""
    pool = getattr(worker, "pool_cls", "")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return name in ("prefork", "processes") or name.endswith(".prefork")


@worker_shutdown.connect
@worker_process_shutdown.connect
def _flush_spans(**_: Any) -> None:
    if not api_tracing.enabled():
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()
