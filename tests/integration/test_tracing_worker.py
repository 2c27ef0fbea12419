"""A real worker with OTLP tracing on: a producer's traceparent becomes the parent of the job,
its fan-out and its upstream calls; logs carry the trace; no token leaves in a span."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner

from apis.config import ApiSettings
from ops.cli import cli
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for
from tests.support.otlp_collector import ExportedSpan, OtlpCollector

TOKEN = "trace-test-token-41c7e2"
TIMEOUT = 30
RESULTS_DB, BROKER_DB, BACKEND_DB = 11, 12, 13
RUN_FETCH = "run/tasks.pokemon.fetch_pokemon"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as running:
        yield running


@pytest.fixture(scope="module")
def traced(
    broker_kind: str,
    redis_server_url: str,
    sandbox_server: Any,
    collector: OtlpCollector,
    request: pytest.FixtureRequest,
) -> Iterator[Any]:
    """A worker exporting OTLP/HTTP to the collector, on a broker and Redis dbs of its own."""
    vhost = None
    if broker_kind == "amqp":
        vhost = request.getfixturevalue("rabbit_server").create_vhost()
    env = worker_environment(
        redis_server_url,
        sandbox_server,
        REDIS_URL=with_db(redis_server_url, RESULTS_DB),
        CELERY_BROKER_URL=vhost or with_db(redis_server_url, BROKER_DB),
        CELERY_RESULT_BACKEND=with_db(redis_server_url, BACKEND_DB),
        SEMAPHORE_API_TOKEN=TOKEN,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME="apiworker-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    for db in (RESULTS_DB, BROKER_DB, BACKEND_DB):
        client = redis.Redis.from_url(with_db(redis_server_url, db))
        client.flushdb()
        client.close()
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env).start(producer)
    try:
        yield producer, worker, env
    finally:
        worker.stop()
        producer.close()
        if vhost is not None:
            request.getfixturevalue("rabbit_server").delete_vhost(vhost)


@pytest.fixture
def semaphore_token(sandbox: Any) -> Iterator[None]:
    previous = sandbox.semaphore_token
    sandbox.semaphore_token = TOKEN
    yield
    sandbox.semaphore_token = previous


def new_parent() -> tuple[str, str, str]:
    """A producer's span context: trace id, span id, and the traceparent header."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def trace_of(collector: OtlpCollector, trace_id: str) -> list[ExportedSpan]:
    return [span for span in collector.spans() if span.trace_id == trace_id]


def named(spans: list[ExportedSpan], name: str) -> list[ExportedSpan]:
    return [span for span in spans if span.name == name]


def test_a_sent_traceparent_parents_the_job_its_fan_out_and_its_upstream_calls(
    traced: Any, collector: OtlpCollector, sandbox: Any, semaphore_token: None
) -> None:
    """Job span under the producer's; CLIENT spans per attempt under it; fan-out linked on."""
    producer, _, _ = traced
    trace_id, parent_id, traceparent = new_parent()
    sandbox.inject("projects", "status", status=503, times=1)
    job = producer.send_task(
        "tasks.semaphore.sync_all_projects",
        headers={"traceparent": traceparent, "tracestate": "producer=1"},
    )
    assert job.get(timeout=TIMEOUT) == {"projects": 3}
    spans: list[ExportedSpan] = wait_for(
        lambda: (
            (found := trace_of(collector, trace_id))
            and len(named(found, "run/tasks.semaphore.sync_pipelines")) == 3
            and found
        ),
        timeout=TIMEOUT,
        what="the fan-out's spans",
    )  # type: ignore[assignment]
    (root,) = named(spans, "run/tasks.semaphore.sync_all_projects")
    assert root.kind == "CONSUMER"
    assert root.parent_span_id == parent_id
    assert root.attributes["messaging.message.id"] == job.id
    assert root.attributes["messaging.destination.name"] == "celery"  # sent without routing
    assert root.attributes["apiworker.job.outcome"] == "SUCCESS"
    assert root.attributes["celery.retries"] == 0
    assert root.resource["service.name"] == "apiworker-test"
    assert root.resource["deployment.environment.name"] == "test"

    calls = [span for span in spans if span.parent_span_id == root.span_id and span.name == "GET"]
    assert [span.attributes["http.response.status_code"] for span in calls] == [503, 200]
    failed, retried = calls
    assert failed.kind == retried.kind == "CLIENT"
    assert failed.attributes["error.type"] == "503"
    assert "http.request.resend_count" not in failed.attributes
    assert retried.attributes["http.request.resend_count"] == 1
    assert retried.attributes["http.request.method"] == "GET"
    assert retried.attributes["url.full"] == f"{sandbox.semaphore_url}/projects"
    assert retried.attributes["server.address"] == "127.0.0.1"
    assert retried.attributes["server.port"] == urlsplit(sandbox.semaphore_url).port
    assert "error.type" not in retried.attributes

    (write,) = [s for s in spans if s.parent_span_id == root.span_id and s.kind == "CLIENT"
                and s.name == "apiworker.store.write"]  # fmt: skip
    assert write.attributes["apiworker.result.key"] == "semaphore-projects:all"

    publishes = named(spans, "apply_async/tasks.semaphore.sync_pipelines")
    assert len(publishes) == 3
    assert {span.parent_span_id for span in publishes} == {root.span_id}
    assert {span.kind for span in publishes} == {"PRODUCER"}
    children = named(spans, "run/tasks.semaphore.sync_pipelines")
    assert {span.parent_span_id for span in children} == {span.span_id for span in publishes}
    for child in children:
        assert child.attributes["messaging.destination.name"] == "semaphore"
        child_calls = [s for s in spans if s.parent_span_id == child.span_id and s.name == "GET"]
        assert child_calls
        assert all(s.attributes["http.response.status_code"] == 200 for s in child_calls)

    assert TOKEN.encode() not in collector.raw()
    for span in spans:
        assert all(TOKEN not in str(value) for value in span.attributes.values())


