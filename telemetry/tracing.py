"""Spans and span events of the API layer and the results store: nothing until enabled.

The worker turns tracing on from the standard OTEL_* variables (telemetry/otel.py) and
hands this module a tracer provider. Until then every hook here is one check of a module
global and returns at once: no OpenTelemetry import, no allocation, no context lookup, so
a job costs what it costs without tracing.

What the hooks record (attribute names from the stable semantic conventions where one
exists; `apiworker.*` for what is the service's own):

- one CLIENT span per upstream attempt, named by its HTTP method: `http.request.method`,
  `server.address`, `server.port`, `url.full` (credentials and registered secrets
  masked), `http.response.status_code`, `error.type` on failure (the status code, or the
  error class when no status came back), `http.request.resend_count` on a retry, and
  `apiworker.upstream` (the service name);
- events on the current (job) span: a freshness hit, a single-flight wait, a call
  refused by an open circuit, a rate-limit wait;
- one CLIENT span per atomic Redis write of results (`db.system.name` = redis).

The request headers never become attributes, so a token cannot reach a span.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from telemetry.redact import masked_url

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

TRACER_NAME = "apiworker"

_tracer: Tracer | None = None
NO_SPAN: AbstractContextManager[None] = nullcontext()

# Span event names (README, "Tracing").
FRESHNESS_HIT = "apiworker.freshness_hit"
SINGLE_FLIGHT_WAIT = "apiworker.single_flight_wait"
CIRCUIT_OPEN = "apiworker.circuit_open"
RATE_LIMIT_WAIT = "apiworker.rate_limit_wait"


def enable(provider: TracerProvider) -> None:
    """Record spans through `provider` from now on (the worker calls this once)."""
    global _tracer
    _tracer = provider.get_tracer(TRACER_NAME)


def disable() -> None:
    """Back to no-ops (tests)."""
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def add_event(name: str, attributes: Mapping[str, str | int | float | bool]) -> None:
    """An event on the current span (the job's), when tracing is on."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(name, attributes)


def start_attempt(service: str, method: str, url: str, resend_count: int) -> Span | None:
    """A CLIENT span for one HTTP attempt, or None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "server.address": parts.hostname or "",
        "server.port": port,
        "url.full": masked_url(url, span=True),
        "apiworker.upstream": service,
    }
    if resend_count:
        attributes["http.request.resend_count"] = resend_count
    return _tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)


def trace_headers(headers: dict[str, str], span: Span) -> dict[str, str]:
    """`headers` plus the W3C trace context of `span`, so an instrumented upstream joins
    the trace (a copy: the client's default headers are shared)."""
    from opentelemetry import propagate, trace

    carrier = dict(headers)
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def end_attempt(span: Span, outcome: str, exc: BaseException | None) -> None:
    """Close an attempt's span: the status code it got, and what failed if it did."""
    from opentelemetry.trace import Status, StatusCode

    status = int(outcome) if outcome.isdigit() else None
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if exc is not None:
        # A status answer is named by its code, anything else by the error's class.
        failed_status = status is not None and status >= 400
        error_type = str(status) if failed_status else type(exc).__qualname__
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()


def redis_span(name: str, connection: Mapping[str, Any], **attributes: Any) -> Any:
    """A CLIENT span around one Redis call of the store, or a shared no-op context.

    Yields the span (or None), so the caller can note the call's answer on it.
    """
    if _tracer is None:
        return NO_SPAN
    return _redis_span(_tracer, name, connection, attributes)


@contextmanager
def _redis_span(
    tracer: Tracer, name: str, connection: Mapping[str, Any], attributes: Mapping[str, Any]
) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind

    values: dict[str, Any] = {
        "db.system.name": "redis",
        "db.operation.name": "EVALSHA",
        "db.namespace": str(connection.get("db", 0)),
        **attributes,
    }
    if "host" in connection:
        values["server.address"] = str(connection["host"])
        values["server.port"] = int(connection.get("port", 6379))
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=values) as span:
        yield span
