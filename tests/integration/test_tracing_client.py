"""The API layer's spans on the real sandbox: one CLIENT span per attempt, HTTP semconv."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from apis import PokeAPI, SemaphoreAPI, errors
from apis.config import ApiSettings
from tests.support.spans import RecordedSpans, recorded_spans

TOKEN = "tracing-token-5d1e8b"


@pytest.fixture
def spans() -> Iterator[RecordedSpans]:
    with recorded_spans() as recorded:
        yield recorded


@pytest.fixture
def make_client(sandbox: Any) -> Callable[..., Any]:
    def build(cls: type[Any], **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "pokeapi_base_url": sandbox.pokeapi_url,
            "semaphore_base_url": sandbox.semaphore_url,
            "semaphore_api_token": TOKEN,
            "http_retry_attempts": 3,
            "http_retry_backoff_initial": 0.01,
            "http_retry_backoff_max": 0.02,
            "http_connect_timeout": 1,
            "http_read_timeout": 1,
            **overrides,
        }
        return cls(cls.configure(ApiSettings(**values)))

    return build


def test_each_attempt_is_a_client_span_under_the_job_with_http_attributes(
    spans: RecordedSpans, make_client, sandbox
) -> None:
    """A 503 then a 200: two CLIENT spans, the retry with resend_count 1, the 503 an error."""
    sandbox.inject("pokemon", "status", status=503, times=1)
    with spans.job() as job:
        make_client(PokeAPI).get_pokemon("pikachu")
    first, second = spans.finished("GET")
    origin = urlsplit(sandbox.pokeapi_url)
    for span in (first, second):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == job.get_span_context().span_id
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["server.address"] == origin.hostname
        assert span.attributes["server.port"] == origin.port
        assert span.attributes["url.full"] == f"{sandbox.pokeapi_url}/pokemon/pikachu"
        assert span.attributes["apiworker.upstream"] == "pokeapi"
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.response.status_code"] == 200
    assert second.attributes["http.request.resend_count"] == 1
    assert "error.type" not in second.attributes
    assert second.status.status_code is StatusCode.UNSET


def test_a_failure_without_an_answer_is_named_by_its_error_class(
    spans: RecordedSpans, make_client, sandbox
) -> None:
    """A reset connection has no status code; error.type is the error model's class."""
    sandbox.inject("pokemon", "reset", times=None)
    with pytest.raises(errors.UpstreamConnectionError):
        make_client(PokeAPI, http_retry_attempts=2).get_pokemon("pikachu")
    attempts = spans.finished("GET")
    assert len(attempts) == 2
    for span in attempts:
        assert span.attributes["error.type"] == "UpstreamConnectionError"
        assert "http.response.status_code" not in span.attributes


def test_a_permanent_status_is_one_span_with_its_code_as_error_type(
    spans: RecordedSpans, make_client, sandbox
) -> None:
    """A 404 is not retried: one span, error.type 404."""
    with pytest.raises(errors.NotFound):
        make_client(PokeAPI).get_pokemon("no-such-pokemon")
    (span,) = spans.finished("GET")
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["error.type"] == "404"


def test_the_upstream_receives_the_attempt_span_as_its_traceparent(
    spans: RecordedSpans, make_client, sandbox
) -> None:
    """An instrumented upstream joins the trace: the request carries the attempt's context."""
    client = make_client(PokeAPI)
    with spans.job():
        client.get_pokemon("mew")
    (span,) = spans.finished("GET")
    context = span.get_span_context()
    (seen,) = sandbox.received("pokemon")  # the headers as the upstream read them
    assert seen.headers["traceparent"].startswith(
        f"00-{context.trace_id:032x}-{context.span_id:016x}-"
    )
    assert "traceparent" not in client.default_headers


@pytest.fixture
def semaphore_token(sandbox: Any) -> Iterator[str]:
    """The sandbox expects this test's token, and the default one again afterwards."""
    previous = sandbox.semaphore_token
    sandbox.semaphore_token = TOKEN
    yield TOKEN
    sandbox.semaphore_token = previous


def test_no_span_attribute_or_event_carries_the_token(
    spans: RecordedSpans, make_client, sandbox, semaphore_token: str
) -> None:
    """Semaphore calls send the token; no recorded span holds it anywhere."""
    sandbox.inject("projects", "status", status=401, times=1)
    with spans.job():
        with pytest.raises(errors.AuthError):
            make_client(SemaphoreAPI).list_projects()
        make_client(SemaphoreAPI).list_projects()
    recorded = spans.finished()
    assert len(recorded) >= 3
    for span in recorded:
        assert TOKEN not in span.to_json()


def test_tracing_off_sends_no_trace_header(make_client, sandbox) -> None:
    """Without a provider the hooks are no-ops: the upstream receives no traceparent."""
    make_client(PokeAPI).get_pokemon("mew")
    (seen,) = sandbox.received("pokemon")  # the headers as the upstream read them
    assert "traceparent" not in seen.headers
