"""`apiworker enqueue --traceparent`: only a well-formed W3C trace context is sent."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ops.cli import cli
from telemetry import trace_context

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "charizard",
    ],
)
def test_a_malformed_traceparent_is_a_usage_error(value: str) -> None:
    """Exit 2 with the expected format named; nothing is sent (no broker is reachable)."""
    outcome = CliRunner().invoke(
        cli,
        ["enqueue", "tasks.pokemon.fetch_pokemon", "mew", "--traceparent", value],
        env={"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"},
    )
    assert outcome.exit_code == 2
    assert "32 hex trace id" in outcome.output


def test_the_headers_carry_the_context_and_a_tracestate_only_with_a_traceparent() -> None:
    """traceparent and tracestate become message headers; a lone tracestate means nothing."""
    parent = trace_context.traceparent(None, None, f" {VALID} ")  # type: ignore[arg-type]
    assert parent == VALID
    assert trace_context.headers(parent, "vendor=1") == {
        "traceparent": VALID,
        "tracestate": "vendor=1",
    }
    assert trace_context.headers(None, "vendor=1") == {}


def test_a_tracestate_with_control_characters_or_too_long_is_refused() -> None:
    """W3C tracestate is printable ASCII of at most 512 characters."""
    for value in ("a=1\nb=2", "a=" + "x" * 600):
        with pytest.raises(click.BadParameter):
            trace_context.tracestate(None, None, value)  # type: ignore[arg-type]
