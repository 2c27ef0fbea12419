"""Celery's side of a trace: a CONSUMER span per job execution, a PRODUCER span per job sent.

Connected to Celery's signals by telemetry/otel.py (started by worker/observability.py)
only when tracing is on.

- `task_prerun` extracts the W3C context (`traceparent`, `tracestate`) from the message
  headers (Celery exposes them as attributes of `task.request`), starts `run/<task>` as
  its child and makes it current; `task_postrun` sets the job's attributes and ends it.
  The span is kept on that execution's request context, not in a table keyed by task
  id: a retry of the same job may start on another thread before the first execution's
  `task_postrun` (a full-jitter countdown can be a millisecond), and must not take over
  its span. (opentelemetry-instrumentation-celery keys by task id, which mixes the two
  executions' spans up; its publish side has no such problem, but one implementation of
  both sides is simpler than half of each.)
- `before_task_publish` starts `apply_async/<task>` as a child of whatever is current
  (the sending job) and injects its context into the outgoing headers, so a catalog's
  batches, a fan-out, a retry or a deferral continue the trace; `after_task_publish`
  ends it.

Attribute names follow opentelemetry-instrumentation-celery's where it has one
(`celery.task_name`, `messaging.message.id`), the messaging semantic conventions
otherwise; `apiworker.*` is the service's own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

_SPAN = "_apiworker_job_span"
_publishing: dict[tuple[int, str], trace.Span] = {}
_publishing_lock = threading.Lock()


class _RequestGetter(Getter[Any]):
    """Reads propagation headers from a Celery request context (they are attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)  # protocol 1, or headers nested by a producer
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


_GETTER = _RequestGetter()


class CelerySpans:
    """The signal handlers, bound to one tracer."""

    def __init__(
        self,
        tracer: Tracer,
        expected: tuple[type[BaseException], ...],
        deferrals: Callable[[Any], int] = lambda request: 0,
    ) -> None:
        self.tracer = tracer
        #: Failures that are outcomes, not faults (the tasks' `throws`): no stack trace.
        self.expected = expected
        #: How many times a job was deferred, read from its request (the tasks' header).
        self.deferrals = deferrals

    # -- consumer -------------------------------------------------------------------

    def job_started(self, task_id: str = "", task: Any = None, **_: Any) -> None:
        if task is None:
            return
        request = task.request
        parent = propagate.extract(request, getter=_GETTER)
        span = self.tracer.start_span(
            f"run/{task.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"celery.task_name": task.name, "messaging.message.id": task_id},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        setattr(request, _SPAN, (span, token))

    def job_failed(
        self, task_id: str = "", exception: BaseException | None = None, **kwargs: Any
    ) -> None:
        """An error status with the exception's class as `error.type`; the stack trace
        only of an unexpected exception."""
        span = trace.get_current_span()
        if exception is None or not span.is_recording():
            return
        error_type = type(exception).__qualname__
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
        if not isinstance(exception, self.expected):
            span.record_exception(exception)

    def job_finished(
        self, task_id: str = "", task: Any = None, state: str | None = None, **_: Any
    ) -> None:
        if task is None:
            return
        request = task.request
        held = getattr(request, _SPAN, None)
        if held is None:
            return
        span, token = held
        delattr(request, _SPAN)
        delivery = getattr(request, "delivery_info", None) or {}
        span.set_attributes(
            {
                "messaging.system": "celery",
                "messaging.operation.type": "process",
                "messaging.destination.name": str(delivery.get("routing_key") or ""),
                "celery.retries": int(request.retries or 0),
                "apiworker.job.deferrals": self.deferrals(request),
                "apiworker.job.outcome": state or "UNKNOWN",
            }
        )
        span.end()
        context.detach(token)

    # -- producer -------------------------------------------------------------------

    def publishing(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        if not isinstance(headers, dict) or "id" not in headers:
            return  # protocol 1 messages carry no headers to inject into
        name = str(headers.get("task") or sender or "unknown")
        span = self.tracer.start_span(
            f"apply_async/{name}",
            kind=SpanKind.PRODUCER,
            attributes={
                "celery.task_name": name,
                "messaging.message.id": str(headers["id"]),
                "messaging.system": "celery",
                "messaging.operation.type": "send",
            },
        )
        propagate.inject(headers, context=trace.set_span_in_context(span))
        with _publishing_lock:
            _publishing[(threading.get_ident(), str(headers["id"]))] = span

    def published(self, headers: Any = None, routing_key: Any = None, **_: Any) -> None:
        if not isinstance(headers, dict) or "id" not in headers:
            return
        with _publishing_lock:
            span = _publishing.pop((threading.get_ident(), str(headers["id"])), None)
        if span is not None:
            if routing_key:
                span.set_attribute("messaging.destination.name", str(routing_key))
            span.end()
