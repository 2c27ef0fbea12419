"""W3C trace context for `apiworker enqueue`: the job joins the caller's trace.

The CLI sends `traceparent` and `tracestate` as message headers, where the worker's
Celery instrumentation reads them (telemetry/otel.py). They are checked here against the
W3C Trace Context format, so a typo is a usage error rather than a job in a trace of its
own; the CLI itself needs no OpenTelemetry package. Like OpenTelemetry's environment
carriers, the values may come from `TRACEPARENT` and `TRACESTATE`.
"""

from __future__ import annotations

import re

import click

# version "-" trace-id "-" parent-id "-" flags; lower-case hex (W3C Trace Context, 3.2).
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
)
_TRACESTATE_MAX = 512


def traceparent(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    """A valid `traceparent`, or a usage error saying what is wrong."""
    if value is None or value == "":
        return None
    value = value.strip()
    match = _TRACEPARENT.fullmatch(value)
    if (
        match is None
        or match["version"] == "ff"
        or set(match["trace"]) == {"0"}
        or set(match["parent"]) == {"0"}
    ):
        raise click.BadParameter(
            "expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, ids not all zero"
        )
    return value


def tracestate(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    """A `tracestate` list of printable ASCII, at most 512 characters."""
    if value is None or value == "":
        return None
    value = value.strip()
    if len(value) > _TRACESTATE_MAX or not all(" " <= char <= "~" for char in value):
        raise click.BadParameter("expected printable ASCII key=value pairs, at most 512 chars")
    return value


def headers(parent: str | None, state: str | None) -> dict[str, str]:
    """The message headers that carry the context (none without a `traceparent`)."""
    if parent is None:
        return {}
    return {"traceparent": parent, **({"tracestate": state} if state else {})}