def job_span(collector: OtlpCollector, trace_id: str) -> Any:
    """The one fetch_pokemon job span of `trace_id`, once the collector has it."""
    (span,) = wait_for(
        lambda: named(trace_of(collector, trace_id), "run/tasks.pokemon.fetch_pokemon"),
        timeout=TIMEOUT,
        what="the job span",
    )  # type: ignore[misc]
    return span


def test_log_lines_of_a_traced_job_carry_its_trace_and_span_ids(
    traced: Any, collector: OtlpCollector
) -> None:
    """The job's outcome line names the trace id and the job span's id."""
    producer, worker, _ = traced
    trace_id, _, traceparent = new_parent()
    job = producer.send_task(
        "tasks.pokemon.fetch_pokemon", args=["bulbasaur"], headers={"traceparent": traceparent}
    )
    job.get(timeout=TIMEOUT)
    span = job_span(collector, trace_id)
    line = wait_for(
        lambda: next((ln for ln in worker.log().splitlines() if f"id={job.id}" in ln), None),
        timeout=5,
        what="the outcome line",
    )
    assert "job SUCCESS" in line
    assert f"trace_id={trace_id} span_id={span.span_id}" in line


def test_an_expected_failure_logs_one_line_without_a_traceback_and_marks_the_span(
    traced: Any, collector: OtlpCollector
) -> None:
    """A 404 fails the job: its outcome line, no traceback; the span is an error NotFound."""
    producer, worker, _ = traced
    trace_id, _, traceparent = new_parent()
    job = producer.send_task(
        "tasks.pokemon.fetch_pokemon", args=["missingno"], headers={"traceparent": traceparent}
    )
    with pytest.raises(Exception, match="not found"):
        job.get(timeout=TIMEOUT)
    span = job_span(collector, trace_id)
    assert span.attributes["error.type"] == "NotFound"
    assert span.attributes["apiworker.job.outcome"] == "FAILURE"
    assert span.status_code == 2  # ERROR
    wait_for(lambda: f"job FAILURE task=tasks.pokemon.fetch_pokemon id={job.id}" in worker.log(),
             timeout=5, what="the outcome line")  # fmt: skip
    log = worker.log()
    assert [ln for ln in log.splitlines() if job.id in ln and "job FAILURE" not in ln] == []
    assert "Traceback" not in log


def test_apiworker_enqueue_puts_the_job_in_the_callers_trace(
    traced: Any, collector: OtlpCollector
) -> None:
    """--traceparent (or TRACEPARENT) makes the job span a child of the caller's span."""
    _, _, env = traced
    for name, via_environment in (("pikachu", False), ("eevee", True)):
        trace_id, parent_id, traceparent = new_parent()
        args = ["enqueue", "tasks.pokemon.fetch_pokemon", name, "--wait", "--timeout", "30"]
        extra = {"TRACEPARENT": traceparent, "TRACESTATE": "cli=1"}
        if not via_environment:
            args += ["--traceparent", traceparent, "--tracestate", "cli=1"]
            extra = {}
        outcome = CliRunner().invoke(cli, args, env={**env, **extra})
        assert outcome.exit_code == 0, outcome.output
        (span,) = wait_for(
            lambda trace_id=trace_id: named(
                trace_of(collector, trace_id), "run/tasks.pokemon.fetch_pokemon"
            ),
            timeout=TIMEOUT,
            what="the job span",
        )  # type: ignore[misc]
        assert span.parent_span_id == parent_id


