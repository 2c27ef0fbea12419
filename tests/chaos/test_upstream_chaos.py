"""Many jobs against an upstream that fails at random: none lost, none stuck, calls bounded."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.chaos.conftest import FETCH, pokemon_names, scaled
from tests.support.celery_worker import wait_for

ATTEMPTS, MAX_RETRIES = 3, 2
WORST_CASE_CALLS = ATTEMPTS * (MAX_RETRIES + 1)
# (fault kind, share of requests, parameters): about one request in three misbehaves.
FAULTS = (
    ("status", 0.12, {"status": 503}),
    ("hang", 0.04, {"seconds": 2.0}),
    ("reset", 0.08, {}),
    ("latency", 0.05, {"seconds": 0.3}),
    ("malformed_json", 0.03, {}),
)
PERMANENT = {"InvalidResponse"}
TRANSIENT = {"ServerError", "UpstreamTimeout", "UpstreamConnectionError"}
# With the breaker on (its default), a job can also end refused after its deferrals.
GUARDS = {"CircuitOpen"}


def test_random_upstream_faults_leave_every_job_stored_or_recorded_within_the_call_bound(
    deploy, sandbox: Any
) -> None:
    """503s, hangs, resets, slow and malformed bodies: each job a result or a record."""
    deployment = deploy(
        # A hang ends at 0.5 s (not 10): the 4% hangs would otherwise dominate the run.
        HTTP_CONNECT_TIMEOUT="1",
        HTTP_READ_TIMEOUT="0.5",
        # A smaller budget keeps the bound below small enough to be tight at suite scale.
        HTTP_RETRY_ATTEMPTS=str(ATTEMPTS),
        TASK_MAX_RETRIES=str(MAX_RETRIES),
        # A circuit opened by a streak of faults closes in 1 s, not 30: jobs finish in time.
        CIRCUIT_COOLDOWN_SECONDS="1",
        # Every job calls the upstream, even for a name stored a moment ago.
        FRESHNESS_MAX_AGE="0",
    )
    deployment.start_worker(concurrency=16)
    deployment.start_worker(concurrency=16)
    for kind, share, params in FAULTS:
        sandbox.inject("pokemon", kind, probability=share, **params)

    names = pokemon_names(scaled(300))
    jobs = [deployment.producer.send_task(FETCH, args=[name]) for name in names]
    pending = {job.id: job for job in jobs}

    def all_finished() -> bool:
        for job_id in [job_id for job_id, job in pending.items() if job.ready()]:
            del pending[job_id]
        return not pending

    # A liveness bound, not a speed: generous, as the machine may be shared.
    wait_for(all_finished, timeout=120 + len(names) / 5, interval=0.2, what="every job")
    wait_for(deployment.drained, timeout=10, what="empty queues, nothing unacked")

    records = {fields["task_id"]: fields for fields in deployment.failures()}
    stored = set(deployment.results.keys("pokemon:*"))
    states = Counter(job.state for job in jobs)
    assert set(states) <= {"SUCCESS", "FAILURE"}
    for job, name in zip(jobs, names, strict=True):
        if job.state == "SUCCESS":
            assert f"pokemon:{name}" in stored
        else:
            assert records[job.id]["error"] in PERMANENT | TRANSIENT | GUARDS
    assert len(records) == states["FAILURE"]

    # Counted by the sandbox per path it received: one path per name, faults included.
    calls = calls_per_pokemon(sandbox)
    jobs_per_name = Counter(names)
    assert set(calls) == set(jobs_per_name)  # every job called (freshness is off)
    assert sum(calls.values()) == sandbox.calls("pokemon")
    assert sum(calls.values()) >= len(names)
    worst = max(calls[name] / count for name, count in jobs_per_name.items())
    assert all(calls[name] <= WORST_CASE_CALLS * count for name, count in jobs_per_name.items())
    errors = Counter(record["error"] for record in records.values())
    logs = "".join(worker.log() for worker in deployment.workers)
    print(
        f"upstream chaos: sent={len(jobs)} completed={states['SUCCESS']} "
        f"recorded={states['FAILURE']} lost=0 calls={sum(calls.values())} "
        f"max_calls_per_job={worst:g} (bound {WORST_CASE_CALLS}) errors={dict(errors)} "
        f"circuit_opened={logs.count('circuit opened')} deferred={logs.count('job deferred')}"
    )


def calls_per_pokemon(sandbox: Any) -> Counter[str]:
    """The sandbox's own count of requests per Pokémon name (the last path segment)."""
    calls: Counter[str] = Counter()
    for path, count in sandbox.calls_by_path("pokemon").items():
        calls[path.rsplit("/", 1)[1]] += count
    return calls
