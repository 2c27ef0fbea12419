"""Operators see each job as one log line and as Prometheus metrics."""

from __future__ import annotations

from typing import Any

import redis
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from ops.processes.worker import WorkerProcess
from tests.support.celery_worker import wait_for

FETCH = "tasks.pokemon.fetch_pokemon"


def test_each_job_outcome_is_exactly_one_line_with_task_id_queue_attempts_and_key(
    producer: Celery, results: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """Task, id, queue, duration, attempts and result key on one line, and only one."""
    job = producer.send_task(FETCH, args=["ditto"], queue="pokeapi")
    job.get(timeout=30)

    def outcome_lines() -> list[str]:
        return [ln for ln in celery_worker.log().splitlines() if job.id in ln and "job " in ln]

    [line] = wait_for(outcome_lines, timeout=5, what="the outcome line")
    fields = dict(part.split("=", 1) for part in line.split("job SUCCESS ", 1)[1].split())
    assert set(fields) == {"task", "id", "queue", "duration_ms", "attempts", "key", "revalidation"}
    assert fields["task"] == FETCH
    assert fields["id"] == job.id
    assert fields["queue"] == "pokeapi"  # the queue it was delivered from
    assert fields["attempts"] == "1"
    assert fields["key"] == "pokemon:ditto"
    assert float(fields["duration_ms"]) > 0
    assert fields["revalidation"] == "-"  # nothing was stored before: a plain fetch
    # Celery's own "received" and "succeeded" lines are replaced by this one.
    assert [ln for ln in celery_worker.log().splitlines() if job.id in ln] == [line]


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's /metrics, by name and sorted labels."""
    text = requests.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_one_job_with_one_retried_503_adds_exactly_its_requests_retry_and_job_to_the_metrics(
    producer: Celery, results: redis.Redis, worker_env: dict[str, str], sandbox: Any
) -> None:
    """Read /metrics before and after one job: a 503, a retry, a 200 and a SUCCESS."""
    url = f"http://127.0.0.1:{worker_env['METRICS_PORT']}/metrics"
    before = samples(url)
    sandbox.inject("pokemon", "status", status=503, times=1)
    producer.send_task(FETCH, args=["mew"]).get(timeout=30)
    assert sandbox.calls("pokemon") == 2

    def request(status: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        labels = (("method", "GET"), ("service", "pokeapi"), ("status", status))
        return ("apiworker_upstream_requests_total", labels)

    job = ("apiworker_jobs_total", (("state", "SUCCESS"), ("task", FETCH)))
    retries = ("apiworker_upstream_retries_total", (("service", "pokeapi"),))
    latency = ("apiworker_upstream_request_seconds_count", (("service", "pokeapi"),))
    # The job's outcome is counted as it finishes, just after its result is returned.
    after = wait_for(
        lambda: (now := samples(url)).get(job[0:2], 0) > before.get(job, 0) and now,
        timeout=5,
        what="the job counted",
    )
    assert isinstance(after, dict)
    increase = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert increase[request("503")] == 1
    assert increase[request("200")] == 1
    assert increase[retries] == 1
    assert increase[latency] == 2
    assert increase[job] == 1
    # And nothing else of ours counted: no other status, no failure, no other job.
    ours = {
        key for key in increase if key[0].startswith("apiworker_") and key[0].endswith("_total")
    }
    assert {key for key in ours if increase[key]} == {
        request("503"),
        request("200"),
        retries,
        job,
    }