def test_a_prefork_worker_traces_in_its_children(
    redis_server_url: str, sandbox_server: Any, collector: OtlpCollector
) -> None:
    """Under prefork each child sets tracing up itself: job and upstream spans arrive."""
    env = worker_environment(
        redis_server_url,
        sandbox_server,
        REDIS_URL=with_db(redis_server_url, 14),
        CELERY_BROKER_URL=with_db(redis_server_url, 15),
        CELERY_RESULT_BACKEND=with_db(redis_server_url, 15),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    for db in (14, 15):
        client = redis.Redis.from_url(with_db(redis_server_url, db))
        client.flushdb()
        client.close()
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env, pool="prefork", concurrency=1).start(producer)
    try:
        trace_id, parent_id, traceparent = new_parent()
        job = producer.send_task(
            "tasks.pokemon.fetch_pokemon", args=["ditto"], headers={"traceparent": traceparent}
        )
        job.get(timeout=TIMEOUT)
        spans: list[ExportedSpan] = wait_for(
            lambda: (found := trace_of(collector, trace_id)) and len(found) >= 3 and found,
            timeout=TIMEOUT,
            what="the child's spans",
        )  # type: ignore[assignment]
    finally:
        worker.stop()
        producer.close()
    (run,) = named(spans, "run/tasks.pokemon.fetch_pokemon")
    assert run.parent_span_id == parent_id
    assert [s.attributes["http.response.status_code"] for s in named(spans, "GET")] == [200]
    assert named(spans, "apiworker.store.write")


def test_a_celery_retry_and_a_catalog_batch_stay_in_the_senders_trace(
    traced: Any, collector: OtlpCollector, sandbox: Any, redis_server_url: str
) -> None:
    """A retried job and a catalog's batch are children of PRODUCER spans of their sender;
    a batch's concurrent fetches are children of the batch's span."""
    producer, _, env = traced
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.flushdb()  # no fresh results: the batch fetches every name
    client.close()
    retried_trace, _, traceparent = new_parent()
    attempts = ApiSettings.model_fields["http_retry_attempts"].default
    sandbox.inject("pokemon", "status", status=503, times=attempts)  # one execution's worth
    job = producer.send_task(
        "tasks.pokemon.fetch_pokemon", args=["charmander"], headers={"traceparent": traceparent}
    )
    job.get(timeout=TIMEOUT)
    runs: list[ExportedSpan] = wait_for(
        lambda: len(found := named(trace_of(collector, retried_trace), RUN_FETCH)) == 2 and found,
        timeout=TIMEOUT,
        what="both executions",
    )  # type: ignore[assignment]
    spans = trace_of(collector, retried_trace)
    first, second = sorted(runs, key=lambda span: span.attributes["celery.retries"])
    assert first.attributes["apiworker.job.outcome"] == "RETRY"
    assert second.attributes["apiworker.job.outcome"] == "SUCCESS"
    (resend,) = [span for span in spans if span.span_id == second.parent_span_id]
    assert resend.kind == "PRODUCER"
    assert resend.parent_span_id == first.span_id

    catalog_trace, _, traceparent = new_parent()
    producer.send_task("tasks.pokemon.refresh_catalog", headers={"traceparent": traceparent})
    batch_name = "run/tasks.pokemon.fetch_pokemon_batch"
    (batch,) = wait_for(
        lambda: named(trace_of(collector, catalog_trace), batch_name),
        timeout=TIMEOUT,
        what="the batch span",
    )  # type: ignore[misc]
    spans = wait_for(
        lambda: (
            (found := trace_of(collector, catalog_trace))
            and len([s for s in found if s.name == "GET" and s.parent_span_id == batch.span_id])
            == 3
            and found
        ),
        timeout=TIMEOUT,
        what="the batch's three fetches",
    )
    (refresh,) = named(spans, "run/tasks.pokemon.refresh_catalog")  # type: ignore[arg-type]
    (publish,) = [s for s in spans if s.span_id == batch.parent_span_id]  # type: ignore[union-attr]
    assert publish.kind == "PRODUCER"
    assert publish.parent_span_id == refresh.span_id
