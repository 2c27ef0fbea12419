"""Operators see each job as one log line and as Prometheus metrics."""

from __future__ import annotations

from typing import Any

import redis
import requests
from celery import Celery

from tests.support.celery_worker import WorkerProcess, wait_for


def test_each_job_outcome_is_one_log_line(
    producer: Celery, results: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """Task, id, queue, duration, attempts and result key on one line."""
    job = producer.send_task("tasks.pokemon.fetch_pokemon", args=["ditto"])
    job.get(timeout=30)
    line = wait_for(
        lambda: next(
            (ln for ln in celery_worker.log().splitlines() if job.id in ln and "job SUCCESS" in ln),
            None,
        ),
        timeout=5,
        what="the outcome line",
    )
    assert "task=tasks.pokemon.fetch_pokemon" in line
    assert "key=pokemon:ditto" in line
    assert "attempts=1" in line
    assert "duration_ms=" in line


def test_metrics_count_upstream_requests_and_jobs(
    producer: Celery, results: redis.Redis, worker_env: dict[str, str], sandbox: Any
) -> None:
    """The worker's /metrics shows upstream requests by status and finished jobs."""
    sandbox.inject("pokemon", "status", status=503, times=1)
    producer.send_task("tasks.pokemon.fetch_pokemon", args=["mew"]).get(timeout=30)
    body = requests.get(f"http://127.0.0.1:{worker_env['METRICS_PORT']}/metrics", timeout=5).text
    assert 'apiworker_upstream_requests_total{method="GET",service="pokeapi",status="200"}' in body
    assert 'apiworker_upstream_requests_total{method="GET",service="pokeapi",status="503"}' in body
    assert "apiworker_upstream_retries_total" in body
    assert 'apiworker_jobs_total{state="SUCCESS",task="tasks.pokemon.fetch_pokemon"}' in body
    assert "apiworker_upstream_request_seconds_bucket" in body
