"""Tracing hooks in memory: store-write spans, job-span events, log correlation, the switch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import fakeredis
import pytest
from opentelemetry.trace import SpanKind
from pythonjsonlogger.json import JsonFormatter

from apis import errors
from apis.breaker import CircuitBreaker
from apis.budget import Budget
from apis.config import CircuitPolicy, RateLimitPolicy, UpstreamConfig
from results.keys import Keys
from results.single_flight import SingleFlightBusy, fetch_once
from results.store import Fetched, ResultStore, Unchanged, now
from telemetry import tracing
from telemetry.celery_spans import CelerySpans
from telemetry.otel import (
    TraceContextFilter,
    TraceContextFormatter,
    check_installed,
    configured,
)
from telemetry.redact import masked_url, register_secret
from tests.support.spans import RecordedSpans, recorded_spans


@pytest.fixture
def spans() -> Iterator[RecordedSpans]:
    with recorded_spans() as recorded:
        yield recorded


@pytest.fixture
def store() -> ResultStore:
    return ResultStore(fakeredis.FakeRedis(), Keys(), events_maxlen=100, failures_maxlen=100)


def mew(fetched_at: float) -> Fetched:
    return Fetched("pokemon", "mew", {"id": 151, "name": "mew"}, fetched_at)


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "apiworker"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_otel_variables_ask_for_an_exporter(
    environ: dict[str, str], on: bool
) -> None:
    """No exporter named and no endpoint set (or the SDK disabled): tracing stays off."""
    assert configured(environ) is on


def test_url_full_masks_credentials_and_secrets() -> None:
    """A URL never carries credentials into a span: the service's one URL mask, with the
    user information as OpenTelemetry's conventions write it on a span."""
    register_secret("url-secret-8c2f")
    url = masked_url("https://user:pw@api.test/x?key=url-secret-8c2f")
    assert url == "https://user:***@api.test/x?key=***"
    assert masked_url("https://tok3n-as-user@api.test/x") == "https://***@api.test/x"
    on_span = masked_url("https://user:pw@api.test/x?key=url-secret-8c2f", span=True)
    assert on_span == "https://REDACTED:REDACTED@api.test/x?key=***"
    assert masked_url("https://tok3n-as-user@api.test/x", span=True) == (
        "https://REDACTED:REDACTED@api.test/x"
    )


def test_a_results_write_is_a_redis_client_span_under_the_job(
    spans: RecordedSpans, store: ResultStore
) -> None:
    """The atomic write: one CLIENT span with the key and whether it was written."""
    with spans.job() as job:
        assert store.write(replace(mew(now()), fence=2), "task-1")
        assert not store.write(replace(mew(now()), fence=1), "task-2")  # older: refused
    first, refused = spans.finished("apiworker.store.write")
    assert first.kind is SpanKind.CLIENT
    assert first.parent is not None
    assert first.parent.span_id == job.get_span_context().span_id
    assert first.attributes["db.system.name"] == "redis"
    assert first.attributes["db.operation.name"] == "EVALSHA"
    assert first.attributes["apiworker.result.key"] == "pokemon:mew"
    assert first.attributes["apiworker.results.written"] == 1
    assert refused.attributes["apiworker.results.written"] == 0


def test_a_batch_write_is_one_span_counting_its_results(
    spans: RecordedSpans, store: ResultStore
) -> None:
    """write_many: one span, the results sent and written."""
    results = [Fetched("pokemon", name, {"name": name}, now()) for name in ("a", "b", "c")]
    assert store.write_many(results, "task-1") == 3
    (span,) = spans.finished("apiworker.store.write")
    assert span.attributes["apiworker.results.count"] == 3
    assert span.attributes["apiworker.results.written"] == 3


def test_a_fresh_result_is_a_freshness_event_on_the_job_span(
    spans: RecordedSpans, store: ResultStore
) -> None:
    """Answered from Redis: an event says so, and no fetch happens."""
    store.write(mew(now()), "task-1")
    with spans.job():
        value = fetch_once(
            store, "pokemon", "mew", lambda: pytest.fail("fetched"),
            task_id="t", max_age=60, lock_seconds=1,
        )  # fmt: skip
    assert value["name"] == "mew"
    (job,) = spans.finished("job")
    assert [event.name for event in job.events] == [tracing.FRESHNESS_HIT]
    assert job.events[0].attributes["apiworker.result.kind"] == "pokemon"


