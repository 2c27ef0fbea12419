"""The worker's log reads as outcomes: a failure's line names its error, an expected
failure is one line without a traceback, an unknown task one line naming its record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import worker_environment
from tests.support.celery_worker import wait_for

FETCH = "tasks.pokemon.fetch_pokemon"
TIMEOUT = 60


def job_lines(worker: WorkerProcess, job_id: str) -> list[str]:
    return [line for line in worker.log().splitlines() if job_id in line]


def assert_one_failure_line(worker: WorkerProcess, job_id: str, error: str) -> str:
    """Exactly one line mentions the job: its FAILURE outcome naming `error`; no traceback."""
    [line] = wait_for(
        lambda: [ln for ln in job_lines(worker, job_id) if "job FAILURE" in ln],
        timeout=5,
        what="the failure line",
    )
    assert f" error={error}" in line, line
    assert job_lines(worker, job_id) == [line], worker.log()[-3000:]
    assert "Traceback" not in worker.log(), worker.log()[-3000:]
    return line


@pytest.mark.parametrize(
    ("arg", "error"),
    [("missingno", "NotFound: "), ("pika chu", "InvalidInput: ")],
)
def test_an_expected_failure_is_one_line_with_its_error(
    producer: Celery, results: redis.Redis, celery_worker: WorkerProcess, arg: str, error: str
) -> None:
    """NotFound and InvalidInput: the outcome line names type and message, nothing else."""
    job = producer.send_task(FETCH, args=[arg])
    job.get(timeout=TIMEOUT, propagate=False)
    assert job.state == "FAILURE"
    assert_one_failure_line(celery_worker, job.id, error)


def test_retries_exhausted_end_without_a_traceback(
    producer: Celery, results: redis.Redis, sandbox: Any, celery_worker: WorkerProcess
) -> None:
    """A job out of retries: its retries and one failure line, no traceback."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    job = producer.send_task(FETCH, args=["charizard"])
    job.get(timeout=TIMEOUT, propagate=False)
    assert job.state == "FAILURE"
    [line] = wait_for(
        lambda: [ln for ln in job_lines(celery_worker, job.id) if "job FAILURE" in ln],
        timeout=5,
        what="the failure line",
    )
    assert " error=ServerError: " in line
    assert "attempts=4" in line
    assert all(
        "job RETRY" in ln or "job retry" in ln or ln == line
        for ln in job_lines(celery_worker, job.id)
    ), job_lines(celery_worker, job.id)
    assert "Traceback" not in celery_worker.log()


def test_an_unknown_task_is_one_line_naming_its_failure_record(
    producer: Celery, results: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """No Celery dump ("ignored and discarded"): one line with the failure record's id."""
    job = producer.send_task("tasks.pokemon.no_such_task_either", args=["x"])
    [line] = wait_for(lambda: job_lines(celery_worker, job.id), timeout=10, what="the line")
    [(entry_id, record)] = results.xrange("events:failures")
    assert record["task_id"] == job.id
    assert f"failure record {entry_id}" in line
    assert "NotRegistered" in line
    assert "discarded" not in celery_worker.log()


@pytest.fixture(scope="module")
def worker_without_cms(
    own_redis: str, sandbox_server: Any
) -> Iterator[tuple[Celery, WorkerProcess]]:
    """A worker of its own (own Redis and broker) with no CMS configured."""
    env = worker_environment(own_redis, sandbox_server, CMS_BASE_URL="")
    app = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env).start(app)
    yield app, worker
    worker.stop()
    app.close()


def test_not_configured_is_one_line(worker_without_cms: tuple[Celery, WorkerProcess]) -> None:
    """A job of an upstream that is not configured: one line, no 39-line traceback."""
    app, worker = worker_without_cms
    job = app.send_task("tasks.cms.sync_article", args=["hello-world"])
    job.get(timeout=TIMEOUT, propagate=False)
    assert job.state == "FAILURE"
    assert_one_failure_line(worker, job.id, "NotConfigured: ")
