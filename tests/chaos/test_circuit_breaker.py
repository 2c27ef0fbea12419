"""An upstream outage with a real worker: the circuit opens, jobs wait, then complete."""

from __future__ import annotations

import time
from typing import Any

from tests.chaos.conftest import FETCH, pokemon_names, scaled
from tests.support.celery_worker import wait_for

THRESHOLD, COOLDOWN, ATTEMPTS, MAX_RETRIES, CONCURRENCY = 3, 1.0, 2, 1, 4


def test_an_outage_stops_upstream_calls_and_jobs_complete_after_it(deploy, sandbox: Any) -> None:
    """503 forever: calls stop after the threshold, jobs wait it out and finish after it."""
    deployment = deploy(
        CIRCUIT_FAILURE_THRESHOLD=str(THRESHOLD),
        CIRCUIT_COOLDOWN_SECONDS=str(COOLDOWN),
        HTTP_RETRY_ATTEMPTS=str(ATTEMPTS),
        TASK_MAX_RETRIES=str(MAX_RETRIES),
        TASK_MAX_DEFERRALS="100",
    )
    worker = deployment.start_worker(concurrency=CONCURRENCY)
    sandbox.inject("pokemon", "status", status=503, times=None)
    names = pokemon_names(scaled(20))
    jobs = [deployment.producer.send_task(FETCH, args=[name]) for name in names]

    wait_for(lambda: "circuit opened" in worker.log(), timeout=20, what="the circuit to open")
    opened_at, calls_at_open = time.monotonic(), sandbox.calls("pokemon")
    # Whole calls count: the threshold's calls plus those in flight when it tripped.
    assert calls_at_open <= (THRESHOLD + CONCURRENCY) * ATTEMPTS

    # Let the outage outlast the retry budget many times over: every job deferred twice.
    wait_for(
        lambda: worker.log().count("job deferred") >= 2 * len(names),
        timeout=30,
        what="two deferrals per job",
    )
    elapsed = time.monotonic() - opened_at
    during = sandbox.calls("pokemon") - calls_at_open
    # While open, only the half-open probes reach the upstream: one call per cool-down.
    assert during <= ATTEMPTS * (elapsed / COOLDOWN + 2) + CONCURRENCY * ATTEMPTS
    without_breaker = len(names) * ATTEMPTS * (MAX_RETRIES + 1)
    assert sandbox.calls("pokemon") < without_breaker / 2
    # Deferrals cost no retries; only a job that probed and failed spends its budget, so
    # failure records are bounded by the probes, not by the jobs.
    probes = worker.log().count("sending one probe call")
    assert len(deployment.failures()) <= probes

    outage_calls = sandbox.calls("pokemon")
    sandbox.clear_faults()
    # Every job completes, or fails with a record: a probe still in flight when the outage
    # ends may yet meet its last 503 and spend its last retry.
    failed: set[str] = set()
    for job, name in zip(jobs, names, strict=True):
        outcome = job.get(timeout=30, propagate=False)
        if job.failed():
            failed.add(job.id)
            wait_for(
                lambda job_id=job.id: job_id in {r["task_id"] for r in deployment.failures()},
                timeout=10,
                what=f"the failure record of {name}",
            )
        else:
            assert outcome["name"] == name
    wait_for(lambda: "circuit closed" in worker.log(), timeout=5, what="the circuit to close")
    assert deployment.results.keys("circuit:*") == []
    assert {record["error"] for record in deployment.failures()} <= {"ServerError"}
    probes = worker.log().count("sending one probe call")
    assert len(deployment.failures()) <= probes
    print(
        f"circuit breaker: sent={len(names)} completed={len(names) - len(failed)} "
        f"recorded={len(failed)} lost=0 calls during the outage={outage_calls} "
        f"(without the breaker {without_breaker}) probes={probes} "
        f"calls in all={sandbox.calls('pokemon')}"
    )


def test_deferrals_are_bounded_and_end_in_a_failure_record(
    deploy, sandbox: Any, broker_kind: str
) -> None:
    """TASK_MAX_DEFERRALS=2: the third refusal fails the job with a CircuitOpen record."""
    deployment = deploy(
        CIRCUIT_FAILURE_THRESHOLD="1",
        # Still open when the retry comes back: RabbitMQ's delayed delivery rounds the
        # retry's countdown up to a whole second.
        CIRCUIT_COOLDOWN_SECONDS="3" if broker_kind == "amqp" else "0.5",
        HTTP_RETRY_ATTEMPTS="1",
        TASK_MAX_RETRIES="10",
        TASK_MAX_DEFERRALS="2",
    )
    worker = deployment.start_worker(concurrency=2)
    sandbox.inject("pokemon", "status", status=503, times=None)
    job = deployment.producer.send_task(FETCH, args=["mew"])
    [record] = wait_for(deployment.failures, timeout=30, what="the failure record")
    assert record["error"] == "CircuitOpen"
    assert record["task_id"] == job.id
    deferrals = [line for line in worker.log().splitlines() if "job deferred" in line]
    assert [line for line in deferrals if job.id in line] == deferrals
    assert [line.split("deferral=")[1].split()[0] for line in deferrals] == ["1", "2"]
    assert job.state == "FAILURE"
    print(
        f"circuit deferral bound: sent=1 recorded=1 error={record['error']} "
        f"deferrals={len(deferrals)} calls={sandbox.calls('pokemon')}"
    )