def test_waiting_on_another_jobs_fetch_is_a_single_flight_event(
    spans: RecordedSpans, store: ResultStore
) -> None:
    """The lock is held elsewhere: the job span records the wait."""
    store.redis.set(store.keys.lock("pokemon", "mew"), "other", px=5000)
    with spans.job(), pytest.raises(SingleFlightBusy):
        fetch_once(
            store, "pokemon", "mew", lambda: pytest.fail("fetched"),
            task_id="t", max_age=0, lock_seconds=5, wait_seconds=0.05,
        )  # fmt: skip
    (job,) = spans.finished("job")
    assert tracing.SINGLE_FLIGHT_WAIT in [event.name for event in job.events]


def test_a_call_refused_by_an_open_circuit_is_an_event(spans: RecordedSpans) -> None:
    """No request and no CLIENT span: the job span says the circuit was open."""
    config = UpstreamConfig(
        service="pokeapi", base_url="http://pokeapi.test", state_redis_url="redis://x/0",
        circuit=CircuitPolicy(1, 60.0, 30.0),
    )  # fmt: skip
    breaker = CircuitBreaker(config, fakeredis.FakeRedis())
    failure = errors.ServerError("down", "pokeapi", "GET", "/x", 503)
    breaker.after_call(breaker.before_call("GET", "/x"), failure)
    with spans.job(), pytest.raises(errors.CircuitOpen):
        breaker.before_call("GET", "/x")
    (job,) = spans.finished("job")
    (event,) = job.events
    assert event.name == tracing.CIRCUIT_OPEN
    assert event.attributes["apiworker.upstream"] == "pokeapi"
    assert 0 < event.attributes["apiworker.retry_after_s"] <= 30


def test_a_rate_limit_wait_is_an_event_with_its_length(spans: RecordedSpans) -> None:
    """The second call of a 1/s bucket waits about a second, and says so."""
    config = UpstreamConfig(
        service="pokeapi", base_url="http://pokeapi.test", state_redis_url="redis://x/0",
        rate_limit=RateLimitPolicy(rate=1.0, burst=1, max_wait=1.0),
    )  # fmt: skip
    limiter = Budget(
        config, fakeredis.FakeRedis(server=fakeredis.FakeServer()), sleep=lambda _: None
    )
    with spans.job():
        limiter.acquire()
        limiter.acquire()
    (job,) = spans.finished("job")
    (event,) = job.events
    assert event.name == tracing.RATE_LIMIT_WAIT
    assert 0.5 < event.attributes["apiworker.wait_s"] <= 1.0


def test_hooks_record_nothing_while_tracing_is_off(store: ResultStore) -> None:
    """Off, the write path takes the shared no-op context and nothing is enabled."""
    assert not tracing.enabled()
    assert store._span("apiworker.store.write", "k", 1) is tracing.NO_SPAN
    assert store.write(mew(now()), "task-1")


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("tasks", logging.INFO, __file__, 1, message, None, None)


def test_log_lines_inside_a_span_carry_its_trace_and_span_ids(spans: RecordedSpans) -> None:
    """Text lines end with trace_id= and span_id=; outside a span they are unchanged."""
    formatter = TraceContextFormatter("%(name)s: %(message)s")
    with spans.job() as job:
        record = _record("job SUCCESS")
        TraceContextFilter().filter(record)
        line = formatter.format(record)
    context = job.get_span_context()
    assert line == (
        f"tasks: job SUCCESS trace_id={context.trace_id:032x} span_id={context.span_id:016x}"
    )
    outside = _record("started")
    TraceContextFilter().filter(outside)
    assert formatter.format(outside) == "tasks: started"


def test_json_log_lines_carry_trace_and_span_ids_as_fields(spans: RecordedSpans) -> None:
    """LOG_FORMAT=json: trace_id and span_id are fields of the object."""
    with spans.job() as job:
        record = _record("job SUCCESS")
        TraceContextFilter().filter(record)
    fields = json.loads(JsonFormatter("%(message)s").format(record))
    assert fields["trace_id"] == f"{job.get_span_context().trace_id:032x}"
    assert fields["span_id"] == f"{job.get_span_context().span_id:016x}"


def test_with_tracing_off_a_worker_process_imports_nothing_of_opentelemetry() -> None:
    """Off is free: no tracing SDK, exporter, propagator set-up or instrumentation loads.

    (redis-py imports parts of the OpenTelemetry API for its own metrics when installed.)
    """
    code = (
        "import sys, worker.app, tasks.pokemon, tasks.cms, tasks.semaphore, apis\n"
        "from telemetry import tracing\n"
        "parts = ('opentelemetry.sdk.trace', 'opentelemetry.exporter',\n"
        "         'opentelemetry.instrumentation', 'opentelemetry.distro')\n"
        "print(tracing.enabled(), sorted(m for m in sys.modules if m.startswith(parts)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2], timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "False []"


def test_traces_asked_for_without_the_packages_stop_the_worker_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_TRACES_EXPORTER set, the extra missing: a clear exit naming the extra."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setitem(sys.modules, "opentelemetry.distro", None)
    with pytest.raises(SystemExit, match=r"api-layer-worker\[tracing\]"):
        check_installed()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    check_installed()  # off: the packages are not needed


class _Request:
    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.delivery_info = {"routing_key": "pokeapi"}
        self.headers: dict[str, object] = {}
        self.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Task:
    name = "tasks.pokemon.fetch_pokemon"

    def __init__(self, request: _Request) -> None:
        self.request = request


def test_a_retry_started_before_the_first_execution_ends_keeps_its_own_span(
    spans: RecordedSpans,
) -> None:
    """Two executions of one job id overlap: each span ends with its own outcome."""
    celery_spans = CelerySpans(spans.tracer, ())
    first, retry = _Task(_Request(0)), _Task(_Request(1))
    celery_spans.job_started("job-1", first)
    started, finish = threading.Event(), threading.Event()

    def second_execution() -> None:
        celery_spans.job_started("job-1", retry)
        started.set()
        finish.wait(5)
        celery_spans.job_finished("job-1", retry, "SUCCESS")

    thread = threading.Thread(target=second_execution)
    thread.start()
    started.wait(5)
    celery_spans.job_finished("job-1", first, "RETRY")
    finish.set()
    thread.join(5)
    runs = sorted(spans.finished("run/tasks.pokemon.fetch_pokemon"), key=lambda s: s.start_time)
    assert [s.attributes["apiworker.job.outcome"] for s in runs] == ["RETRY", "SUCCESS"]
    assert [s.attributes["celery.retries"] for s in runs] == [0, 1]
    assert {s.parent.span_id for s in runs} == {0x00F067AA0BA902B7}
    assert {s.context.trace_id for s in runs} == {0x4BF92F3577B34DA6A3CE929D0E0E4736}


def test_a_revalidation_is_a_redis_span_and_a_batch_counts_its_revalidations(
    spans: RecordedSpans, store: ResultStore
) -> None:
    """A 304 brought forward: its own span; in a batch, the revalidated count."""
    store.write(mew(now() - 10), "task-1")
    with spans.job():
        assert store.revalidate(Unchanged("pokemon", "mew", now(), '"e2"'), "task-2")["id"] == 151
        outcomes = store.apply_many(
            [Unchanged("pokemon", "mew", now() + 1, '"e3"'), mew(now() + 2)], "task-3"
        )
    assert outcomes == ["revalidated", "written"]
    (single,) = spans.finished("apiworker.store.revalidate")
    assert single.attributes["apiworker.result.key"] == "pokemon:mew"
    batch = spans.finished("apiworker.store.write")[-1]
    assert batch.attributes["apiworker.results.revalidated"] == 1
    assert batch.attributes["apiworker.results.written"] == 1
